"""Hostile inputs to the store, the context builder and the command line.

Each case feeds one bad input and asserts two things:

* a typed convo error (the store and builder: the exact class; the CLI: exit
  status 1 or 2, ``error: ...`` or typer's usage message, never a traceback);
* the database is unchanged: every table's row count and full row contents,
  hashed before and after (:func:`db_digest`).

Store cases run on SQLite and PostgreSQL, through the sync and the async store
(the ``store`` fixture), against a seeded database (a conversation with a tool
round, a fork, a summary and token counts), so a case that slipped past the
checks would have something to damage.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import StoreHandle
from typer.testing import CliRunner

from convo import (
    AsyncContextBuilder,
    ConfigurationError,
    ContextBuilder,
    ContextOverflowError,
    ConversationNotFound,
    ConvoError,
    EncodingUnavailableError,
    ForkConflictError,
    InvalidMessageError,
    MessageNotFound,
    ReplyInfo,
    StoreInputError,
    TemplateError,
    UnknownModelError,
)
from convo._store.async_store import AsyncStore
from convo._store.store import Store
from convo.cli import app

NAN, INF = math.nan, math.inf
NUL, LONE = "a\x00b", "a\ud800b"


# --- the database, hashed -------------------------------------------------------------------


@functools.cache
def _engine(url: str) -> sa.Engine:
    return sa.create_engine(url, poolclass=sa.NullPool)  # NullPool: nothing stays open


def db_digest(url: sa.URL) -> dict[str, tuple[int, str]]:
    """Per table (all of them, whatever the schema grows): row count and a hash of every row."""
    with _engine(url.render_as_string(hide_password=False)).connect() as conn:
        out = {}
        for table in sorted(sa.inspect(conn).get_table_names()):
            rows = conn.execute(sa.text(f'SELECT * FROM "{table}"')).all()
            digest = hashlib.sha256()
            for row in sorted(repr(tuple(r)) for r in rows):
                digest.update(row.encode("utf-8", "backslashreplace"))
            out[table] = (len(rows), digest.hexdigest())
        return out


@dataclass
class Seed:
    cid: str  # owner "ann": system, user, assistant with a tool call, tool result, user
    fork: str  # a fork of cid at 3
    ids: list[int]


async def seed(store: Any) -> Seed:
    conv = await store.create_conversation(title="seed", owner="ann", metadata={"tier": 1})
    msgs = await store.append_many(conv.id, [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?", "metadata": {"lang": "en"}},
        {"role": "assistant", "tool_calls": [
            {"id": "call_1", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
        ]},
        {"role": "tool", "content": "18C", "tool_call_id": "call_1"},
        {"role": "user", "content": "Thanks"},
    ], owner="ann")
    fork = await store.fork(conv.id, at=3, owner="ann")
    await store.add_summary(conv.id, start_seq=2, end_seq=3, content="asked weather", owner="ann")
    await store.save_token_counts("o200k_base", {m.id: 4 for m in msgs})
    return Seed(conv.id, fork.id, [m.id for m in msgs])


def _cursor(value: Any) -> str:
    raw = json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def tool_call(name: str = "f", arguments: str = "{}", id_: str = "call_9") -> dict[str, Any]:
    return {"role": "assistant", "tool_calls": [{"id": id_, "function": {"name": name, "arguments": arguments}}]}


async def drain_pages(store: Any, cid: str, **kw: Any) -> list[Any]:
    return [m async for m in store.iter_messages(cid, **kw)]


Case = Callable[[Any, Seed], Awaitable[Any]]

# (id, call, expected error). Grouped by the issue's items: 7 JSON, 8 integers, 9 text
# and cursors, then neighbours (types, ranges, lineage).
STORE_CASES: list[tuple[str, Case, type[ConvoError]]] = [
    # 7: NaN / Infinity (and other non-JSON) in every JSON field
    ("create-meta-nan", lambda st, s: st.create_conversation(metadata={"x": NAN}), StoreInputError),
    ("create-meta-inf", lambda st, s: st.create_conversation(metadata={"x": INF}), StoreInputError),
    ("create-meta-neg-inf-nested", lambda st, s: st.create_conversation(metadata={"a": [{"b": -INF}]}), StoreInputError),
    ("update-meta-nan", lambda st, s: st.update_conversation(s.cid, metadata={"x": NAN}), StoreInputError),
    ("fork-meta-inf", lambda st, s: st.fork(s.cid, metadata={"x": INF}), StoreInputError),
    ("append-msg-meta-nan", lambda st, s: st.append(s.cid, {"role": "user", "content": "x", "metadata": {"s": NAN}}), StoreInputError),
    ("append-usage-inf", lambda st, s: st.append(s.cid, {"role": "assistant", "content": "x"}, reply=ReplyInfo(usage={"prompt_tokens": INF})), StoreInputError),
    ("summary-meta-nan", lambda st, s: st.add_summary(s.cid, start_seq=1, end_seq=2, content="s", metadata={"x": NAN}), StoreInputError),
    ("append-many-one-nan", lambda st, s: st.append_many(s.cid, [{"role": "user", "content": "ok"}, {"role": "user", "content": "x", "metadata": {"n": NAN}}]), StoreInputError),
    ("filter-nan", lambda st, s: st.list_conversations(metadata={"x": NAN}), StoreInputError),
    ("filter-inf-nested", lambda st, s: st.list_conversations(metadata={"x": [INF]}), StoreInputError),
    ("meta-int-beyond-64-bits", lambda st, s: st.create_conversation(metadata={"n": 2**64}), StoreInputError),
    ("filter-int-beyond-64-bits", lambda st, s: st.list_conversations(metadata={"n": -(2**70)}), StoreInputError),
    ("meta-set", lambda st, s: st.create_conversation(metadata={"x": {1, 2}}), StoreInputError),
    ("meta-int-key", lambda st, s: st.create_conversation(metadata={1: "x"}), StoreInputError),
    ("meta-nested-101", lambda st, s: st.create_conversation(metadata={"x": deep(101)}), StoreInputError),
    ("meta-datetime", lambda st, s: st.update_conversation(s.cid, metadata={"at": datetime.now(UTC)}), StoreInputError),
    ("meta-tuple", lambda st, s: st.create_conversation(metadata={"x": (1, 2)}), StoreInputError),
    ("meta-not-a-dict", lambda st, s: st.create_conversation(metadata=[("a", 1)]), StoreInputError),
    ("meta-bytes", lambda st, s: st.add_summary(s.cid, start_seq=1, end_seq=1, content="s", metadata={"b": b"x"}), StoreInputError),
    # 8: integers only (no bool, no float, no str), within 64 bits, on every seq / limit
    ("fork-at-float", lambda st, s: st.fork(s.cid, at=1.5), StoreInputError),
    ("fork-at-bool", lambda st, s: st.fork(s.cid, at=True), StoreInputError),
    ("fork-at-str", lambda st, s: st.fork(s.cid, at="2"), StoreInputError),
    ("fork-at-huge", lambda st, s: st.fork(s.cid, at=2**70), StoreInputError),
    ("fork-at-negative", lambda st, s: st.fork(s.cid, at=-1), MessageNotFound),
    ("messages-after-float", lambda st, s: st.messages(s.cid, after=1.5), StoreInputError),
    ("messages-before-bool", lambda st, s: st.messages(s.cid, before=True), StoreInputError),
    ("messages-limit-float", lambda st, s: st.messages(s.cid, limit=2.0), StoreInputError),
    ("messages-limit-zero", lambda st, s: st.messages(s.cid, limit=0), StoreInputError),
    ("messages-limit-huge", lambda st, s: st.messages(s.cid, limit=2**70), StoreInputError),
    ("list-limit-huge", lambda st, s: st.list_conversations(limit=2**70), StoreInputError),
    ("list-limit-bool", lambda st, s: st.list_conversations(limit=True), StoreInputError),
    ("list-limit-negative", lambda st, s: st.list_conversations(limit=-1), StoreInputError),
    ("get-message-float", lambda st, s: st.get_message(s.cid, 1.0), StoreInputError),
    ("get-message-none", lambda st, s: st.get_message(s.cid, None), StoreInputError),
    ("set-pinned-seq-bool", lambda st, s: st.set_pinned(s.cid, True, True), StoreInputError),
    ("set-pinned-value-str", lambda st, s: st.set_pinned(s.cid, 2, "yes"), StoreInputError),
    ("summary-start-float", lambda st, s: st.add_summary(s.cid, start_seq=1.5, end_seq=2, content="s"), StoreInputError),
    ("summary-end-bool", lambda st, s: st.add_summary(s.cid, start_seq=1, end_seq=True, content="s"), StoreInputError),
    ("latest-summary-up-to-float", lambda st, s: st.latest_summary(s.cid, up_to_seq=2.5), StoreInputError),
    ("tail-limit-float", lambda st, s: st.tail(s.cid, encoding="o200k_base", limit=1.5), StoreInputError),
    ("tail-before-huge", lambda st, s: st.tail(s.cid, encoding="o200k_base", before=2**64), StoreInputError),
    ("context-start-limit-zero", lambda st, s: st.context_start(s.cid, encoding="o200k_base", limit=0), StoreInputError),
    ("search-limit-huge", lambda st, s: st.search("x", limit=2**70), StoreInputError),
    ("iter-page-size-zero", lambda st, s: drain_pages(st, s.cid, page_size=0), StoreInputError),
    ("iter-after-str", lambda st, s: drain_pages(st, s.cid, after="1"), StoreInputError),
    ("token-count-negative", lambda st, s: st.save_token_counts("cl100k_base", {s.ids[0]: -1}), StoreInputError),
    ("token-count-float", lambda st, s: st.save_token_counts("cl100k_base", {s.ids[0]: 1.5}), StoreInputError),
    ("token-count-beyond-int32", lambda st, s: st.save_token_counts("cl100k_base", {s.ids[0]: 2**40}), StoreInputError),
    ("token-count-id-str", lambda st, s: st.save_token_counts("cl100k_base", {"1": 3}), StoreInputError),
    ("token-counts-not-a-mapping", lambda st, s: st.save_token_counts("cl100k_base", [(1, 3)]), StoreInputError),
    ("reply-seed-huge", lambda st, s: st.append(s.cid, {"role": "assistant", "content": "x"}, reply=ReplyInfo(seed=2**70)), StoreInputError),
    # 9: NUL and lone surrogates in every text field, same on both databases
    ("content-nul", lambda st, s: st.append(s.cid, {"role": "user", "content": NUL}), StoreInputError),
    ("content-surrogate", lambda st, s: st.append(s.cid, {"role": "user", "content": LONE}), StoreInputError),
    ("name-nul", lambda st, s: st.append(s.cid, {"role": "user", "content": "x", "name": NUL}), StoreInputError),
    ("tool-call-id-surrogate", lambda st, s: st.append(s.cid, {"role": "tool", "content": "x", "tool_call_id": LONE}), StoreInputError),
    ("tool-arguments-nul", lambda st, s: st.append(s.cid, tool_call(arguments='{"a": "' + NUL + '"}')), StoreInputError),
    ("tool-name-surrogate", lambda st, s: st.append(s.cid, tool_call(name=LONE)), StoreInputError),
    ("tool-call-id-in-call-nul", lambda st, s: st.append(s.cid, tool_call(id_=NUL)), StoreInputError),
    ("refusal-nul", lambda st, s: st.append(s.cid, {"role": "assistant", "refusal": NUL}), StoreInputError),
    ("text-part-nul", lambda st, s: st.append(s.cid, {"role": "user", "content": [{"type": "text", "text": NUL}]}), StoreInputError),
    ("image-url-surrogate", lambda st, s: st.append(s.cid, {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/" + LONE}}]}), StoreInputError),
    ("idempotency-key-nul", lambda st, s: st.append(s.cid, {"role": "user", "content": "x"}, idempotency_key=NUL), StoreInputError),
    ("metadata-key-nul", lambda st, s: st.append(s.cid, {"role": "user", "content": "x", "metadata": {NUL: 1}}), StoreInputError),
    ("metadata-value-surrogate", lambda st, s: st.update_conversation(s.cid, metadata={"k": LONE}), StoreInputError),
    ("title-nul", lambda st, s: st.create_conversation(title=NUL), StoreInputError),
    ("title-surrogate", lambda st, s: st.create_conversation(title=LONE), StoreInputError),
    ("owner-nul", lambda st, s: st.create_conversation(owner=NUL), StoreInputError),
    ("update-title-surrogate", lambda st, s: st.update_conversation(s.cid, title=LONE), StoreInputError),
    ("fork-title-nul", lambda st, s: st.fork(s.cid, title=NUL), StoreInputError),
    ("summary-content-nul", lambda st, s: st.add_summary(s.cid, start_seq=1, end_seq=2, content=NUL), StoreInputError),
    ("summary-content-surrogate", lambda st, s: st.add_summary(s.cid, start_seq=1, end_seq=2, content=LONE), StoreInputError),
    ("get-conversation-id-nul", lambda st, s: st.get_conversation(NUL), StoreInputError),
    ("search-nul", lambda st, s: st.search(NUL), StoreInputError),
    ("search-surrogate", lambda st, s: st.search(LONE), StoreInputError),
    ("search-over-50kb", lambda st, s: st.search("a%_" * 17_000), StoreInputError),
    ("list-owner-nul", lambda st, s: st.list_conversations(owner=NUL), StoreInputError),
    ("token-encoding-nul", lambda st, s: st.save_token_counts(NUL, {s.ids[0]: 1}), StoreInputError),
    ("token-encoding-over-64", lambda st, s: st.save_token_counts("e" * 65, {s.ids[0]: 1}), StoreInputError),
    ("reply-model-nul", lambda st, s: st.append(s.cid, {"role": "assistant", "content": "x"}, reply=ReplyInfo(model=NUL)), StoreInputError),
    ("append-many-one-surrogate", lambda st, s: st.append_many(s.cid, [{"role": "user", "content": "fine"}, {"role": "user", "content": LONE}]), StoreInputError),
    ("set-pinned-owner-surrogate", lambda st, s: st.set_pinned(s.cid, 2, True, owner=LONE), StoreInputError),
    # 9: crafted list cursors
    ("cursor-garbage", lambda st, s: st.list_conversations(cursor="!!not base64!!"), StoreInputError),
    ("cursor-not-json", lambda st, s: st.list_conversations(cursor=base64.urlsafe_b64encode(b"\xff\xfe{").decode()), StoreInputError),
    ("cursor-date-out-of-range", lambda st, s: st.list_conversations(cursor=_cursor(["0001-01-01T00:00:00+01:00", "0" * 32])), StoreInputError),
    ("cursor-id-nul", lambda st, s: st.list_conversations(cursor=_cursor(["2020-01-01T00:00:00+00:00", "a\x00"])), StoreInputError),
    ("cursor-naive-stamp", lambda st, s: st.list_conversations(cursor=_cursor(["2020-01-01T00:00:00", "0" * 32])), StoreInputError),
    ("cursor-10kb", lambda st, s: st.list_conversations(cursor="A" * 10_000), StoreInputError),
    ("cursor-int", lambda st, s: st.list_conversations(cursor=12345), StoreInputError),
    ("cursor-nested-json", lambda st, s: st.list_conversations(cursor=_cursor(deep(40))), StoreInputError),
    ("cursor-three-fields", lambda st, s: st.list_conversations(cursor=_cursor(["2020-01-01T00:00:00+00:00", "0" * 32, 1])), StoreInputError),
    # neighbours: wrong types and ranges anywhere else
    ("message-is-a-str", lambda st, s: st.append(s.cid, "hello"), InvalidMessageError),
    ("message-is-none", lambda st, s: st.append(s.cid, None), InvalidMessageError),
    ("messages-is-a-dict", lambda st, s: st.append_many(s.cid, {"role": "user", "content": "x"}), InvalidMessageError),
    ("messages-is-a-str", lambda st, s: st.append_many(s.cid, "hello"), InvalidMessageError),
    ("append-pinned-str", lambda st, s: st.append(s.cid, {"role": "user", "content": "x"}, pinned="yes"), StoreInputError),
    ("append-reply-str", lambda st, s: st.append(s.cid, {"role": "assistant", "content": "x"}, reply="gpt-4o"), StoreInputError),
    ("append-reply-bad-dict", lambda st, s: st.append(s.cid, {"role": "assistant", "content": "x"}, reply={"seed": "x"}), StoreInputError),
    ("list-created-after-str", lambda st, s: st.list_conversations(created_after="2020-01-01"), StoreInputError),
    ("list-updated-before-overflow", lambda st, s: st.list_conversations(updated_before=datetime.min.replace(tzinfo=timezone(timedelta(hours=1)))), StoreInputError),
    ("delete-cascade-str", lambda st, s: st.delete_conversation(s.cid, cascade_forks="no"), StoreInputError),
    ("messages-newest-first-none", lambda st, s: st.messages(s.cid, newest_first=None), StoreInputError),
    ("create-owner-256", lambda st, s: st.create_conversation(owner="o" * 256), StoreInputError),
    ("conversation-id-int", lambda st, s: st.get_conversation(12345), StoreInputError),
    ("update-title-int", lambda st, s: st.update_conversation(s.cid, title=5), StoreInputError),
    ("summary-content-int", lambda st, s: st.add_summary(s.cid, start_seq=1, end_seq=2, content=5), StoreInputError),
    ("summary-beyond-last", lambda st, s: st.add_summary(s.cid, start_seq=1, end_seq=99, content="s"), StoreInputError),
    ("pin-inherited-in-fork", lambda st, s: st.set_pinned(s.fork, 2, True), ForkConflictError),
    ("pin-a-tool-result", lambda st, s: st.set_pinned(s.cid, 4, True), StoreInputError),
    ("delete-parent-of-fork", lambda st, s: st.delete_conversation(s.cid), ForkConflictError),
    ("other-owner", lambda st, s: st.append(s.cid, {"role": "user", "content": "x"}, owner="mallory"), ConversationNotFound),
]


def fresh_db(request: pytest.FixtureRequest, backend: str, name: str) -> sa.URL:
    """A migrated database that lives as long as the requesting (module-scoped) fixture.

    The hostile cases share one seeded database per backend: each asserts it
    left the database unchanged, so the next one starts from the same state.
    """
    if backend == "sqlite":
        template = request.getfixturevalue("sqlite_template")
        path = request.getfixturevalue("tmp_path_factory").mktemp(name) / "store.db"
        shutil.copyfile(template, path)
        return sa.make_url(f"sqlite:///{path}")
    cluster = request.getfixturevalue("pg_cluster")
    url = cluster.create()
    request.addfinalizer(lambda: cluster.drop(url))
    return url


@pytest.fixture(
    scope="module",
    params=[(b, m) for b in ("sqlite", "postgresql") for m in ("sync", "async")],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
async def seeded(request: pytest.FixtureRequest) -> Any:
    backend, mode = request.param
    url = fresh_db(request, backend, "hostile-store")
    handle = StoreHandle(Store(url) if mode == "sync" else AsyncStore(url), backend, url)
    s = await seed(handle)
    yield handle, s
    await handle.aclose()


@pytest.mark.parametrize("call, expected", [pytest.param(c, e, id=i) for i, c, e in STORE_CASES])
async def test_store_refuses_hostile_input_and_changes_nothing(seeded, call, expected):
    store, s = seeded
    before = db_digest(store.url)
    with pytest.raises(ConvoError) as raised:
        await call(store, s)
    assert type(raised.value) is expected, raised.value
    assert db_digest(store.url) == before
    # and the store still works for everyone afterwards (nothing poisoned)
    assert [c.id for c in (await store.list_conversations(metadata={"tier": 1})).items] == [s.cid]
    assert len(await store.messages(s.cid)) == 5


# --- the context builder -----------------------------------------------------------------------

BUILDER_CASES: list[tuple[str, dict[str, Any], dict[str, Any], type[ConvoError]]] = [
    # (id, builder options, build() arguments, expected error)
    ("budget-float", {"budget": 100.5}, {}, ConfigurationError),
    ("budget-bool", {"budget": True}, {}, ConfigurationError),
    ("budget-str", {"budget": "100"}, {}, ConfigurationError),
    ("budget-beyond-64-bits", {"budget": 2**70}, {}, ConfigurationError),
    ("budget-negative", {"budget": -1}, {}, ContextOverflowError),
    ("reserve-float", {"reserve": 0.5}, {}, ConfigurationError),
    ("margin-negative", {"margin": -1}, {}, ConfigurationError),
    ("max-messages-zero", {"max_messages": 0}, {}, ConfigurationError),
    ("max-messages-float", {"max_messages": 1.5}, {}, ConfigurationError),
    ("max-history-negative", {"max_history_tokens": -3}, {}, ConfigurationError),
    ("truncate-unknown", {"truncate": "sideways"}, {}, ConfigurationError),
    ("summary-role-tool", {"summary_role": "tool"}, {}, ConfigurationError),
    ("summary-max-negative", {"summary_max_tokens": -1}, {}, ConfigurationError),
    ("page-size-negative", {"page_size": -1}, {}, ConfigurationError),
    ("model-empty", {"model": ""}, {}, ConfigurationError),
    ("model-int", {"model": 5}, {}, ConfigurationError),
    ("model-unknown", {"model": "llama-3-8b"}, {}, UnknownModelError),
    ("mode-unknown", {"mode": "edit"}, {}, ConfigurationError),
    ("encoding-unknown", {"encoding": "nope"}, {}, EncodingUnavailableError),
    ("template-missing", {"mode": "completion", "template": "/no/such/template.jinja"}, {}, TemplateError),
    ("template-int", {"mode": "completion", "template": 5}, {}, ConfigurationError),
    ("template-in-chat-mode", {"template": "chatml"}, {}, ConfigurationError),
    ("conversation-id-nul", {}, {"conversation_id": NUL}, StoreInputError),
    ("conversation-id-int", {}, {"conversation_id": 7}, StoreInputError),
    ("conversation-missing", {}, {"conversation_id": "0" * 32}, ConversationNotFound),
    ("owner-surrogate", {}, {"owner": LONE}, StoreInputError),
    ("owner-other", {}, {"owner": "mallory"}, ConversationNotFound),
    ("response-format-str", {}, {"response_format": "json"}, ConfigurationError),
    ("tools-str", {}, {"tools": "weather"}, ConfigurationError),
    ("budget-too-small", {"budget": 5}, {}, ContextOverflowError),
]


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(
    "options, build_args, expected", [pytest.param(o, b, e, id=i) for i, o, b, e in BUILDER_CASES]
)
async def test_builder_refuses_hostile_input_and_changes_nothing(
    db_url, mode, options, build_args, expected
):
    with Store(db_url) as sync_store:
        conv = sync_store.create_conversation(owner="ann")
        sync_store.append_many(conv.id, [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello there, how are you today?"},
        ], owner="ann")
    before = db_digest(db_url)
    kw = {"model": "gpt-4o-mini", **options}
    args = {"conversation_id": conv.id, "owner": "ann", **build_args}
    cid = args.pop("conversation_id")
    with pytest.raises(ConvoError) as raised:
        if mode == "sync":
            with Store(db_url) as st:
                ContextBuilder(st, **kw).build(cid, **args)
        else:
            ast = AsyncStore(db_url)
            try:
                await AsyncContextBuilder(ast, **kw).build(cid, **args)
            finally:
                await ast.close()
    assert type(raised.value) is expected, raised.value
    assert db_digest(db_url) == before


# --- the command line ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def cli_db(request: pytest.FixtureRequest) -> tuple[str, str, Path]:
    """A migrated database with one conversation: (URL, conversation id, a work directory)."""
    url = fresh_db(request, request.param, "hostile-cli")
    with Store(url) as st:
        conv = st.create_conversation(title="t", owner="ann")
        st.append_many(conv.id, [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}])
    work = request.getfixturevalue("tmp_path_factory").mktemp("hostile-cli-files")
    (work / "bad-utf8.json").write_bytes(b'[{"role": "user", "content": "\xff\xfe"}]')
    (work / "malformed.json").write_text('[{"role": "user", "content": "unterminated')
    (work / "not-a-list.json").write_text('{"role": "user"}')
    (work / "ok.json").write_text('[{"role": "user", "content": "hi"}]')
    (work / "tools-nan.json").write_text('[{"type": "function", "function": NaN}]')
    (work / "tools-object.json").write_text('{"type": "function"}')
    (work / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    return url.render_as_string(hide_password=False), conv.id, work


ID = "{id}"  # replaced by the seeded conversation's id
W = "{work}"  # replaced by the work directory
CLI_CASES: list[tuple[str, list[str]]] = [
    ("new-meta-nan", ["new", "--meta", "x=NaN"]),
    ("new-meta-infinity", ["new", "--meta", "x=1e999"]),
    ("new-title-nul", ["new", "--title", "a\x00b"]),
    ("new-owner-long", ["new", "--owner", "o" * 300]),
    ("new-meta-no-key", ["new", "--meta", "=1"]),
    ("ls-limit-huge", ["ls", "--limit", "99999999999999999999"]),
    ("ls-limit-zero", ["ls", "--limit", "0"]),
    ("ls-limit-float", ["ls", "--limit", "1.5"]),
    ("ls-cursor-garbage", ["ls", "--cursor", "!!!"]),
    ("ls-cursor-crafted", ["ls", "--cursor", _cursor(["0001-01-01T00:00:00+01:00", "0" * 32])]),
    ("ls-cursor-long", ["ls", "--cursor", "A" * 5000]),
    ("ls-meta-infinity", ["ls", "--meta", "x=-Infinity"]),
    ("show-missing", ["show", "0" * 32]),
    ("show-last-zero", ["show", ID, "--last", "0"]),
    ("show-last-huge", ["show", ID, "--last", "99999999999999999999"]),
    ("show-id-nul", ["show", "a\x00"]),
    ("add-undecodable-bytes", ["add", ID, "caf\udce9"]),  # argv bytes b"caf\xe9", surrogate-escaped
    ("add-role-robot", ["add", ID, "--role", "robot", "x"]),
    ("add-name-nul", ["add", ID, "--name", "a\x00", "x"]),
    ("add-key-long", ["add", ID, "--idempotency-key", "k" * 300, "x"]),
    ("add-missing-conversation", ["add", "0" * 32, "x"]),
    ("add-tool-without-id", ["add", ID, "--role", "tool", "x"]),
    ("fork-at-huge", ["fork", ID, "--at", "99999999999999999999"]),
    ("fork-at-negative", ["fork", ID, "--at", "-1"]),
    ("fork-at-float", ["fork", ID, "--at", "1.5"]),
    ("search-over-50kb", ["search", "x" * 60_000]),
    ("search-nul", ["search", "a\x00"]),
    ("search-limit-zero", ["search", "x", "--limit", "0"]),
    ("context-unknown-model", ["context", ID, "--model", "llama-3-8b"]),
    ("context-mode", ["context", ID, "--model", "gpt-4o", "--mode", "edit"]),
    ("context-template-missing", ["context", ID, "--model", "gpt-4o", "--mode", "completion", "--template", "/no/such.jinja"]),
    ("context-encoding-unknown", ["context", ID, "--model", "gpt-4o", "--encoding", "nope"]),
    ("context-budget-tiny", ["context", ID, "--model", "gpt-4o", "--budget", "2"]),
    ("tokens-malformed-json", ["tokens", f"{W}/malformed.json", "--model", "gpt-4o"]),
    ("tokens-not-utf8", ["tokens", f"{W}/bad-utf8.json", "--model", "gpt-4o"]),
    ("tokens-not-a-list", ["tokens", f"{W}/not-a-list.json", "--model", "gpt-4o"]),
    ("tokens-nested-100k", ["tokens", f"{W}/deep.json", "--model", "gpt-4o"]),
    ("tokens-missing-file", ["tokens", f"{W}/nope.json", "--model", "gpt-4o"]),
    ("tokens-a-directory", ["tokens", W, "--model", "gpt-4o"]),
    ("tokens-tools-malformed", ["tokens", f"{W}/ok.json", "--model", "gpt-4o", "--tools", f"{W}/tools-nan.json"]),
    ("tokens-tools-not-a-list", ["tokens", f"{W}/ok.json", "--model", "gpt-4o", "--tools", f"{W}/tools-object.json"]),
    ("tokens-unknown-model", ["tokens", f"{W}/ok.json", "--model", "llama-3-8b"]),
    ("complete-bad-base-url", ["complete", "--model", "m", "--base-url", "http://[::1/v1", "hi"]),
    ("complete-mode", ["complete", "--model", "m", "--mode", "edit", "hi"]),
    ("complete-refused", ["complete", "--model", "m", "--base-url", "http://127.0.0.1:{port}/v1", "hi"]),
    ("serve-fake-port-99999", ["serve-fake", "--port", "99999"]),
    ("serve-fake-port-negative", ["serve-fake", "--port", "-1"]),
    ("serve-fake-unknown-host", ["serve-fake", "--host", "nosuchhost.invalid", "--port", "0"]),
    ("unknown-command", ["frobnicate"]),
]


@pytest.mark.parametrize("args", [pytest.param(a, id=i) for i, a in CLI_CASES])
def test_cli_answers_hostile_arguments_with_an_error_line(cli_db, args, monkeypatch):
    db, cid, work = cli_db
    monkeypatch.setenv("OPENAI_API_KEY", "sk-hostile-test")
    port = _free_port()
    argv = [a.replace(ID, cid).replace(W, str(work)).replace("{port}", str(port)) for a in args]
    before = db_digest(sa.make_url(db))
    result = CliRunner().invoke(app, ["--db", db, *argv])
    out = result.output
    assert result.exit_code in (1, 2), out
    # typer reports usage errors itself (exit 2); everything else is one error line
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in out
    if result.exit_code == 1:
        assert result.stderr.startswith("error: "), out
    assert "sk-hostile-test" not in out
    assert db_digest(sa.make_url(db)) == before


@pytest.mark.parametrize(
    "args",
    [
        ["ls", "--limit", "99999999999999999999"],
        ["complete", "--model", "m", "--base-url", "http://[::1/v1", "hi"],
        ["serve-fake", "--host", "nosuchhost.invalid", "--port", "0"],
    ],
    ids=["ls-limit", "bad-base-url", "unknown-host"],
)
def test_cli_in_a_real_process_prints_no_traceback(args, make_db, tmp_path):
    # the installed entry point, as a user runs it: what reaches the terminal
    db = make_db("sqlite").render_as_string(hide_password=False)
    proc = subprocess.run(
        [sys.executable, "-c", "from convo.cli import main; main()", "--db", db, *args],
        capture_output=True, text=True, timeout=120, check=False,
        env={"PATH": "/usr/bin:/bin", "OPENAI_API_KEY": "x", "HOME": str(tmp_path)},
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, shlex.quote(proc.stderr)

