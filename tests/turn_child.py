"""Runs one turn in a child process, for tests/test_turns_kill.py (which SIGKILLs it midway).

Usage: python turn_child.py DATABASE_URL BASE_URL CONVERSATION_ID IDEMPOTENCY_KEY TEXT
"""

from __future__ import annotations

import sys

from convo import Chat, OpenAIClient, Store


def main() -> None:
    url, base_url, conversation_id, key, text = sys.argv[1:6]
    store = Store(url)
    client = OpenAIClient(api_key="sk-test-child", base_url=base_url, max_retries=0, timeout=120)
    Chat(store, client, model="gpt-4o-mini").send(conversation_id, text, idempotency_key=key)


if __name__ == "__main__":
    main()
