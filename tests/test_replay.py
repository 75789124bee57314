"""Replays: stored threads re-run against arms, in both modes, resumable, judged, exported.

Every test runs four times: SQLite / PostgreSQL x sync / async (conftest ``store``).
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from convo import (
    Arm,
    AsyncChat,
    AsyncOpenAIClient,
    AsyncReplayer,
    Chat,
    ConfigurationError,
    ConversationNotFound,
    FunctionCall,
    Message,
    OpenAIClient,
    Replay,
    Replayer,
    ReplayItem,
    ReplayNotFound,
    ReplayReport,
    Run,
    StoredMessage,
    StoreInputError,
    ToolCall,
    tool,
)
from convo._context.report import ContextReport, SummaryUse
from convo._records import ReplyInfo
from convo._replay.plan import (
    JudgeTurn,
    SourceTurn,
    _item,
    _turn_tools,
    arms_from_spec,
    check_arms,
    judge_messages,
    parse_verdict,
    replay_spec,
    split_turns,
)
from convo._replay.reproduce import text_similarity
from convo._turns.plan import TurnResult
from convo.testing import FakeBackend

NOW = datetime(2026, 1, 1, tzinfo=UTC)

CALLS: list[str] = []


@tool
def get_weather(city: str) -> dict[str, Any]:
    """The weather in a city."""
    CALLS.append(city)
    return {"city": city, "temp": 21}


class Harness:
    def __init__(self, store: Any, fake: FakeBackend, *, retries: int = 0) -> None:
        self.store = store
        self.fake = fake
        make = AsyncOpenAIClient if store.is_async else OpenAIClient
        self.client = make(base_url="http://fake/v1", api_key="sk-test", max_retries=retries,
                           transport=fake.transport())
        chat_cls = AsyncChat if store.is_async else Chat
        self.chat = chat_cls(store.raw, self.client, model="gpt-4o-mini", tools=[get_weather])
        self.replayer = (AsyncReplayer if store.is_async else Replayer)(store.raw, self.client)

    async def call(self, obj: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        value = getattr(obj, name)(*args, **kwargs)
        return await value if self.store.is_async else value

    async def send(self, *args: Any, **kwargs: Any) -> Any:
        return await self.call(self.chat, "send", *args, **kwargs)

    async def replay(self, *args: Any, **kwargs: Any) -> Any:
        return await self.call(self.replayer, "replay", *args, **kwargs)

    async def thread(self, owner: str | None = None) -> str:
        """System prompt, a plain turn, a turn with a tool round, a plain turn."""
        conv = await self.store.create_conversation(owner=owner)
        await self.store.append(conv.id, Message.system("Be brief."), owner=owner)
        self.fake.reply("Hello! How can I help?")
        await self.send(conv.id, "Hi", owner=owner)
        self.fake.reply_tool_calls([("get_weather", {"city": "Paris"})])
        self.fake.reply("It is 21C in Paris.")
        await self.send(conv.id, "Weather in Paris?", owner=owner)
        self.fake.reply("You are welcome.")
        await self.send(conv.id, "Thanks", owner=owner)
        return conv.id


ARMS = [Arm("gpt-4o-mini", name="chat-arm"),
        Arm("gpt-3.5-turbo-instruct", mode="completion", template="chatml", name="flat-arm",
            budget=3000)]


def _bodies(fake: FakeBackend, start: int) -> list[dict[str, Any]]:
    return [r.json for r in fake.requests[start:]]


async def test_continue_mode_two_arms_with_a_tool_round(store):
    h = Harness(store, FakeBackend())
    cid = await h.thread()
    original_runs = {r.reply_message_id: r for r in (await store.list_runs(cid)).items}
    CALLS.clear()
    sent_before = len(h.fake.requests)
    # chat arm turn 1 calls the tool again (answered from the record), then answers
    h.fake.reply("Hi there.")                                   # chat-arm turn 0
    h.fake.reply("Hey.")                                        # flat-arm turn 0
    h.fake.reply_tool_calls([("get_weather", {"city": "Paris"})])  # chat-arm turn 1
    h.fake.reply("Sunny, 21C.")                                 # chat-arm turn 1, round 2
    report = await h.replay(cid, arms=ARMS, mode="continue")

    assert CALLS == []  # no tool executed twice
    assert report.replay.status == "done" and report.replay.mode == "continue"
    assert [(i.turn, i.arm, i.status) for i in report.items] == [
        (t, a, "ok") for t in range(3) for a in ("chat-arm", "flat-arm")
    ]
    by = {(i.turn, i.arm): i for i in report.items}
    assert by[(0, "chat-arm")].text == "Hi there." and by[(1, "chat-arm")].text == "Sunny, 21C."
    assert by[(0, "chat-arm")].original_text == "Hello! How can I help?"
    assert by[(1, "chat-arm")].original_text == "It is 21C in Paris."
    assert 0 <= by[(1, "chat-arm")].similarity < 1
    # the tool result sent back is the recorded one
    bodies = _bodies(h.fake, sent_before)
    tool_msgs = [m for b in bodies for m in b.get("messages", []) if m["role"] == "tool"]
    assert any(json.loads(m["content"]) == {"city": "Paris", "temp": 21} for m in tool_msgs)
    # the chat arm's requests offer the tools the original turns offered
    original_tools = next(iter(original_runs.values())).body()["tools"]
    assert all(b["tools"] == original_tools for b in bodies if "messages" in b)
    # each arm keeps one branch, with its own replies feeding the next turn
    branches = {i.arm: i.branch_id for i in report.items}
    for arm, branch in branches.items():
        assert all(i.branch_id == branch for i in report.items if i.arm == arm)
        roles = [m.role for m in await store.messages(branch)]
        assert roles[0] == "system" and roles.count("user") == 3
    flat_prompts = [b["prompt"] for b in bodies if "prompt" in b]
    assert "Hey." in flat_prompts[-1] and "Hello! How can I help?" not in flat_prompts[-1]
    # replay branches are marked and hidden from the user's branches
    listed = await store.list_branches(cid)
    assert [b.conversation.id for b in listed] == [cid]
    hidden = await store.list_branches(cid, include_replays=True)
    assert {b.conversation.branch_kind for b in hidden[1:]} == {"replay"}
    assert all(not b.current for b in hidden[1:])
    # a turn's messages on the arm's branch carry the turn's key, its tool round's too
    turn_1 = f"replay:{report.replay.id}:0:1"
    keys = [m.idempotency_key for m in await store.messages(branches["chat-arm"])][3:]
    assert keys[:3] == [turn_1, f"{turn_1}#r0", f"{turn_1}#t0:{keys[2].split(':')[-1]}"]
    assert keys[3] == f"{turn_1}#r1"
    # every new run links to the original turn's run
    for item in report.items:
        run = await store.get_run(item.run_id)
        assert run.replays_id is not None
        assert run.replays_id == item.original_run_id
    first_reply = next(m for m in await store.messages(cid) if m.role == "assistant")
    assert by[(0, "chat-arm")].original_run_id == original_runs[first_reply.id].id
    assert by[(0, "flat-arm")].kept is not None and by[(2, "flat-arm")].prompt_tokens > 0


async def test_teacher_forcing_answers_the_original_history(store):
    h = Harness(store, FakeBackend())
    cid = await h.thread()
    start = len(h.fake.requests)
    report = await h.replay(cid, arms=ARMS, mode="teacher-forcing")
    assert [i.status for i in report.items] == ["ok"] * 6
    assert len({i.branch_id for i in report.items}) == 6  # one branch per turn and arm
    bodies = _bodies(h.fake, start)
    last = bodies[-2]["messages"]  # chat-arm, last turn (flat-arm answers after it)
    flat_last = bodies[-1]["prompt"]
    assert "It is 21C in Paris." in flat_last and flat_last.rstrip().endswith("assistant")
    # the last turn saw the original replies, not the arm's own
    assert [m.get("content") for m in last if m["role"] == "assistant"][-1] == "It is 21C in Paris."
    assert last[-1] == {"role": "user", "content": "Thanks"}
    for item in report.items:
        branch = await store.get_conversation(item.branch_id)
        assert branch.branch_kind == "replay" and branch.fork_seq == item.user_seq
        assert branch.metadata == {"replay_id": report.replay.id, "arm": item.arm,
                                   "turn": item.turn}
    # the thread's current branch is where the user left it
    assert (await store.get_conversation(cid)).current_branch_id in (None, cid)
    assert [b.conversation.id for b in await store.list_branches(cid) if b.current] == [cid]


async def test_resume_skips_what_is_done(store):
    h = Harness(store, FakeBackend())
    cid = await h.thread()
    h.fake.reply("one")                   # chat-arm turn 0
    h.fake.fail(500)                      # chat-arm turn 1 fails: the arm's later turns skip
    report = await h.replay(cid, arms=[ARMS[0]], mode="continue")
    assert [i.status for i in report.items] == ["ok", "failed", "skipped"]
    assert "InternalServerError" in report.items[1].error
    sent = len(h.fake.requests)
    again = await h.replay(replay_id=report.replay.id)
    assert again.replay.id == report.replay.id and again.replay.status == "done"
    assert [i.status for i in again.items] == ["ok"] * 3
    assert len(h.fake.requests) - sent == 2  # only the two unfinished turns were sent
    assert again.items[0].text == "one"
    branch = again.items[0].branch_id
    users = [m.text for m in await store.messages(branch) if m.role == "user"]
    assert users == ["Hi", "Weather in Paris?", "Thanks"]  # the retried turn stored once


async def test_judge_verdicts_are_stored(store):
    h = Harness(store, FakeBackend())
    cid = await h.thread()
    for _ in range(3):  # each turn: the arm's reply, then the judge's verdict
        h.fake.reply("arm reply")
        h.fake.reply_json({"winner": "chat-arm", "scores": {"chat-arm": 8}, "reason": "ok"})
    report = await h.replay(cid, arms=[ARMS[0]], judge="gpt-4o")
    assert all(i.verdict["winner"] == "chat-arm" for i in report.items)
    assert all(i.verdict["model"] == "gpt-4o" for i in report.items)
    judged = [r.json for r in h.fake.requests if r.json.get("model") == "gpt-4o"]
    assert len(judged) == 3 and judged[0]["response_format"] == {"type": "json_object"}
    assert report.arms()[0].wins == 3
    stored = await h.call(h.replayer, "report", report.replay.id)
    assert stored.items == report.items
    sent = len(h.fake.requests)
    again = await h.replay(replay_id=report.replay.id)  # every turn done and judged
    assert again.items == report.items and len(h.fake.requests) == sent


#: judge answers no column can hold as they are: a NUL (PostgreSQL's jsonb refuses it),
#: NaN (json.loads takes it; JSON has no such number), an integer past 64 bits
UNSTORABLE_VERDICTS = {
    "a NUL": ('{"winner": "chat-arm", "reason": "ok\\u0000"}', "NUL character"),
    "NaN": ('{"winner": "chat-arm", "scores": {"chat-arm": NaN}}', "not a JSON number"),
    "a huge integer": ('{"winner": "chat-arm", "scores": {"chat-arm": ' + "9" * 30 + "}}",
                       "beyond 64 bits"),
    "a NUL in text that is not JSON": ("I pick chat-arm\x00", "NUL character"),
}


@pytest.mark.parametrize("bad", UNSTORABLE_VERDICTS)
async def test_a_verdict_the_store_refuses_is_recorded_as_the_judges_error(store, bad):
    """A judge is a model: its answer is untrusted. One the store refuses is kept as the
    verdict's error, and the replay goes on (it stopped the replay with StoreInputError,
    or a database error on PostgreSQL, with the turn's item saved but unjudged)."""
    text, why = UNSTORABLE_VERDICTS[bad]
    h = Harness(store, FakeBackend())
    cid = await h.thread()
    for _ in range(3):
        h.fake.reply("arm reply")
        h.fake.reply(text)
    report = await h.replay(cid, arms=[ARMS[0]], judge="gpt-4o")
    assert report.replay.status == "done" and len(report.items) == 3
    for item in report.items:
        assert item.status == "ok" and item.verdict is not None
        assert item.verdict["model"] == "gpt-4o" and "winner" not in item.verdict
        assert item.verdict["error"].startswith("the judge's answer cannot be stored: ")
        assert why in item.verdict["error"] and "\x00" not in item.verdict["error"]
    stored = await h.call(h.replayer, "report", report.replay.id)
    assert stored.items == report.items


async def test_reports_export_to_json_and_csv(store):
    h = Harness(store, FakeBackend())
    cid = await h.thread()
    report = await h.replay(cid, arms=ARMS)
    doc = json.loads(report.to_json())
    assert doc["replay"]["id"] == report.replay.id and len(doc["items"]) == 6
    assert [a["arm"] for a in doc["arms"]] == ["chat-arm", "flat-arm"]
    rows = list(csv.DictReader(io.StringIO(report.to_csv())))
    assert len(rows) == 6 and {r["arm"] for r in rows} == {"chat-arm", "flat-arm"}
    assert rows[0]["original_text"] == "Hello! How can I help?"
    page = await store.list_replays()
    assert [r.id for r in page.items] == [report.replay.id]


async def test_many_conversations_by_filter_with_progress(store):
    h = Harness(store, FakeBackend())
    mine = [await h.thread(owner="team-a") for _ in range(3)]
    await h.thread(owner="team-b")
    seen: list[Any] = []
    kwargs: dict[str, Any] = {"concurrency": 2} if store.is_async else {}
    report = await h.replay(where={"owner": "team-a"}, arms=[ARMS[0]], owner="team-a",
                            on_progress=seen.append, **kwargs)
    assert {i.conversation_id for i in report.items} == set(mine)
    assert len(report.items) == 9 and all(i.status == "ok" for i in report.items)
    assert sorted(p.done for p in seen) == [1, 2, 3] and {p.total for p in seen} == {3}


async def test_bad_replays_are_refused_and_nothing_is_written(store):
    h = Harness(store, FakeBackend())
    cid = await h.thread(owner="alice")
    before = store.snapshot()
    with pytest.raises(ConfigurationError):
        await h.replay(cid, arms=[])
    with pytest.raises(ConfigurationError):
        await h.replay(cid, arms=["m", "m"])
    with pytest.raises(ConfigurationError):
        await h.replay(cid, arms=["m:sideways"])
    with pytest.raises(ConversationNotFound):
        await h.replay(cid, arms=["gpt-4o-mini"], owner="bob")
    with pytest.raises(ReplayNotFound):
        await h.replay(replay_id="0" * 32)
    assert store.snapshot() == before
    assert (await store.list_replays()).items == []


def test_arm_parsing():
    assert Arm.parse("gpt-4o").label == "gpt-4o"
    arm = Arm.parse("llama-3-8b:completion:llama3")
    assert (arm.model, arm.mode, arm.template, arm.label) == (
        "llama-3-8b", "completion", "llama3", "llama-3-8b:completion:llama3"
    )
    assert Arm.parse("m:completion").template == "transcript"
    with pytest.raises(ConfigurationError):
        Arm("m", template="chatml")


async def test_replay_of_a_long_thread_with_summaries(store):
    """An arm with a small budget drops and summarizes history; the report says how much."""
    from convo import AsyncModelSummarizer, ModelSummarizer

    h = Harness(store, FakeBackend())
    conv = await store.create_conversation()
    await store.append(conv.id, Message.system("Be brief."))
    for n in range(8):
        h.fake.reply(f"Answer {n}: " + "details " * 40)
        await h.send(conv.id, f"Question {n}: " + "context " * 40)
    summarizer_cls = AsyncModelSummarizer if store.is_async else ModelSummarizer
    arm = Arm("gpt-4o-mini", name="tight", budget=700,
              summarizer=summarizer_cls(h.client, model="gpt-4o-mini"))
    report = await h.replay(conv.id, arms=[arm], mode="teacher-forcing")
    assert [i.status for i in report.items] == ["ok"] * 8
    late = report.items[-1]
    assert late.dropped > 0 and late.summarized > 0 and late.summarized <= late.dropped
    assert report.items[0].dropped == 0 and report.items[0].summarized == 0
    run = await store.get_run(late.run_id)
    assert run.summary_id is not None
    assert run.estimated_prompt_tokens <= 700


# --- the pure part: arms, turns, recorded tool results, the judge, the report ------------


def stored(seq: int, role: str, content: str | None = "", **fields: Any) -> StoredMessage:
    return StoredMessage(id=100 + seq, conversation_id="c" * 32, seq=seq, role=role,
                         content=content, created_at=NOW, **fields)


def call(call_id: str, name: str, arguments: str) -> ToolCall:
    return ToolCall(id=call_id, function=FunctionCall(name=name, arguments=arguments))


def test_an_arm_label_names_model_mode_and_template():
    assert Arm("m").label == "m"
    assert Arm("m", mode="completion").label == "m:completion"
    assert Arm("m", mode="completion", template="chatml").label == "m:completion:chatml"
    assert Arm("m", mode="completion", template="chatml", name="mine").label == "mine"
    assert Arm("m", name="x" * 64).label == "x" * 64


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"model": "m", "mode": "flat"}, "arm mode must be 'chat' or 'completion', not 'flat'"),
    ({"model": "m", "template": "chatml"}, "an arm's template only applies to mode='completion'"),
    ({"model": "m", "name": "x" * 65}, "an arm's name must be 1..64 characters"),
    ({"model": ""}, "an arm's name must be 1..64 characters"),
    ({"model": "m" * 65}, "an arm's name must be 1..64 characters"),
])
def test_bad_arms_are_refused(kwargs, message):
    with pytest.raises(ConfigurationError) as info:
        Arm(**kwargs)
    assert str(info.value) == message


def test_arm_parse_takes_model_mode_and_template():
    chat = Arm.parse("gpt-4o:chat", budget=500)
    assert (chat.model, chat.mode, chat.template, chat.budget) == ("gpt-4o", "chat", None, 500)
    odd = Arm.parse("a:completion:b:c")
    assert (odd.model, odd.template) == ("a", "b:c")
    for text, message in [(":chat", "expected MODEL[:mode[:template]]"),
                          ("m:flat", "mode must be chat or completion")]:
        with pytest.raises(ConfigurationError) as info:
            Arm.parse(text)
        assert str(info.value) == f"arm {text!r}: {message}"


def test_an_arm_spec_is_what_resumes_it_and_arms_come_back_from_it():
    arm = Arm("m", mode="completion", template="chatml", params={"temperature": 0},
              budget=900, encoding="cl100k_base", client=object())
    spec = arm.spec()
    assert spec == {"name": "m:completion:chatml", "model": "m", "mode": "completion",
                    "template": "chatml", "params": {"temperature": 0}, "budget": 900,
                    "encoding": "cl100k_base"}
    back = arms_from_spec({"arms": [{**spec, "name": "renamed"}]}, [])
    assert back == [Arm("m", mode="completion", template="chatml", name="renamed",
                        params={"temperature": 0}, budget=900, encoding="cl100k_base")]
    minimal = arms_from_spec({"arms": [{"name": "n", "model": "m", "mode": "chat"}]}, [])
    assert minimal == [Arm("m", name="n")] and minimal[0].params == {}
    # an arm given again by name keeps its client (never stored)
    given = Arm("m", name="n", client="its client")
    assert arms_from_spec({"arms": [{"name": "n", "model": "other", "mode": "chat"}]},
                          [given])[0].client == "its client"
    assert arms_from_spec({}, [given]) == []
    both = arms_from_spec({"arms": [{"name": "n", "model": "m", "mode": "chat"},
                                    {"name": "k", "model": "m2", "mode": "chat"}]}, [given])
    assert [(a.label, a.model) for a in both] == [("n", "m"), ("k", "m2")]
    assert replay_spec(["c1"], [arm], "continue", "judge-model") == {
        "conversations": ["c1"], "arms": [spec], "mode": "continue", "judge": "judge-model"}


def test_check_arms():
    assert [a.label for a in check_arms(["m", Arm("m", name="two")])] == ["m", "two"]
    with pytest.raises(ConfigurationError, match=r"^a replay needs at least one arm$"):
        check_arms([])
    with pytest.raises(ConfigurationError, match=r"arm names must differ: \['m', 'm'\]"):
        check_arms(["m", Arm("m")])


def test_split_turns_groups_each_user_message_with_what_answered_it():
    system, u1, a1 = stored(1, "system", "Be brief."), stored(2, "user", "Hi"), stored(3, "assistant", "Hello")
    u2, a2 = stored(4, "user", "Again"), stored(5, "assistant", "Sure")
    turns = split_turns([system, u1, a1, u2, a2])
    assert [(t.index, t.user.seq, [m.seq for m in t.responses]) for t in turns] == [
        (0, 2, [3]), (1, 4, [5])]
    assert split_turns([system]) == [] and split_turns([]) == []
    last = split_turns([u1])
    assert len(last) == 1 and last[0].responses == () and last[0].reply is None


def test_a_turns_reply_is_its_last_assistant_message():
    calling = stored(2, "assistant", None, tool_calls=[call("c1", "f", "{}")])
    result = stored(3, "tool", "r", tool_call_id="c1")
    final = stored(4, "assistant", "done")
    turn = SourceTurn(0, stored(1, "user", "q"), (calling, result, final))
    assert turn.reply is final
    assert SourceTurn(0, stored(1, "user", "q"), (calling, result)).reply is calling
    assert SourceTurn(0, stored(1, "user", "q"), (result,)).reply is None


def test_recorded_results_match_by_tool_and_arguments_then_by_tool():
    calls = stored(2, "assistant", None, tool_calls=[
        call("a", "weather", '{"city": "Paris", "unit": "C"}'),
        call("b", "weather", '{"city": "Rome"}'),
        call("c", "time", "not json"),
        call("d", "unanswered", "{}"),
    ])
    turn = SourceTurn(0, stored(1, "user", "q"), (
        calls, stored(3, "tool", "Paris: 21", tool_call_id="a"),
        stored(4, "tool", "Rome: 25", tool_call_id="b"), stored(5, "tool", "noon", tool_call_id="c"),
    ))
    used: set[int] = set()
    # same tool, same arguments (whatever their key order and spacing) first
    assert turn.recorded_result(call("x", "weather", '{"city":"Rome"}'), used) == "Rome: 25"
    assert turn.recorded_result(call("y", "weather", '{"unit":"C","city":"Paris"}'), used) == "Paris: 21"
    assert used == {104, 103}
    # each result once; then none left for the tool
    assert turn.recorded_result(call("z", "weather", '{"city":"Rome"}'), used).startswith(
        "error: the replayed conversation has no recorded result for weather")
    fresh: set[int] = set()
    # other arguments: the tool's results in order
    assert turn.recorded_result(call("x", "weather", '{"city":"Oslo"}'), fresh) == "Paris: 21"
    assert turn.recorded_result(call("x", "weather", '{"city":"Oslo"}'), fresh) == "Rome: 25"
    assert turn.recorded_result(call("t", "time", "not json"), set()) == "noon"  # compared as text
    assert turn.recorded_result(call("u", "unanswered", "{}"), set()) == (
        "error: the replayed conversation has no recorded result for unanswered; "
        "replays do not execute tools")


def test_the_judge_prompt_and_its_verdict():
    messages = judge_messages(JudgeTurn("¿Qué tal?", "Bien", {"a": "Muy bien", "b": None}))
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == (  # the format parse_verdict and the report rely on
        "You compare assistant replies to the same user message. Answer with a JSON object: "
        '{"winner": <a candidate name, "original" or "tie">, "scores": {<name>: <1-10>}, '
        '"reason": <one sentence>}.')
    assert messages[1]["content"] == (
        '{"user_message": "¿Qué tal?", "original_reply": "Bien", '
        '"candidates": {"a": "Muy bien", "b": null}}')
    assert parse_verdict('{"winner": "a", "reason": "r"}', "judge") == {
        "model": "judge", "winner": "a", "reason": "r"}
    assert parse_verdict("[1]", "judge") == {
        "model": "judge", "error": "the judge's answer is not a JSON object"}
    long = "x" * 3000
    assert parse_verdict(long, "judge") == {
        "model": "judge", "error": "the judge's answer is not JSON", "raw": "x" * 2000}
    # an answer the store refuses names where, as a verdict: the error is read with the report
    assert parse_verdict('{"winner": "a", "reason": "ok\\u0000"}', "judge") == {
        "model": "judge",
        "error": ("the judge's answer cannot be stored: verdict.reason contains a NUL character, "
                  "which PostgreSQL cannot store (refused on every database), at index 2")}


def test_a_report_sums_each_arm_in_the_replays_order():
    replay = Replay(id="r", mode="continue", status="done", created_at=NOW, updated_at=NOW,
                    spec={"arms": [{"name": "b"}, {"name": "a"}, "junk", {"name": 3}]})

    def item(arm: str, status: str, turn: int, **fields: Any) -> ReplayItem:
        return ReplayItem(replay_id="r", conversation_id="c", turn=turn, arm=arm,
                          status=status, user_seq=turn * 2 + 1, **fields)

    items = [
        item("a", "ok", 0, similarity=0.5, prompt_tokens=10, completion_tokens=2, latency_ms=100.0,
             verdict={"winner": "a"}),
        item("a", "ok", 1, similarity=1.0, prompt_tokens=20, latency_ms=300.0,
             verdict={"winner": "b"}),
        item("a", "failed", 2, prompt_tokens=1000, completion_tokens=1000, similarity=0.0,
             latency_ms=9.0, verdict={"winner": "a"}),
        item("b", "skipped", 0),
        item("b", "ok", 1, verdict={"winner": "b"}),
    ]
    report = ReplayReport(replay=replay, items=items)
    b, a = report.arms()
    assert (a.arm, a.turns, a.ok, a.failed, a.skipped) == ("a", 3, 2, 1, 0)
    assert a.mean_similarity == 0.75 and a.mean_latency_ms == 200.0
    assert (a.prompt_tokens, a.completion_tokens, a.wins) == (30, 2, 1)
    assert (b.arm, b.turns, b.ok, b.failed, b.skipped, b.wins) == ("b", 2, 1, 0, 1, 1)
    assert b.mean_similarity is None and b.mean_latency_ms is None
    assert (b.prompt_tokens, b.completion_tokens) == (0, 0)
    # no arm names in the spec: the items' arms, sorted
    bare = ReplayReport(replay=replay.model_copy(update={"spec": {}}), items=items)
    assert [s.arm for s in bare.arms()] == ["a", "b"]
    assert [s.arm for s in ReplayReport(replay=replay.model_copy(update={"spec": {"arms": "x"}}),
                                        items=items).arms()] == ["a", "b"]

    rows = list(csv.DictReader(io.StringIO(report.to_csv())))
    assert len(rows) == 5 and rows[0]["verdict"] == '{"winner": "a"}' and rows[3]["verdict"] == ""
    assert rows[0]["similarity"] == "0.5" and rows[3]["status"] == "skipped"
    assert report.to_csv().splitlines()[0].split(",")[:4] == ["replay_id", "conversation_id",
                                                              "turn", "arm"]
    assert "\r" not in report.to_csv()
    data = json.loads(report.to_json())
    assert [x["arm"] for x in data["arms"]] == ["b", "a"] and len(data["items"]) == 5
    assert data["replay"]["id"] == "r"


def test_a_replay_item_takes_its_numbers_from_the_turns_runs_and_report():
    """``_item`` (pure): an ok item sums its turn's runs (a tool round makes two) and
    reads its report; a failed one keeps the error, cut to 4,000 characters."""
    base = {"replay_id": "r", "conversation_id": "c", "turn": 1, "arm": "a", "user_seq": 3,
            "original_text": "the original", "original_run_id": "o1"}

    def run(run_id: str, **fields: Any) -> Run:
        return Run(id=run_id, conversation_id="b", endpoint="chat.completions", mode="chat",
                   model="m", request="{}", created_at=NOW, **fields)

    def report(**fields: Any) -> ContextReport:
        values: dict[str, Any] = {
            "conversation_id": "b", "model": "m", "mode": "chat", "encoding": "o200k_base",
            "budget": 100, "prompt_tokens": 60, "budget_left": 40, "reply_reserve": None,
            "overhead_tokens": 3, "pinned_tokens": 10, "summary_tokens": 0,
            "history_tokens": 47, "kept_seqs": [1, 6, 7, 8], "pinned_seqs": [1],
            "dropped_count": 4, "dropped_through": 5, "exact": True, "stop_reason": "budget",
            "rows_read": 5, "counted": 0,
        }
        return ContextReport(**(values | fields))

    reply = stored(9, "assistant", "the new reply",
                   reply=ReplyInfo(model="m", finish_reason="length"))
    runs = [run("r1", reported_prompt_tokens=50, completion_tokens=7, latency_ms=120.5),
            run("r2", reported_prompt_tokens=60, completion_tokens=None, latency_ms=None),
            run("r3", reported_prompt_tokens=None, completion_tokens=5, latency_ms=30.0)]
    result = TurnResult(conversation_id="b", reply=reply, run=runs[-1], runs=runs,
                        report=report())
    item = _item(base, "ignored", result, "the original")
    assert item.model_dump(exclude={"created_at", "verdict"}) == {
        **base, "status": "ok", "branch_id": "b", "run_id": "r3", "text": "the new reply",
        "similarity": text_similarity("the original", "the new reply"),
        "prompt_tokens": 110, "completion_tokens": 12, "kept": 4, "dropped": 4,
        "summarized": 0, "latency_ms": 150.5, "finish_reason": "length", "error": None,
    }
    assert 0 < item.similarity < 1  # (the texts differ: not a constant)

    # a summary stands in for exactly what was dropped
    summary = SummaryUse(id=1, start_seq=2, end_seq=5, tokens=9, reused=False, created=True,
                         stored=True)
    summed = _item(base, "b", result.model_copy(update={"report": report(summary=summary)}),
                   "the original")
    assert summed.summarized == 4
    # nothing reported, no run, no report, no original text, a reply without reply info
    bare = TurnResult(conversation_id="b", reply=stored(9, "assistant", "x"), run=None,
                      runs=[run("r4")], report=None)
    item = _item(base, "b", bare, None)
    assert (item.run_id, item.similarity, item.prompt_tokens, item.completion_tokens) == (
        None, None, None, None)
    assert (item.kept, item.dropped, item.summarized, item.latency_ms, item.finish_reason) == (
        None, None, 0, None, None)
    # zero counts sum to "unknown", not 0
    zero = bare.model_copy(update={"runs": [run("r5", reported_prompt_tokens=0,
                                                    completion_tokens=0, latency_ms=0.0)]})
    item = _item(base, "b", zero, None)
    assert (item.prompt_tokens, item.completion_tokens, item.latency_ms) == (None, None, 0.0)

    failed = _item(base, "branch-1", ValueError("x" * 5000), "the original")
    assert (failed.status, failed.branch_id, failed.run_id, failed.text) == (
        "failed", "branch-1", None, None)
    assert failed.error == ("ValueError: " + "x" * 5000)[:4000] and len(failed.error) == 4000
    assert failed.original_run_id == "o1" and failed.user_seq == 3


def test_recorded_results_compare_arguments_whatever_their_key_order():
    calls = stored(2, "assistant", None, tool_calls=[
        call("a", "weather", '{"city": "Rome", "unit": "C"}'),
        call("b", "weather", '{"city": "Paris", "unit": "C"}'),
    ])
    turn = SourceTurn(0, stored(1, "user", "q"), (
        calls, stored(3, "tool", "Rome: 25", tool_call_id="a"),
        stored(4, "tool", "Paris: 21", tool_call_id="b")))
    assert turn.recorded_result(call("x", "weather", '{"unit":"C","city":"Paris"}'), set()) == "Paris: 21"


def test_a_report_as_json_is_indented_and_keeps_its_text():
    replay = Replay(id="r", mode="continue", status="done", created_at=NOW, updated_at=NOW,
                    spec={"arms": [{"name": "a"}]})
    item = ReplayItem(replay_id="r", conversation_id="c", turn=0, arm="a", status="ok",
                      user_seq=1, text="Grüße")
    text = ReplayReport(replay=replay, items=[item]).to_json()
    assert '"text": "Grüße"' in text  # not \u-escaped
    assert text.splitlines()[:3] == ["{", '  "replay": {', '    "id": "r",']


def test_a_replayed_turn_offers_the_tools_its_original_run_offered():
    def run_with(body: dict[str, Any]) -> Run:
        return Run(id="r" * 32, conversation_id="c" * 32, endpoint="chat.completions",
                   mode="chat", model="m", request=json.dumps(body), created_at=NOW)

    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    assert _turn_tools(run_with({"tools": tools})) == tools
    assert _turn_tools(run_with({"tools": []})) is None
    assert _turn_tools(run_with({"tools": {"f": 1}})) is None
    assert _turn_tools(run_with({"messages": []})) is None
    assert _turn_tools(None) is None


async def test_a_turn_the_original_never_answered_is_replayed_too(store):
    h = Harness(store, FakeBackend())
    conv = await store.create_conversation()
    h.fake.reply("Hello!")
    await h.send(conv.id, "Hi")
    await store.append(conv.id, Message.user("Still there?"))  # its reply never came
    h.fake.reply("Yes.")
    h.fake.reply("Still here.")
    report = await h.replay(conv.id, arms=[Arm("gpt-4o-mini", name="a")], mode="teacher-forcing")
    first, second = report.items
    assert (first.status, first.original_text, first.text) == ("ok", "Hello!", "Yes.")
    assert first.original_run_id is not None and first.similarity is not None
    assert (second.status, second.text) == ("ok", "Still here.")
    assert second.original_text is None and second.original_run_id is None
    assert second.similarity is None


async def test_resume_sends_only_the_turns_not_done_in_teacher_forcing(store):
    h = Harness(store, FakeBackend())
    cid = await h.thread()
    # turn by turn, arm by arm; the second arm's second turn fails (after the first arm's)
    for reply in ("one", "f-one", "two", None, "three", "f-three"):
        h.fake.reply(reply) if reply else h.fake.fail(500)
    report = await h.replay(cid, arms=ARMS, mode="teacher-forcing")
    assert [i.status for i in report.items] == ["ok", "ok", "ok", "failed", "ok", "ok"]
    sent = len(h.fake.requests)
    h.fake.reply("f-two")
    again = await h.replay(replay_id=report.replay.id)
    assert len(h.fake.requests) - sent == 1  # no key makes a done turn idempotent here
    assert [i.text for i in again.items] == ["one", "f-one", "two", "f-two", "three", "f-three"]
    assert again.items[:2] == report.items[:2]


async def test_a_resumed_continue_replay_goes_on_on_the_arms_branch(store):
    h = Harness(store, FakeBackend())
    conv = await store.create_conversation()
    h.fake.reply("Hello!")
    await h.send(conv.id, "Hi")
    h.fake.reply("Hi there.")
    report = await h.replay(conv.id, arms=[ARMS[0]], mode="continue")
    h.fake.reply("Bye!")
    await h.send(conv.id, "Bye")  # the thread grew after the replay
    h.fake.reply("See you.")
    again = await h.replay(replay_id=report.replay.id)
    assert [i.text for i in again.items] == ["Hi there.", "See you."]
    assert again.items[1].branch_id == report.items[0].branch_id
    roles = [m.role for m in await store.messages(report.items[0].branch_id)]
    assert roles == ["user", "assistant", "user", "assistant"]


async def test_a_failed_arm_skips_its_later_turns_and_its_resume_goes_on_on_its_branch(store):
    """Continue mode: arm a fails on turn 0, so its turn 1 is skipped while arm b (its own
    server) answers both turns, each judged; the resume replays a's turns on the branch
    its failed turn made."""
    h = Harness(store, FakeBackend())
    conv = await store.create_conversation()
    for text in ("Hi", "Bye"):
        h.fake.reply(f"re: {text}")
        await h.send(conv.id, text)
    make = AsyncOpenAIClient if store.is_async else OpenAIClient
    other, judging = FakeBackend(), FakeBackend()
    b_client, judge_client = (
        make(base_url="http://fake/v1", api_key="sk-test", max_retries=0, transport=f.transport())
        for f in (other, judging)
    )
    arms = [Arm("gpt-4o-mini", name="a"), Arm("gpt-4o-mini", name="b", client=b_client)]
    h.fake.fail(500)
    other.reply("b0")
    other.reply("b1")
    for _ in range(4):
        judging.reply_json({"winner": "b", "reason": "it answered"})
    report = await h.replay(conv.id, arms=arms, mode="continue", judge="gpt-4o",
                            judge_client=judge_client)
    assert [(i.turn, i.arm, i.status) for i in report.items] == [
        (0, "a", "failed"), (0, "b", "ok"), (1, "a", "skipped"), (1, "b", "ok")]
    skipped = report.items[2]
    assert skipped.error == "an earlier turn of this arm failed" and skipped.branch_id is None
    assert [i.verdict["winner"] for i in report.items if i.status == "ok"] == ["b", "b"]
    branch = report.items[0].branch_id
    assert branch is not None
    assert (await store.get_conversation(branch)).metadata == {
        "replay_id": report.replay.id, "arm": "a"}

    h.fake.reply("a0")
    h.fake.reply("a1")
    again = await h.replay(replay_id=report.replay.id, judge_client=judge_client)
    assert [(i.arm, i.status, i.text) for i in again.items] == [
        ("a", "ok", "a0"), ("b", "ok", "b0"), ("a", "ok", "a1"), ("b", "ok", "b1")]
    assert [i.branch_id for i in again.items if i.arm == "a"] == [branch, branch]
    assert [m.text for m in await store.messages(branch) if m.role == "user"] == ["Hi", "Bye"]


async def test_a_replayed_turn_takes_up_to_8_tool_rounds(store):
    h = Harness(store, FakeBackend())
    conv = await store.create_conversation()
    h.fake.reply_tool_calls([("get_weather", {"city": "Paris"})])
    h.fake.reply("21C.")
    await h.send(conv.id, "Weather?")
    sent = len(h.fake.requests)
    for _ in range(8):  # the first answer, then 7 of the 8 rounds call the tool again
        h.fake.reply_tool_calls([("get_weather", {"city": "Paris"})])
    h.fake.reply("Still 21C.")
    [item] = (await h.replay(conv.id, arms=[ARMS[0]])).items
    assert (item.status, item.text) == ("ok", "Still 21C.")
    assert len(h.fake.requests) - sent == 9
    runs = (await store.list_runs(item.branch_id)).items
    assert len(runs) == 9  # the item counts every round's tokens
    assert item.prompt_tokens == sum(r.reported_prompt_tokens for r in runs)
    sent = len(h.fake.requests)
    for _ in range(9):  # still calling after the 8th round: the replay stops there
        h.fake.reply_tool_calls([("get_weather", {"city": "Paris"})])
    h.fake.reply("Never asked for.")
    [item] = (await h.replay(conv.id, arms=[ARMS[0]])).items
    assert item.status == "ok" and item.text != "Never asked for."
    assert len(h.fake.requests) - sent == 9


async def test_a_judged_replay_resumed_after_a_crash_judges_the_turn_its_arms_finished(store):
    """The process dies between a turn's saved items and its verdict: the resume sends no
    arm again and judges the turn with every arm's stored reply."""
    h = Harness(store, FakeBackend())
    conv = await store.create_conversation()
    h.fake.reply("Hello!")
    await h.send(conv.id, "Hi")

    def crash(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("the machine went down")

    make = AsyncOpenAIClient if store.is_async else OpenAIClient
    dying = make(base_url="http://fake/v1", api_key="sk-test", max_retries=0,
                 transport=httpx.MockTransport(crash))
    h.fake.reply("Hi there.")  # chat-arm
    h.fake.reply("Hey.")       # flat-arm
    with pytest.raises((RuntimeError, ExceptionGroup)) as crashed:  # async: in a task group
        await h.replay(conv.id, arms=ARMS, judge="gpt-4o", judge_client=dying)
    assert "went down" in repr(crashed.value.exceptions if store.is_async else crashed.value)
    [replay] = (await store.list_replays()).items
    assert replay.status == "interrupted"
    sent = len(h.fake.requests)
    h.fake.reply_json({"winner": "flat-arm", "reason": "shorter"})
    again = await h.replay(replay_id=replay.id)
    [judged] = _bodies(h.fake, sent)  # the judge only: both arms' replies were stored
    assert judged["model"] == "gpt-4o"
    payload = json.loads(judged["messages"][-1]["content"])
    assert payload["candidates"] == {"chat-arm": "Hi there.", "flat-arm": "Hey."}
    assert (payload["user_message"], payload["original_reply"]) == ("Hi", "Hello!")
    assert again.replay.status == "done"
    assert [(i.arm, i.text, i.verdict["winner"]) for i in again.items] == [
        ("chat-arm", "Hi there.", "flat-arm"), ("flat-arm", "Hey.", "flat-arm")]


async def test_the_store_replay_calls_check_their_input_and_write_nothing(store):
    conv = await store.create_conversation()
    rid, other = "a" * 32, "b" * 32
    before = store.snapshot()
    bad_calls: list[tuple[str, tuple[Any, ...], dict[str, Any], str]] = [
        ("create_replay", (rid,), {"mode": "sideways", "spec": {}},
         "replay mode must be 'continue' or 'teacher-forcing'"),
        ("create_replay", (rid,), {"mode": "continue", "spec": {"x": float("nan")}},
         "replay spec must be JSON: Out of range float values are not JSON compliant"),
        ("create_replay", (rid,), {"mode": "continue", "spec": {"x": object()}},
         "replay spec must be JSON: Object of type object is not JSON serializable"),
        ("list_replays", (), {"limit": 0}, "limit must be an integer in 1..10000"),
        ("list_replays", (), {"limit": True}, "limit must be an integer in 1..10000"),
        ("list_replays", (), {"limit": 10_001}, "limit must be an integer in 1..10000"),
        ("create_replay", (rid,), {"mode": "continue", "spec": {}, "owner": "x" * 256},
         "owner is 256 characters long; at most 255 are allowed"),
        ("create_replay", (rid,), {"mode": "continue", "spec": {"x": "a\x00b"}},
         ("replay spec.x contains a NUL character, which PostgreSQL cannot store (refused on "
          "every database), at index 1")),
    ]
    for method, args, kwargs, text in bad_calls:
        with pytest.raises(StoreInputError) as info:
            await getattr(store, method)(*args, **kwargs)
        assert str(info.value) == text
    assert store.snapshot() == before

    made = await store.create_replay(rid, mode="continue", spec={"arms": [1]}, owner="alice")
    assert (made.id, made.owner, made.mode, made.status, made.spec) == (
        rid, "alice", "continue", "running", {"arms": [1]})
    assert await store.get_replay(rid) == made
    await store.create_replay(other, mode="teacher-forcing", spec={}, owner="bob")
    with pytest.raises(ReplayNotFound) as info:
        await store.get_replay(rid, owner="bob")
    assert str(info.value) == f"replay {rid!r} not found for owner 'bob'"
    with pytest.raises(ReplayNotFound) as info:
        await store.get_replay("c" * 32)
    assert str(info.value) == f"replay {'c' * 32!r} not found"
    with pytest.raises(StoreInputError) as info:
        await store.get_replay("a\x00b")
    assert str(info.value).startswith("replay id contains a NUL character")
    with pytest.raises(StoreInputError) as info:
        await store.set_replay_status(rid, "paused")
    assert str(info.value) == (
        "replay status must be one of ('running', 'done', 'failed', 'interrupted')")
    with pytest.raises(ReplayNotFound):
        await store.set_replay_status(rid, "done", owner="bob")
    done = await store.set_replay_status(rid, "done", owner="alice")
    assert (done.status, done.created_at) == ("done", made.created_at)
    assert done.updated_at > made.updated_at  # statements apart: not within a microsecond
    assert (await store.get_replay(other)).status == "running"  # only that one changed
    assert [r.id for r in (await store.list_replays(owner="alice")).items] == [rid]
    assert len((await store.list_replays(limit=10_000)).items) == 2
    first = await store.list_replays(limit=1)
    assert len(first.items) == 1 and first.next_cursor is not None
    rest = await store.list_replays(limit=1, cursor=first.next_cursor)
    assert {first.items[0].id, rest.items[0].id} == {rid, other} and rest.next_cursor is None

    def item(**kwargs: Any) -> ReplayItem:
        fields = {"replay_id": rid, "conversation_id": conv.id, "turn": 0, "arm": "a",
                  "status": "ok", "user_seq": 1, **kwargs}
        return ReplayItem.model_construct(**fields)

    before = store.snapshot()
    for kwargs, text in [
        ({"status": "great"}, "replay item status must be one of ('ok', 'failed', 'skipped')"),
        ({"similarity": float("nan")}, "replay item similarity must be finite"),
        ({"latency_ms": float("inf")}, "replay item latency_ms must be finite"),
        ({"verdict": {"x": float("nan")}},
         "verdict must be JSON: Out of range float values are not JSON compliant"),
        ({"arm": ""}, "an arm name is 1..64 characters"),
        ({"arm": "x" * 65}, "an arm name is 1..64 characters"),
        ({"text": "a\x00b"}, ("replay item text contains a NUL character, which PostgreSQL "
                               "cannot store (refused on every database), at index 1")),
    ]:
        with pytest.raises(StoreInputError) as info:
            await store.save_replay_item(item(**kwargs))
        assert str(info.value) == text
    assert store.snapshot() == before
    await store.save_replay_item(item(arm="x" * 64, text="first"))
    saved = await store.save_replay_item(item(arm="x" * 64, text="again", similarity=0.5))
    await store.save_replay_item(item(turn=1, arm="b", latency_ms=2.0))
    await store.save_replay_item(item(turn=1, arm="a", status="failed", error="e"))
    items = await store.replay_items(rid)
    assert [(i.turn, i.arm, i.text) for i in items] == [
        (0, "x" * 64, "again"), (1, "a", None), (1, "b", None)]  # replaced, in order
    assert items[0] == saved and items[0].similarity == 0.5
    second = await store.create_conversation()
    await store.save_replay_item(item(conversation_id=second.id, turn=1))
    await store.save_replay_item(item(replay_id=other, turn=1))
    with pytest.raises(StoreInputError) as info:
        await store.save_verdict(rid, conv.id, 1, {"x": float("nan")})
    assert str(info.value) == "verdict must be JSON: Out of range float values are not JSON compliant"
    await store.save_verdict(rid, conv.id, 1, {"winner": "a"})
    assert [i.verdict for i in await store.replay_items(rid, conversation_id=conv.id)] == [
        None, {"winner": "a"}, {"winner": "a"}]  # both arms of that turn, no other
    assert [i.verdict for i in await store.replay_items(rid, conversation_id=second.id)] == [None]
    assert [(i.conversation_id, i.turn, i.arm) for i in await store.replay_items(rid)] == [
        (conv.id, 0, "x" * 64), (conv.id, 1, "a"), (conv.id, 1, "b"), (second.id, 1, "a")]
    assert [i.verdict for i in await store.replay_items(other)] == [None]
    assert await store.replay_items(rid, conversation_id="d" * 32) == []
    with pytest.raises(ReplayNotFound):
        await store.replay_items(rid, owner="bob")
