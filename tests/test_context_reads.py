"""The opening read of a context build returns what the store holds.

On SQLite that read is a compact statement (8 columns; the columns that are
NULL in a plain text message packed into one JSON array, see
``_store_sql.compact_query``); these tests check that every kind of message
comes back from it exactly as the full-column reads (``tail``, ``pinned``,
``messages``) return it, on both databases, sync and async.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from convo import ContextBuilder, Message, ReplyInfo
from convo._messages import FunctionCall, ImagePart, ImageURL, TextPart, ToolCall
from convo._store import sql
from convo._store.engine import create_engine
from convo._store.store import Store

ENC = "o200k_base"

#: text that JSON quoting must carry through unchanged
AWKWARD = 'quote " backslash \\ slash / tab \t nl \n cr \r bell \x07 é 漢字 😀 \u2028 </script>'


async def _every_kind(store: Any, cid: str) -> None:
    """One message of every shape the store keeps, with awkward text in every field."""
    call = ToolCall(id="call_1", function=FunctionCall(name="lookup", arguments='{"q": "é\\n"}'))
    await store.append(cid, Message.system("Be brief. " + AWKWARD))
    await store.append(
        cid, Message.user("hi " + AWKWARD, name="alice_1", metadata={"k": [1, None, {"x": "é"}],
                                                                     "big": 2**62}),
        idempotency_key="key " + AWKWARD,
    )
    await store.append(cid, Message.user([
        TextPart(text="look " + AWKWARD), ImagePart(image_url=ImageURL(url="https://x.test/a.png")),
    ]))
    await store.append(
        cid, Message.assistant(tool_calls=[call]),
        reply=ReplyInfo(model="gpt-4o", finish_reason="tool_calls",
                        usage={"prompt_tokens": 12, "completion_tokens": 3,
                               "details": {"cached": 0}},
                        system_fingerprint="fp_1", seed=-(2**63)),
    )
    await store.append(cid, Message.tool(AWKWARD, tool_call_id="call_1"))
    await store.append(cid, Message(role="assistant", content=None, refusal="no " + AWKWARD))
    await store.append(cid, Message.user("pin me", metadata={"a": 1}), pinned=True)
    await store.append(cid, Message.assistant("plain " + AWKWARD),
                       reply=ReplyInfo(model="m", seed=2**63 - 1))
    await store.append(cid, Message.user(""))


async def test_the_lean_opening_read_keeps_every_field_a_build_reads(store: Any) -> None:
    """A turn's opening read (``lean``): the same rows, counts and wire fields as the full
    read; on SQLite without timestamps, and a message whose only rare columns are its
    reply info, metadata or key built plain (see ``_store_rows.lean_messages``)."""
    conv = await store.create_conversation()
    await _every_kind(store, conv.id)
    held = await store.messages(conv.id)
    await store.save_token_counts(ENC, {(conv.id, held[1].id): 17})
    fields = ("role", "content", "name", "tool_calls", "refusal", "tool_call_id", "id",
              "conversation_id", "seq", "pinned")

    def view(rows: Any) -> list[Any]:
        return [([getattr(m, f) for f in fields], c) for m, c in rows]

    for limit in (100, 4):
        full = await store._context_open(conv.id, encoding=ENC, limit=limit)
        lean = await store._context_open(conv.id, encoding=ENC, limit=limit, lean=True)
        assert view(lean[0]) == view(full[0]) and view(lean[1]) == view(full[1])
        assert lean[2] == full[2]
    by_seq = {m.seq: m for m, _ in lean[0] + lean[1]}
    if store.backend == "sqlite":
        assert all(m.created_at is None for m in by_seq.values())
        plain = by_seq[8]  # text with reply info: built plain
        assert plain.reply is None and held[7].reply is not None
        assert by_seq[7].metadata == {} and held[6].metadata == {"a": 1}
        # a row with a wire rare column is built whole (its timestamp aside)
        assert by_seq[6].refusal is not None
    else:
        assert by_seq == {m.seq: m for m in held if m.seq in by_seq}


async def test_the_opening_read_returns_every_kind_of_message_as_stored(store: Any) -> None:
    conv = await store.create_conversation()
    await _every_kind(store, conv.id)
    held = await store.messages(conv.id)
    await store.save_token_counts(ENC, {(conv.id, held[1].id): 17})
    tail = await store.tail(conv.id, encoding=ENC, limit=100)
    pinned = await store.pinned(conv.id, encoding=ENC)
    for limit in (100, 4):
        got_pinned, got_page = await store.context_start(conv.id, encoding=ENC, limit=limit)
        assert got_page == tail[:limit]
        assert got_pinned == pinned
    assert [m for m, _ in tail] == held[::-1]
    assert [m.seq for m, _ in pinned] == [1, 7]
    assert {m.seq: c for m, c in tail}[2] == 17
    # as of a past message: the same rows, the newer ones left out
    got_pinned, got_page = await store.context_start(conv.id, encoding=ENC, limit=3, before=7)
    assert got_page == [(m, c) for m, c in tail if m.seq < 7][:3]
    assert got_pinned == pinned[:1]


def test_sqlite_builds_open_with_the_compact_read(make_db: Any) -> None:
    """The statement a SQLite build opens with is the compact one (8 columns)."""
    with Store(make_db("sqlite")) as store:
        conv = store.create_conversation()
        store.append_many(conv.id, [Message.system("s"), Message.user("u")])
        seen: list[str] = []
        sa.event.listen(store.engine, "before_cursor_execute",
                        lambda *args: seen.append(str(args[2])))
        ContextBuilder(store, model="gpt-4o-mini", budget=500).build(conv.id)
        compact = store.engine.dialect.statement_compiler(
            store.engine.dialect, sql.compact_query(False)).string
        assert seen[0] == compact  # (then the token counts it made are stored)


def test_an_engines_own_json_deserializer_still_decodes_what_a_build_reads(tmp_path: Any) -> None:
    """With an engine's own ``json_deserializer`` (which the compact read, decoding the
    JSON it packs itself, would bypass), the build reads the full columns."""
    decoded: list[str] = []

    def deserialize(text: str) -> Any:
        decoded.append(text)
        return json.loads(text)

    engine = create_engine(f"sqlite:///{tmp_path / 'own.db'}", json_deserializer=deserialize)
    with Store(engine) as store:
        store.migrate()
        conv = store.create_conversation()
        store.append(conv.id, Message.user("u", metadata={"who": "me"}))
        decoded.clear()
        _pinned, page = store.context_start(conv.id, encoding=ENC, limit=5)
        assert page[0][0].metadata == {"who": "me"}
        assert decoded == ['{"who":"me"}'] or decoded == ['{"who": "me"}']
    engine.dispose()


def test_compact_rows_of_messages_with_only_nulls_are_plain(make_db: Any) -> None:
    """A plain text message has no packed column (NULL): the rows read need no JSON."""
    with Store(make_db("sqlite")) as store:
        conv = store.create_conversation()
        store.append_many(conv.id, [Message.user("a"), Message.assistant("b", name="n")])
        compiled = sql.compact_query(False).compile(dialect=store.engine.dialect)
        values = compiled.construct_params({"encoding": ENC, "cid": conv.id, "limit": 10})
        assert compiled.positiontup is not None
        with store.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                compiled.string, tuple(values[name] for name in compiled.positiontup)
            ).all()
        by_seq = {r[1]: r for r in rows if r[4] != sql.COMPACT_CONVERSATION}
        assert by_seq[1][7] is None
        assert json.loads(by_seq[2][7])[1] == "n"


def test_timestamps_stored_in_another_form_read_as_the_full_columns_read_them(
    make_db: Any,
) -> None:
    """created_at text that is not convo's own form (written by another tool: a 'T',
    no seconds) reads the same on the compact read as on the full columns."""
    with Store(make_db("sqlite")) as store:
        conv = store.create_conversation()
        store.append_many(conv.id, [Message.user("a"), Message.assistant("b")])
        with store.engine.begin() as conn:
            conn.exec_driver_sql(
                "UPDATE messages SET created_at = '2026-01-02T03:04:05.5' WHERE seq = 1")
            conn.exec_driver_sql(
                "UPDATE messages SET created_at = '2026-01-02 03:04' WHERE seq = 2")
        _pinned, page = store.context_start(conv.id, encoding=ENC, limit=5)
        assert page == store.tail(conv.id, encoding=ENC)
        assert [m.created_at.isoformat() for m, _ in page] == [
            "2026-01-02T03:04:00+00:00", "2026-01-02T03:04:05.500000+00:00"]
