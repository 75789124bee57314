"""convo quickstart: one stored conversation, sent as chat messages and as a flattened prompt.

Runs offline: the "server" is convo's fake OpenAI-compatible backend, in process.
Point ``OpenAIClient(base_url=..., api_key=...)`` at a real server to go live.

    python examples/quickstart.py [DATABASE_URL]      (default: sqlite:///quickstart.db)
"""

from __future__ import annotations

import sys

from convo import ContextBuilder, Message, OpenAIClient, Store
from convo.testing import FakeBackend

url = sys.argv[1] if len(sys.argv) > 1 else "sqlite:///quickstart.db"

with Store(url) as store:
    store.migrate()  # creates or upgrades the schema; same as `convo db upgrade`

    # 1. Persist a conversation.
    conv = store.create_conversation(title="Lisbon trip", owner="user-42")
    store.append(conv.id, Message.system("You are a concise travel assistant."))
    store.append(conv.id, Message.user("I have three days in Lisbon. Where do I start?"))

    # 2. Build the context, as a chat message list ...
    chat = ContextBuilder(store, model="gpt-4o-mini").build(conv.id)
    print("chat request:", chat.request(max_completion_tokens=200))
    print(f"  {chat.report.prompt_tokens} prompt tokens of a {chat.report.budget}-token budget\n")

    # ... or as one flattened prompt for /v1/completions (here ChatML, for a local model).
    flat = ContextBuilder(
        store, model="my-local-model", encoding="cl100k_base", mode="completion",
        template="chatml", budget=4000,
    ).build(conv.id)
    print("completion prompt:")
    print(flat.prompt)
    print(f"  stop={flat.stop}, {flat.report.prompt_tokens} prompt tokens (exact, counted on this string)\n")

    # 3. Send it, and store the reply with what the server said about it.
    fake = FakeBackend()
    fake.reply("Start in Alfama: walk up to the castle early, then tram 28 down to Baixa.")
    with OpenAIClient(base_url="http://fake/v1", api_key="sk-demo", transport=fake.transport()) as client:
        reply = client.chat(**chat.request(max_completion_tokens=200))
    stored = store.append(conv.id, reply.to_message(), reply=reply.reply_info())
    print(f"assistant (seq {stored.seq}): {stored.text}")
    print(f"  usage: {reply.usage.prompt_tokens if reply.usage else '?'} prompt tokens reported by the server")

    # 4. Fork the thread to try another direction without copying history.
    fork = store.fork(conv.id, title="Lisbon trip (day trips)")
    store.append(fork.id, Message.user("What about a day trip to Sintra?"))
    print(f"\nfork {fork.id} has {store.count_messages(fork.id)} messages "
          f"({store.count_messages(conv.id)} inherited)")
