"""Replay a set of stored conversations against two models and compare them with the original.

A support bot has answered a few conversations with ``gpt-4o-mini``; they are
tagged ``{"suite": "faq"}``. Before switching models, replay every tagged
conversation's user turns against two candidates, each on its own server:

* ``newer``: ``gpt-4.1-mini`` as a chat message list, on the same server;
* ``local``: a local Llama 3 model behind a completion endpoint, the same
  conversations flattened into a Llama 3 prompt (another client, another server).

Teacher forcing: every candidate answers each turn given the *original*
history, so the replies are compared turn for turn. Nothing in the original
conversations changes: the replies go to branches marked as replays, and
each new run links to the run it replays. The report is kept in the database
(``convo replays``; ``convo replay show ID``) and exports to JSON or CSV.

Runs offline: two of convo's fake OpenAI-compatible backends stand in for the
two servers (the fake echoes ``You said: ...``; the local one is scripted).

    python examples/replay_compare.py [DATABASE_URL]   (default: sqlite:///replay_compare.db)
"""

from __future__ import annotations

import sys

from convo import Arm, Chat, Message, OpenAIClient, Replayer, Store
from convo.testing import FakeBackend

URL = sys.argv[1] if len(sys.argv) > 1 else "sqlite:///replay_compare.db"

CONVERSATIONS = {
    "password reset": ["How do I reset my password?", "The email never arrived."],
    "refunds": ["Can I get a refund after 30 days?", "What about a store credit?"],
    "shipping": ["Do you ship to Portugal?", "How long does it take?"],
}


def main() -> None:
    hosted, local = FakeBackend(), FakeBackend(encoding="cl100k_base")
    with (
        Store(URL) as store,
        OpenAIClient(base_url="http://hosted/v1", api_key="sk-demo", transport=hosted.transport()) as client,
        OpenAIClient(base_url="http://local/v1", transport=local.transport()) as local_client,
    ):
        store.migrate()

        # 1. What production stored: conversations answered by gpt-4o-mini, tagged for the suite.
        bot = Chat(store, client, model="gpt-4o-mini")
        suite = []
        for title, questions in CONVERSATIONS.items():
            conv = store.create_conversation(title=title, owner="support", metadata={"suite": "faq"})
            store.append(conv.id, Message.system("You are the support bot of a web shop. Be brief."))
            for question in questions:
                bot.send(conv.id, question, owner="support")
            suite.append(conv.id)
        other = store.create_conversation(title="not in the suite", owner="support")
        bot.send(other.id, "Hello?", owner="support")

        # 2. Replay the suite against two candidates.
        for n in range(sum(len(q) for q in CONVERSATIONS.values())):
            local.reply(["Yes.", "Please check your spam folder.", "Sure, see our policy page."][n % 3])
        arms = [
            Arm("gpt-4.1-mini", name="newer"),
            Arm("llama-3-8b-instruct", mode="completion", template="llama3", encoding="cl100k_base",
                budget=6_000, params={"max_tokens": 200}, name="local", client=local_client),
        ]
        report = Replayer(store, client).replay(
            where={"metadata": {"suite": "faq"}}, owner="support", arms=arms, mode="teacher-forcing",
        )

    # 3. Compare.
    titles = {cid: title for cid, title in zip(suite, CONVERSATIONS)}
    assert {item.conversation_id for item in report.items} == set(suite)  # the filter held
    print(f"replay {report.replay.id}: {len(suite)} conversations, "
          f"{len(report.items)} replies ({report.replay.spec['mode']})\n")
    print(f"{'arm':8} {'ok':>3} {'similarity':>10} {'prompt tok':>10} {'reply tok':>9}")
    for arm in report.arms():
        print(f"{arm.arm:8} {arm.ok:3} {arm.mean_similarity or 0:10.2f} "
              f"{arm.prompt_tokens:10} {arm.completion_tokens:9}")
    print()
    for item in sorted(report.items, key=lambda i: (titles[i.conversation_id], i.turn, i.arm)):
        print(f"{titles[item.conversation_id]:15} turn {item.turn}  {item.arm:6} "
              f"sim {item.similarity or 0:4.2f}  original: {item.original_text!r:45.45} "
              f"new: {item.text!r:.40}")


if __name__ == "__main__":
    main()
