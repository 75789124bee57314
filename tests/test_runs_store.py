"""Run records in the store: start, finish (with the reply, atomically), read, page, scope.

Every test runs four times: SQLite / PostgreSQL x sync / async (see conftest ``store``).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import pytest

from convo import ConversationNotFound, ReplyInfo, RunNotFound, StoreInputError
from convo._store.runs import new_run_id

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}], "seed": 7}


async def _start(store: Any, cid: str, **kw: Any) -> Any:
    args: dict[str, Any] = {
        "endpoint": "chat.completions", "mode": "chat", "model": "gpt-4o-mini", "request": BODY,
    }
    args.update(kw)
    return await store.start_run(cid, **args)


async def test_a_run_is_pending_then_ok_with_its_reply(store):
    conv = await store.create_conversation(owner="alice")
    user = await store.append(conv.id, {"role": "user", "content": "Hi"})
    run = await _start(
        store, conv.id, kept_seqs=[user.seq], input_seq=user.seq, idempotency_key="k1",
        settings={"budget": 1000, "template": None}, estimated_prompt_tokens=9,
        base_url="http://fake/v1", stream=True,
    )
    assert run.status == "pending" and run.owner == "alice" and run.finished_at is None
    assert run.body() == BODY and run.kept_seqs == [1] and run.stream is True
    assert (await store.get_run(run.id)) == run

    info = ReplyInfo(model="gpt-4o-mini-2024", finish_reason="stop", seed=7,
                     usage={"prompt_tokens": 9, "completion_tokens": 2}, system_fingerprint="fp")
    done = await store.finish_run(
        run.id, status="ok", reply={"role": "assistant", "content": "Hello"}, reply_info=info,
        reply_key="k1#0", attempts=2, ttfb_ms=1.5, latency_ms=4.25, reported_prompt_tokens=9,
        completion_tokens=2, usage={"prompt_tokens": 9, "completion_tokens": 2},
        finish_reason="stop", system_fingerprint="fp", seed=7,
        response={"id": "chatcmpl-1", "object": "chat.completion"},
    )
    assert done.duplicate is False
    assert done.reply is not None and done.reply.seq == 2 and done.reply.reply == info
    got = await store.get_run(run.id)
    assert got == done.run
    assert (got.status, got.reply_message_id, got.attempts) == ("ok", done.reply.id, 2)
    assert (got.ttfb_ms, got.latency_ms, got.reported_prompt_tokens) == (1.5, 4.25, 9)
    assert got.response == {"id": "chatcmpl-1", "object": "chat.completion"}
    assert got.finished_at is not None and got.finished_at >= got.created_at
    stored = await store.get_message(conv.id, 2)
    assert stored.content == "Hello" and stored.idempotency_key == "k1#0"
    assert done.reply == stored and done.reply.conversation_id == conv.id  # what was written


async def test_the_request_text_is_kept_byte_for_byte(store):
    conv = await store.create_conversation()
    text = '{"messages": [{"role":"user","content":"caf\\u00e9"}],   "model": "m"}'
    run = await _start(store, conv.id, request=text)
    assert (await store.get_run(run.id)).request == text
    raw = b'{"model":"m","prompt":"x"}'
    run2 = await _start(store, conv.id, request=raw, endpoint="completions", mode="completion")
    assert (await store.get_run(run2.id)).request == raw.decode()


async def test_failed_run_keeps_the_error_and_stores_no_message(store):
    conv = await store.create_conversation()
    await store.append(conv.id, {"role": "user", "content": "Hi"})
    run = await _start(store, conv.id)
    done = await store.finish_run(
        run.id, status="failed", error_type="RateLimitError", error_message="429 slow down",
        attempts=3, latency_ms=12.0,
    )
    assert done.reply is None and done.run.status == "failed"
    assert (done.run.error_type, done.run.attempts) == ("RateLimitError", 3)
    assert await store.count_messages(conv.id) == 1


async def test_a_finished_run_cannot_be_finished_again(store):
    conv = await store.create_conversation()
    run = await _start(store, conv.id)
    await store.finish_run(run.id, status="cancelled")
    before = store.snapshot()
    with pytest.raises(StoreInputError, match=r"^run '\w+' is already finished \(cancelled\)$"):
        await store.finish_run(run.id, status="ok", reply={"role": "assistant", "content": "x"})
    assert store.snapshot() == before


async def test_a_duplicate_reply_key_keeps_the_first_reply(store):
    """Two sends of one turn: the second reply is not stored, its run says so."""
    conv = await store.create_conversation()
    await store.append(conv.id, {"role": "user", "content": "Hi"}, idempotency_key="t")
    first, second = await _start(store, conv.id), await _start(store, conv.id)
    a = await store.finish_run(first.id, status="ok", reply={"role": "assistant", "content": "A"},
                               reply_key="t#0")
    b = await store.finish_run(second.id, status="ok", reply={"role": "assistant", "content": "B"},
                               reply_key="t#0")
    assert not a.duplicate and b.duplicate
    assert b.reply is not None and b.reply.id == a.reply.id and b.reply.content == "A"
    assert b.run.status == "cancelled" and b.run.error_type == "DuplicateTurn"
    assert b.run.reply_message_id == a.reply.id
    assert b.run.error_message == (f"a reply with idempotency key 't#0' was already stored "
                                   f"(message {a.reply.id}); this reply was not stored")
    assert await store.get_run(second.id) == b.run
    assert [m.content for m in await store.messages(conv.id)] == ["Hi", "A"]
    conv_after = await store.get_conversation(conv.id)
    assert conv_after.last_seq == 2  # the losing bump was rolled back


async def test_a_reply_takes_its_id_as_an_append_does_so_later_appends_fit(store):
    """The reply's INSERT gives its id the dialect's way (PostgreSQL: the sequence, which
    later appends take too; an id made SQLite's way there, MAX(id) + 1, leaves the
    sequence behind and the next append in the conversation collides with the reply)."""
    conv = await store.create_conversation()
    user = await store.append(conv.id, {"role": "user", "content": "Hi"})
    run = await _start(store, conv.id)
    done = await store.finish_run(run.id, status="ok",
                                  reply={"role": "assistant", "content": "Hello"})
    after = await store.append(conv.id, {"role": "user", "content": "And?"})
    assert done.reply is not None
    assert (user.seq, done.reply.seq, after.seq) == (1, 2, 3)
    assert user.id < done.reply.id < after.id
    assert [m.id for m in await store.messages(conv.id)] == [user.id, done.reply.id, after.id]


async def test_list_runs_newest_first_with_keyset_paging(store):
    conv = await store.create_conversation()
    other = await store.create_conversation()
    ids = [(await _start(store, conv.id, round=i)).id for i in range(7)]
    await _start(store, other.id)
    seen: list[str] = []
    cursor = None
    while True:
        page = await store.list_runs(conv.id, limit=3, cursor=cursor)
        seen.extend(r.id for r in page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == ids[::-1]
    assert [r.round for r in (await store.list_runs(conv.id, limit=2)).items] == [6, 5]


async def test_runs_are_owner_scoped(store):
    conv = await store.create_conversation(owner="alice")
    run = await _start(store, conv.id, owner="alice")
    with pytest.raises(ConversationNotFound):
        await _start(store, conv.id, owner="bob")
    with pytest.raises(RunNotFound):
        await store.get_run(run.id, owner="bob")
    with pytest.raises(ConversationNotFound):
        await store.list_runs(conv.id, owner="bob")
    with pytest.raises(RunNotFound):
        await store.finish_run(run.id, status="ok", owner="bob")
    assert (await store.get_run(run.id, owner="alice")).id == run.id
    assert (await store.get_run(run.id, owner="alice")).status == "pending"


async def test_runs_go_with_their_conversation(store):
    conv = await store.create_conversation()
    run = await _start(store, conv.id)
    await store.delete_conversation(conv.id)
    with pytest.raises(RunNotFound):
        await store.get_run(run.id)
    assert store.count("runs") == 0


@pytest.mark.parametrize(
    "bad",
    [
        {"endpoint": "embeddings"},
        {"mode": "flat"},
        {"model": ""},
        {"model": "m" * 300},
        {"request": "not json"},
        {"request": "[1, 2]"},
        {"request": {"x": float("nan")}},
        {"request": b"\xff\xfe"},
        {"kept_seqs": [1, "2"]},
        {"kept_seqs": [True]},
        {"kept_seqs": [0]},
        {"summary_id": 1.5},
        {"round": -1},
        {"estimated_prompt_tokens": 2**70},
        {"settings": {"x": object()}},
        {"settings": {"x": float("inf")}},
        {"metadata": {"x": {1, 2}}},
        {"idempotency_key": "k" * 300},
        {"reproduces_id": "r" * 40},
    ],
    ids=lambda bad: next(iter(bad)),
)
async def test_bad_run_fields_are_refused_and_nothing_is_written(store, bad):
    conv = await store.create_conversation()
    before = store.snapshot()
    with pytest.raises(StoreInputError):
        await _start(store, conv.id, **bad)
    assert store.snapshot() == before


@pytest.mark.parametrize(
    "bad",
    [
        {"status": "pending"},
        {"status": "done"},
        {"attempts": -1},
        {"attempts": "3"},
        {"latency_ms": float("nan")},
        {"ttfb_ms": -1.0},
        {"usage": {"x": float("nan")}},
        {"error_type": 5},
        {"surprise": 1},
        {"reply": {"role": "wizard", "content": "x"}},
    ],
    ids=lambda bad: next(iter(bad)),
)
async def test_bad_outcomes_are_refused_and_nothing_is_written(store, bad):
    conv = await store.create_conversation()
    run = await _start(store, conv.id)
    before = store.snapshot()
    args = {"status": "ok", **bad}
    with pytest.raises((StoreInputError, ValueError)):
        await store.finish_run(run.id, **args)
    assert store.snapshot() == before
    assert (await store.get_run(run.id)).status == "pending"


async def test_concurrent_finishes_of_one_turn_store_one_reply(store):
    """Eight writers race to store the reply of one turn: exactly one reply lands."""
    conv = await store.create_conversation()
    await store.append(conv.id, {"role": "user", "content": "Hi"}, idempotency_key="t")
    starts = [await _start(store, conv.id) for _ in range(8)]

    async def finish(i: int) -> Any:
        if store.is_async:
            return await store.finish_run(
                starts[i].id, status="ok", reply={"role": "assistant", "content": f"r{i}"},
                reply_key="t#0",
            )
        return await asyncio.to_thread(
            store.raw.finish_run, starts[i].id, status="ok",
            reply={"role": "assistant", "content": f"r{i}"}, reply_key="t#0",
        )

    results = await asyncio.gather(*(finish(i) for i in range(8)))
    winners = [r for r in results if not r.duplicate]
    assert len(winners) == 1
    assert {r.reply.id for r in results} == {winners[0].reply.id}
    rows = store.sql("SELECT seq, role FROM messages ORDER BY seq")
    assert [tuple(r) for r in rows] == [(1, "user"), (2, "assistant")]
    statuses = sorted(r[0] for r in store.sql("SELECT status FROM runs"))
    assert statuses == ["cancelled"] * 7 + ["ok"]


def test_run_json_columns_round_trip(db_url):
    from convo import Store

    with Store(db_url) as s:
        conv = s.create_conversation()
        run = s.start_run(conv.id, endpoint="completions", mode="completion", model="m",
                          request={"model": "m", "prompt": "p", "stop": ["\n"]},
                          settings={"template": "chatml", "template_sha256": "ab" * 32,
                                    "budget": 100, "nested": {"a": [1, None, True]}})
        got = s.get_run(run.id)
        assert got.settings["nested"] == {"a": [1, None, True]}
        assert json.loads(got.request)["stop"] == ["\n"]


@pytest.mark.parametrize(
    "bad",
    [{"model": "m\x00"}, {"base_url": "http://x/\ud800"}, {"idempotency_key": "k\x00"},
     {"metadata": {"k": "v\x00"}}, {"replays_id": "r\x00"}, {"reproduces_id": "\ud800"}],
    ids=lambda bad: next(iter(bad)),
)
async def test_text_no_database_stores_alike_is_refused(store, bad):
    """NUL and lone surrogates: refused up front on both databases, nothing written."""
    conv = await store.create_conversation()
    before = store.snapshot()
    with pytest.raises(StoreInputError):
        await _start(store, conv.id, **bad)
    assert store.snapshot() == before
    run = await _start(store, conv.id)
    for field in ("error_message", "error_type", "finish_reason", "system_fingerprint"):
        with pytest.raises(StoreInputError):
            await store.finish_run(run.id, status="failed", **{field: "boom\x00"})
    for field, number in (("attempts", 2**63), ("seed", -(2**63) - 1), ("latency_ms", -1.0),
                          ("ttfb_ms", float("nan")), ("completion_tokens", True)):
        with pytest.raises(StoreInputError):
            await store.finish_run(run.id, status="failed", **{field: number})
    assert (await store.get_run(run.id)).status == "pending"


_UNSTORABLE = [
    ("r\ud800", "contains a lone surrogate ('\\ud800'), which has no UTF-8 encoding, at index 1"),
    ("r\x00", ("contains a NUL character, which PostgreSQL cannot store (refused on every "
               "database), at index 1")),
]


@pytest.mark.parametrize(("bad", "why"), _UNSTORABLE, ids=["surrogate", "nul"])
async def test_unstorable_ids_and_owners_are_refused_not_raised_raw(store, bad, why):
    """Before any statement: the driver would raise its own error (PostgreSQL refuses a
    NUL, neither driver encodes a lone surrogate)."""
    conv = await store.create_conversation()
    for call in (store.get_run(bad), store.finish_run(bad, status="failed")):
        with pytest.raises(StoreInputError, match=f"^{re.escape('run id ' + why)}$"):
            await call
    with pytest.raises(StoreInputError, match=f"^{re.escape('conversation_id ' + why)}$"):
        await store.runs_for_replies(bad, [1])
    owner = "o" + bad[1:]
    for call in (store.get_run("r", owner=owner), store.finish_run("r", status="failed", owner=owner),
                 store.list_runs(conv.id, owner=owner), store.turn_runs(conv.id, "k", owner=owner),
                 store.runs_for_replies(conv.id, [1], owner=owner), _start(store, conv.id, owner=owner)):
        with pytest.raises(StoreInputError, match=f"^{re.escape('owner ' + why)}$"):
            await call


async def test_unstorable_ids_are_refused_not_raised_raw(store):
    with pytest.raises(StoreInputError, match="^run id must be a string, not int$"):
        await store.finish_run(7, status="failed")
    with pytest.raises(StoreInputError, match="^owner is 256 characters long; at most 255"):
        await store.get_run("r", owner="o" * 256)
    with pytest.raises(StoreInputError):
        await store.replay_items("r\ud800")


async def test_turn_runs_are_one_keys_runs_oldest_first(store):
    conv = await store.create_conversation(owner="alice")
    other = await store.create_conversation(owner="alice")
    first = await _start(store, conv.id, idempotency_key="turn-1", round=0)
    second = await _start(store, conv.id, idempotency_key="turn-1", round=1)
    await _start(store, conv.id, idempotency_key="turn-2")
    await _start(store, conv.id)
    await _start(store, other.id, idempotency_key="turn-1")
    runs = await store.turn_runs(conv.id, "turn-1", owner="alice")
    assert [(r.id, r.round) for r in runs] == [(first.id, 0), (second.id, 1)]
    assert await store.turn_runs(conv.id, "nothing", owner="alice") == []
    with pytest.raises(ConversationNotFound):
        await store.turn_runs(conv.id, "turn-1", owner="bob")
    with pytest.raises(StoreInputError) as info:
        await store.turn_runs(conv.id, "k" * 300, owner="alice")
    assert str(info.value) == "idempotency_key is 300 characters long; at most 255 are allowed"


async def test_runs_for_replies_maps_each_reply_to_the_run_that_made_it(store):
    conv = await store.create_conversation(owner="alice")
    await store.append(conv.id, {"role": "user", "content": "Hi"})
    replies, runs = [], []
    for text in ("one", "two"):
        run = await _start(store, conv.id)
        done = await store.finish_run(run.id, status="ok",
                                      reply={"role": "assistant", "content": text})
        replies.append(done.reply)
        runs.append(done.run)
    failed = await _start(store, conv.id)  # a failed run naming a reply does not count
    await store.finish_run(failed.id, status="failed", error_type="X",
                           reply_message_id=replies[0].id)
    user_msg = await store.get_message(conv.id, 1)
    got = await store.runs_for_replies(conv.id, [replies[0].id, replies[1].id, user_msg.id],
                                       owner="alice")
    assert got == {replies[0].id: runs[0], replies[1].id: runs[1]}
    assert await store.runs_for_replies(conv.id, [replies[1].id], owner="alice") == {
        replies[1].id: runs[1]}  # only the replies asked for
    # ids that are no message ids are skipped, not sent to the database
    assert await store.runs_for_replies(conv.id, [True, "3", None], owner="alice") == {}
    assert await store.runs_for_replies(conv.id, [], owner="alice") == {}
    with pytest.raises(ConversationNotFound):
        await store.runs_for_replies(conv.id, [replies[0].id], owner="bob")
    # ids no message can have are skipped too (not a driver's overflow error)
    assert await store.runs_for_replies(conv.id, [0, -(2**70), 2**64, replies[0].id]) == {
        replies[0].id: runs[0]}
    with pytest.raises(StoreInputError, match="^message_ids must be a sequence of message ids$"):
        await store.runs_for_replies(conv.id, None)
    with pytest.raises(StoreInputError, match="^message_ids must be a sequence of message ids$"):
        await store.runs_for_replies(conv.id, "12")


async def test_runs_for_replies_sees_the_runs_of_its_lineage_only(store):
    """A fork shares its parent's replies, and so their runs; another conversation's
    reply ids (another owner's) give nothing, whatever ids the caller tries."""
    conv = await store.create_conversation(owner="alice")
    await store.append(conv.id, {"role": "user", "content": "Hi"})
    run = await _start(store, conv.id)
    done = await store.finish_run(run.id, status="ok", reply={"role": "assistant", "content": "A"})
    fork = await store.fork(conv.id, at=2, owner="alice")
    theirs = await store.create_conversation(owner="bob")
    other = await _start(store, theirs.id)
    bobs = await store.finish_run(other.id, status="ok", reply={"role": "assistant", "content": "B"})
    ids = [done.reply.id, bobs.reply.id]
    assert await store.runs_for_replies(fork.id, ids, owner="alice") == {done.reply.id: done.run}
    assert await store.runs_for_replies(conv.id, ids, owner="alice") == {done.reply.id: done.run}
    assert await store.runs_for_replies(theirs.id, ids, owner="bob") == {bobs.reply.id: bobs.run}


@pytest.mark.parametrize("limit", [0, -1, None, True, 2.0, 2**63])
async def test_list_runs_needs_a_positive_integer_limit(store, limit):
    conv = await store.create_conversation()
    with pytest.raises(StoreInputError) as info:
        await store.list_runs(conv.id, limit=limit)
    assert str(info.value) == f"limit must be an integer in 1..{2**63 - 1}, got {limit!r}"
    assert len((await store.list_runs(conv.id, limit=1)).items) == 0


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -0.5, True, "3"])
@pytest.mark.parametrize("field", ["ttfb_ms", "latency_ms"])
async def test_timings_must_be_finite_milliseconds(store, field, value):
    conv = await store.create_conversation()
    run = await _start(store, conv.id)
    with pytest.raises(StoreInputError) as info:
        await store.finish_run(run.id, status="failed", **{field: value})
    assert str(info.value) == f"{field} must be a finite number of milliseconds >= 0"
    done = await store.finish_run(run.id, status="failed", **{field: 0})
    assert getattr(done.run, field) == 0.0


async def test_outcome_fields_are_checked_by_name(store):
    conv = await store.create_conversation()
    run = await _start(store, conv.id)
    for bad, message in [
        ({"surprise": 1, "other": "x"}, "unknown run fields: ['other', 'surprise']"),
        ({"attempts": -1}, "attempts must be an integer in 0..2147483647, got -1"),
        ({"completion_tokens": 1.5}, "completion_tokens must be an integer in 0..2147483647, got 1.5"),
        # not a number: named by its type only (a secret pasted in the wrong place stays out)
        ({"seed": "sk-secret"}, f"seed must be an integer in {-(2**63)}..{2**63 - 1}, got a str"),
        ({"reply_message_id": 0}, f"reply_message_id must be an integer in 1..{2**63 - 1}, got 0"),
        ({"finish_reason": 3}, "run finish_reason must be a string"),
    ]:
        with pytest.raises(StoreInputError) as info:
            await store.finish_run(run.id, status="failed", **bad)
        assert str(info.value) == message


async def test_an_outcome_may_name_a_stored_reply_and_a_negative_seed(store):
    conv = await store.create_conversation()
    reply = await store.append(conv.id, {"role": "assistant", "content": "stored apart"})
    run = await _start(store, conv.id)
    done = await store.finish_run(run.id, status="ok", reply_message_id=reply.id, seed=-7)
    assert done.run.reply_message_id == reply.id and done.run.seed == -7
    assert (await store.get_run(run.id)).seed == -7
    # a seed is any signed 64-bit integer, the column's range
    lowest = await _start(store, conv.id)
    done = await store.finish_run(lowest.id, status="failed", seed=-(2**63), attempts=0,
                                  completion_tokens=0)
    assert (await store.get_run(lowest.id)).seed == -(2**63)
    assert (done.run.attempts, done.run.completion_tokens) == (0, 0)  # counts start at 0
    below = await _start(store, conv.id)
    with pytest.raises(StoreInputError, match=r"^seed must be an integer in -9223372036854775808\.\.9223372036854775807, got "):
        await store.finish_run(below.id, status="failed", seed=-(2**63) - 1)


async def test_a_usage_shared_by_the_reply_and_the_run_is_checked_and_kept_apart(store):
    """A turn passes one usage object as the reply's and the run's: it is checked once,
    refused when unstorable (nothing written), and the run and the reply each get their
    own copy (changing one does not change the other, nor what was passed)."""
    conv = await store.create_conversation()
    await store.append(conv.id, {"role": "user", "content": "Hi"})
    run = await _start(store, conv.id)
    bad = {"prompt_tokens": 9, "details": {"x": float("nan")}}
    before = store.snapshot()
    bad_info = ReplyInfo(usage=bad)
    with pytest.raises(StoreInputError):
        await store.finish_run(
            run.id, status="ok", reply={"role": "assistant", "content": "Hello"},
            reply_info=bad_info, usage=bad_info.usage,
        )
    assert store.snapshot() == before
    usage = {"prompt_tokens": 9, "completion_tokens": 2, "details": {"cached_tokens": 0}}
    info = ReplyInfo(model="m", finish_reason="stop", usage=usage)
    done = await store.finish_run(
        run.id, status="ok", reply={"role": "assistant", "content": "Hello"}, reply_info=info,
        usage=info.usage, started=run,
    )
    assert done.run.usage == usage and done.reply.reply.usage == usage
    done.run.usage["details"]["cached_tokens"] = 5
    assert done.reply.reply.usage == usage and info.usage == usage
    assert usage["details"] == {"cached_tokens": 0}
    assert (await store.get_run(run.id)).usage == usage
    assert (await store.get_message(conv.id, 2)).reply.usage == usage
    # a run's usage of its own (another object, other counts) is the run's, not the reply's
    own = await _start(store, conv.id)
    done = await store.finish_run(
        own.id, status="ok", reply={"role": "assistant", "content": "Again"},
        reply_info=ReplyInfo(usage={"prompt_tokens": 1}), usage={"prompt_tokens": 2},
    )
    assert (done.run.usage, done.reply.reply.usage) == ({"prompt_tokens": 2}, {"prompt_tokens": 1})
    assert (await store.get_run(own.id)).usage == {"prompt_tokens": 2}



# the runs table's INTEGER columns (32 bits on PostgreSQL; BIGINT ones take 64 bits)
_INT32 = 2**31 - 1
_START_INTS = ("input_seq", "round", "estimated_prompt_tokens")
_OUTCOME_INTS = ("reported_prompt_tokens", "completion_tokens", "attempts")


async def _refused(store: Any, conv_id: str, message: str, **fields: Any) -> Any:
    """Start a run with ``fields`` (start_run's) or finish a new one with them and a reply:
    refused with ``message``, nothing written. Returns the pending run (None for a start)."""
    starting = not fields.keys() - _START_FIELDS
    run = None if starting else await _start(store, conv_id)
    before = store.snapshot()
    with pytest.raises(StoreInputError) as info:
        if run is None:
            await _start(store, conv_id, **fields)
        else:
            await store.finish_run(run.id, status="ok", reply={"role": "assistant", "content": "x"},
                                   reply_key="k#0", **fields)
    assert str(info.value) == message
    assert store.snapshot() == before
    return run


_START_FIELDS = {*_START_INTS, "summary_id"}


@pytest.mark.parametrize("field", _START_INTS + _OUTCOME_INTS)
async def test_an_integer_column_takes_its_own_range_on_both_databases(store, field):
    """PostgreSQL's INTEGER holds 32 bits: one more is refused up front on both databases
    (not a driver error mid-write, nor stored by SQLite alone), nothing written; the
    column's largest value is stored and read back."""
    conv = await store.create_conversation()
    message = f"{field} must be an integer in 0..{_INT32}, got {_INT32 + 1}"
    run = await _refused(store, conv.id, message, **{field: _INT32 + 1})
    if run is None:
        run = await _start(store, conv.id, **{field: _INT32})
    else:
        await store.finish_run(run.id, status="ok", **{field: _INT32})
    assert getattr(await store.get_run(run.id), field) == _INT32


async def test_the_bigint_columns_take_64_bits(store):
    conv = await store.create_conversation()
    biggest = 2**63 - 1
    run = await _start(store, conv.id, summary_id=biggest)
    await store.finish_run(run.id, status="ok", reply_message_id=biggest, seed=biggest)
    got = await store.get_run(run.id)
    assert (got.summary_id, got.reply_message_id, got.seed) == (biggest, biggest, biggest)
    # the smallest id too; both are ids runs_for_replies looks for
    first = await _start(store, conv.id)
    first = (await store.finish_run(first.id, status="ok", reply_message_id=1)).run
    assert await store.runs_for_replies(conv.id, [1, biggest]) == {1: first, biggest: got}
    for field, lowest in (("summary_id", 1), ("reply_message_id", 1), ("seed", -(2**63))):
        message = f"{field} must be an integer in {lowest}..{biggest}, got {2**63}"
        await _refused(store, conv.id, message, **{field: 2**63})


async def test_a_finish_reason_fits_its_64_character_column(store):
    conv = await store.create_conversation()
    run = await _refused(store, conv.id, "run finish_reason is 65 characters long; at most 64 are allowed",
                         finish_reason="s" * 65)
    done = await store.finish_run(run.id, status="ok", finish_reason="s" * 64,
                                  error_type="e" * 255, system_fingerprint="f" * 255)
    got = await store.get_run(run.id)
    assert got == done.run
    assert (got.finish_reason, got.error_type, got.system_fingerprint) == (
        "s" * 64, "e" * 255, "f" * 255)


async def test_attempts_cannot_be_none_its_column_is_not_null(store):
    conv = await store.create_conversation()
    run = await _refused(store, conv.id, f"attempts must be an integer in 0..{_INT32}, got None",
                         attempts=None)
    assert (await store.get_run(run.id)).status == "pending"
    # the other counts may be None (not known), and are stored so
    done = await store.finish_run(run.id, status="failed", completion_tokens=None, seed=None,
                                  reported_prompt_tokens=None, reply_message_id=None)
    assert (await store.get_run(run.id)) == done.run and done.run.attempts == 0


def _parts(run_id: str) -> tuple[int, int]:
    """A run id's millisecond clock and counter (its first 12 and next 4 hex digits)."""
    assert len(run_id) == 32 and set(run_id) <= set("0123456789abcdef"), run_id
    return int(run_id[:12], 16), int(run_id[12:16], 16)


def test_run_ids_count_the_runs_of_each_millisecond():
    """A run id is the ms clock, the number of ids made before it in that ms, and 64
    random bits: ids made one after the other sort in that order, and differ."""
    before = time.time_ns() // 1_000_000
    ids = [new_run_id()]
    while len({i[:12] for i in ids}) < 3 or len(ids) < 100:  # at least two ms changes
        ids.append(new_run_id())
    after = time.time_ns() // 1_000_000
    assert before <= _parts(ids[0])[0] and _parts(ids[-1])[0] <= after
    for older, newer in zip(map(_parts, ids), map(_parts, ids[1:]), strict=False):
        ms, count = older
        assert newer == (ms, count + 1) or (newer[0] > ms and newer[1] == 0), (older, newer)
    assert len({i[16:] for i in ids}) == len(ids)


def test_the_65537th_run_id_of_a_millisecond_borrows_the_next(monkeypatch):
    """The 16-bit counter cannot overflow: past 0xFFFF ids are counted in the next ms."""
    from convo._store import runs

    ahead = time.time_ns() // 1_000_000 + 3_600_000  # an hour on: the clock is behind
    monkeypatch.setattr(runs, "_last_ms", ahead)
    monkeypatch.setattr(runs, "_counter", 0xFFFE)
    got = [_parts(new_run_id()) for _ in range(3)]
    assert got == [(ahead, 0xFFFF), (ahead + 1, 0), (ahead + 1, 1)]


_BIG = 2**63 - 1


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"conversation_id": 7}, "conversation_id must be a string, not int"),
        ({"owner": "o" * 256}, "owner is 256 characters long; at most 255 are allowed"),
        ({"endpoint": "embeddings"},
         "run endpoint must be one of ('chat.completions', 'completions'), got 'embeddings'"),
        ({"mode": "flat"}, "run mode must be one of ('chat', 'completion'), got 'flat'"),
        ({"model": ""}, "run model must be a non-empty string"),
        ({"model": 7}, "run model must be a non-empty string"),
        ({"model": "m" * 256}, "run model is 256 characters long; at most 255 are allowed"),
        ({"idempotency_key": "k" * 256},
         "run idempotency_key is 256 characters long; at most 255 are allowed"),
        ({"reproduces_id": "r" * 33}, "reproduces_id must be a run id"),
        ({"reproduces_id": 7}, "reproduces_id must be a run id"),
        ({"replays_id": "r" * 33}, "replays_id must be a run id"),
        ({"base_url": b"http://x"}, "run base_url must be a string, not bytes"),
        ({"base_url": "http://x/\x00"},
         ("run base_url contains a NUL character, which PostgreSQL cannot store (refused on every "
         "database), at index 9")),
        ({"kept_seqs": None}, "run kept_seqs must be a sequence of seqs, not NoneType"),
        ({"kept_seqs": 7}, "run kept_seqs must be a sequence of seqs, not int"),
        ({"kept_seqs": [1, 0]}, f"kept seq must be an integer in 1..{_BIG}, got 0"),
        ({"kept_seqs": [1, 2**63]}, f"kept seq must be an integer in 1..{_BIG}, got {2**63}"),
        ({"kept_seqs": [True]}, f"kept seq must be an integer in 1..{_BIG}, got True"),
        ({"kept_seqs": [1, None]}, f"kept seq must be an integer in 1..{_BIG}, got None"),
        ({"settings": {"x": object()}},
         "run settings must be a JSON object: Object of type object is not JSON serializable"),
        ({"settings": {"x": float("nan")}},
         "run settings must be a JSON object: Out of range float values are not JSON compliant"),
        ({"settings": {"x": "\x00"}},
         ("run settings.x contains a NUL character, which PostgreSQL cannot store (refused on "
         "every database), at index 0")),
        ({"token_counts": ["o200k_base", {}]},
         "token_counts must be (encoding, {message id: tokens})"),
        ({"token_counts": ("o200k_base", {}, 1)},
         "token_counts must be (encoding, {message id: tokens})"),
        ({"summary_id": 0}, f"summary_id must be an integer in 1..{_BIG}, got 0"),
        ({"input_seq": -1}, f"input_seq must be an integer in 0..{_INT32}, got -1"),
        ({"round": None}, f"round must be an integer in 0..{_INT32}, got None"),
        ({"estimated_prompt_tokens": "9"},
         f"estimated_prompt_tokens must be an integer in 0..{_INT32}, got a str"),
        ({"metadata": [1]}, "run metadata must be a JSON object (a dict), not list"),
        ({"request": 7}, "run request must be JSON text, bytes or a mapping"),
        ({"request": b"\xff"}, "run request is not UTF-8 JSON text"),
        ({"request": "{"}, "run request is not valid JSON text"),
        ({"request": '{"x": NaN}'}, "run request is not valid JSON text"),
        ({"request": "[1]"}, "run request must be a JSON object"),
        ({"request": {"x": object()}}, ("run request is not JSON-serializable: Unable to serialize "
                                       "unknown type: <class 'object'>")),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else "",
)
async def test_start_run_says_what_it_refuses(store, bad, message):
    conv = await store.create_conversation()
    before = store.snapshot()
    with pytest.raises(StoreInputError) as info:
        await _start(store, bad.get("conversation_id", conv.id),
                     **{k: v for k, v in bad.items() if k != "conversation_id"})
    assert str(info.value) == message
    assert store.snapshot() == before


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"started": 7}, "started must be the Run that start_run returned for this run"),
        ({"owner": "o" * 256}, "owner is 256 characters long; at most 255 are allowed"),
        ({"status": "pending"},
         "a finished run's status must be one of ('ok', 'failed', 'cancelled', 'incomplete')"),
        ({"reply": "Hello"}, "a run's reply must be a message, not str"),
        ({"reply_info": {"model": "m"}}, "reply_info must be a ReplyInfo, not dict"),
        ({"usage": [1]}, ("run usage must be a JSON object: cannot convert dictionary update "
                         "sequence element #0 to a sequence")),
        ({"response": {"x": float("inf")}},
         "run response must be a JSON object: Out of range float values are not JSON compliant"),
        ({"error_message": 7}, "run error_message must be a string"),
        ({"error_message": "\x00"}, ("run error_message contains a NUL character, which PostgreSQL "
                                    "cannot store (refused on every database), at index 0")),
        ({"error_type": "e" * 256}, "run error_type is 256 characters long; at most 255 are allowed"),
        ({"system_fingerprint": "f" * 256},
         "run system_fingerprint is 256 characters long; at most 255 are allowed"),
        ({"system_fingerprint": "\ud800"}, ("run system_fingerprint contains a lone surrogate "
                                           "('\\ud800'), which has no UTF-8 encoding, at index 0")),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else "",
)
async def test_finish_run_says_what_it_refuses(store, bad, message):
    conv = await store.create_conversation()
    run = await _start(store, conv.id)
    before = store.snapshot()
    args = {"status": "ok", "reply": {"role": "assistant", "content": "x"}, **bad}
    with pytest.raises(StoreInputError) as info:
        await store.finish_run(run.id, **args)
    assert str(info.value) == message
    assert store.snapshot() == before


@pytest.mark.parametrize("reply", [None, {"role": "assistant", "content": "x"}], ids=["bare", "reply"])
@pytest.mark.parametrize("known", [False, True], ids=["read", "started"])
async def test_a_run_that_cannot_be_finished_says_why_and_nothing_is_written(store, reply, known):
    """No run of that id (for that owner), or one finished already: the statements
    touched nothing, the run is read to say which (whatever path the finish took)."""
    conv = await store.create_conversation(owner="alice")
    run, other = await _start(store, conv.id, owner="alice"), await _start(store, conv.id, owner="alice")
    done = await store.finish_run(run.id, status="failed", owner="alice")
    before = store.snapshot()
    args = {"status": "ok", "reply": reply, "owner": "alice"}
    with pytest.raises(StoreInputError) as info:
        await store.finish_run(run.id, started=run if known else None, **args)
    assert str(info.value) == f"run {run.id!r} is already finished (failed)"
    with pytest.raises(RunNotFound) as missing:
        await store.finish_run(other.id, started=other if known else None, **{**args, "owner": "bob"})
    assert str(missing.value) == f"run {other.id!r} not found for owner 'bob'"
    with pytest.raises(RunNotFound) as missing:
        await store.finish_run("f" * 32, **{**args, "owner": None})
    assert str(missing.value) == f"run {'f' * 32!r} not found"
    assert store.snapshot() == before
    assert (await store.get_run(run.id)) == done.run


async def test_json_checked_once_is_written_as_its_text(store):
    """The turn layer hands over JSON it checked once (CheckedJSON: settings, the
    response, the usage): the run holds its value, the database the same object, and an
    empty object is no settings at all (NULL, read back as {})."""
    from convo._store.inputs import checked_json, checked_json_text

    conv = await store.create_conversation()
    settings = {"budget": 10, "nested": {"a": [1, None, 2.5]}, "é": "ü"}
    run = await _start(store, conv.id, settings=checked_json(settings, "run settings"))
    assert run.settings == settings
    body = b'{"id": "x", "choices": [{"text": "\\u00e9", "index": 0}]}'
    done = await store.finish_run(
        run.id, status="ok", response=checked_json_text(body, "run response"),
        usage=checked_json({"prompt_tokens": 1}, "run usage"),
    )
    assert done.run.response == {"id": "x", "choices": [{"text": "é", "index": 0}]}
    assert done.run.usage == {"prompt_tokens": 1}
    got = await store.get_run(run.id)
    assert got == done.run and got.settings == settings
    if store.backend == "sqlite":  # JSON as text: the answer's own text, byte for byte
        stored = store.sql(f"SELECT response, usage FROM runs WHERE id = '{run.id}'")
        assert tuple(stored[0]) == (body.decode(), '{"prompt_tokens":1}')
        text = '{"budget": 10,  "t": "\\u00e9"}'
        spaced = await _start(store, conv.id, settings=checked_json_text(text, "run settings"))
        assert spaced.settings == {"budget": 10, "t": "é"}
        stored = store.sql(f"SELECT settings FROM runs WHERE id = '{spaced.id}'")
        assert stored[0][0] == text
    empty = await _start(store, conv.id, settings=checked_json({}, "run settings"))
    assert empty.settings == {} == (await store.get_run(empty.id)).settings
    rows = store.sql("SELECT id FROM runs WHERE settings IS NULL")
    assert [r[0] for r in rows] == [empty.id]


async def test_json_objects_json_can_write_are_taken_as_json(store):
    """Settings, metadata-like objects and outcomes given with tuples, int keys or as
    other mappings are stored as the JSON they write (what is read back), and what JSON
    allows but the store does not (a NUL) is still refused, with its place named."""
    import types

    conv = await store.create_conversation()
    settings = {"stop": ("a", "b"), 7: 1.5, "nested": {"t": (1, None)}}
    run = await _start(store, conv.id, settings=settings)
    expected = {"stop": ["a", "b"], "7": 1.5, "nested": {"t": [1, None]}}
    assert run.settings == expected == (await store.get_run(run.id)).settings
    proxy = types.MappingProxyType({"budget": 5})
    done = await store.finish_run(run.id, status="ok", usage=proxy, response={"ids": (1, 2)})
    assert (done.run.usage, done.run.response) == ({"budget": 5}, {"ids": [1, 2]})
    assert await store.get_run(run.id) == done.run
    before = store.snapshot()
    with pytest.raises(StoreInputError) as info:
        await _start(store, conv.id, settings={"stop": ("a\x00",)})
    assert str(info.value) == ("run settings.stop[0] contains a NUL character, which PostgreSQL "
                               "cannot store (refused on every database), at index 1")
    assert store.snapshot() == before


async def test_a_run_reads_back_with_its_own_types(store):
    """stream is a bool (SQLite's driver gives 0 or 1), and a row written without JSON
    objects or kept seqs (an import, an older convo) reads as empty ones, not None."""
    conv = await store.create_conversation()
    streamed, plain = await _start(store, conv.id, stream=True), await _start(store, conv.id)
    await store.finish_run(plain.id, status="failed")
    store.sql("UPDATE runs SET kept_seqs = NULL, settings = NULL, metadata = NULL")
    for run, stream in ((streamed, True), (plain, False)):
        for got in (await store.get_run(run.id), *(await store.list_runs(conv.id, limit=5)).items):
            if got.id == run.id:
                assert got.stream is stream
                assert (got.kept_seqs, got.settings, got.metadata) == ([], {}, {})


async def test_a_run_links_to_runs_by_their_32_character_ids(store):
    """reproduces_id and replays_id take a run id (32 hex digits), and no longer text."""
    conv = await store.create_conversation()
    original = await _start(store, conv.id)
    assert len(original.id) == 32
    again = await _start(store, conv.id, reproduces_id=original.id, replays_id=original.id)
    assert (again.reproduces_id, again.replays_id) == (original.id, original.id)
    assert await store.get_run(again.id) == again


async def test_a_started_run_is_built_as_a_run_read_back(store):
    """start_run's Run holds the fields a read gives, in their order and all set (its repr,
    its fields set and its dict are a read's), not only equal field by field."""
    conv = await store.create_conversation(owner="alice")
    run = await _start(store, conv.id, owner="alice")
    read = await store.get_run(run.id, owner="alice")
    assert list(vars(run)) == list(vars(read)) == list(type(run).model_fields)
    assert run.model_fields_set == read.model_fields_set == set(type(run).model_fields)
    assert repr(run) == repr(read) and run.owner == "alice"


async def test_a_run_for_a_missing_or_hidden_conversation_names_it(store):
    conv = await store.create_conversation(owner="alice")
    before = store.snapshot()
    missing = "0" * 32
    with pytest.raises(ConversationNotFound) as info:
        await _start(store, missing)
    assert str(info.value) == f"conversation '{missing}' not found"
    assert (info.value.conversation_id, info.value.owner) == (missing, None)
    with pytest.raises(ConversationNotFound) as info:
        await _start(store, conv.id, owner="bob")
    assert str(info.value) == f"conversation '{conv.id}' not found for owner 'bob'"
    assert store.snapshot() == before


async def test_a_started_run_of_another_conversation_finishes_nothing(store):
    """finish_run takes the run's conversation from ``started`` (its statements are
    narrowed to it; nothing is read first): a Run with this id but another conversation
    matches no row, so nothing is written, and the run, read after the rollback, is
    still pending, in another conversation than ``started``'s: the error says so (a
    retry would fail the same way), not "try again". With a reply or without, on both
    paths; the right Run then finishes it."""
    conv = await store.create_conversation(owner="alice")
    other = await store.create_conversation(owner="alice")
    run = await _start(store, conv.id, owner="alice")
    wrong = run.model_copy(update={"conversation_id": other.id})
    before = store.snapshot()
    for reply in (None, {"role": "assistant", "content": "x"}):
        with pytest.raises(StoreInputError) as info:
            await store.finish_run(run.id, status="ok", reply=reply, started=wrong, owner="alice")
        assert str(info.value) == (
            f"started is not the Run that start_run returned for run {run.id!r}: its "
            f"conversation is {other.id!r}, the run's is {conv.id!r}; "
            "pass the Run start_run returned (or started=None)"
        )
    assert store.snapshot() == before
    assert await store.get_run(run.id, owner="alice") == run
    done = await store.finish_run(run.id, status="ok", started=run, owner="alice")
    assert (done.run.status, done.run.conversation_id) == ("ok", conv.id)


@pytest.mark.parametrize("started", [False, True])
def test_a_pending_run_the_statements_missed_says_try_again(started):
    """When the statements of finish_run miss a run that is still pending when read
    after the rollback, and ``started`` (if given) names the run's own conversation,
    only a race between the statements explains it: nothing was written, a retry
    may succeed. (A race cannot be made to happen on a real database on demand: the
    plan is driven by hand, the row of the read after the rollback given to it.)"""
    import sqlalchemy as sa

    from convo._store import runs

    cid = "c" * 32
    plan = runs.finish_run(
        "r1", status="ok", reply=None, reply_info=None, reply_key=None, outcome={},
        owner=None, started=None, dialect="sqlite",
    )
    next(plan)  # the UPDATE of the run ...
    assert plan.send(None) is runs.ROLLBACK  # ... matched no row
    read = plan.send(None)
    assert isinstance(read.stmt, sa.Select) and read.params == {"run_id": "r1"}
    row = [None] * len(runs._RUN_COLUMNS)
    row[runs._RUN_COLUMNS.index("id")] = "r1"
    row[runs._RUN_COLUMNS.index("conversation_id")] = cid
    row[runs._STATUS] = "pending"
    mine = runs.Run.model_construct(id="r1", conversation_id=cid) if started else None
    unfinishable = runs._unfinishable("r1", None, mine)
    next(unfinishable)
    with pytest.raises(StoreInputError) as info:
        unfinishable.send(tuple(row))
    assert str(info.value) == "run 'r1' could not be finished; try again"
    with pytest.raises(StoreInputError) as info:
        plan.send(tuple(row))
    assert str(info.value) == "run 'r1' could not be finished; try again"
