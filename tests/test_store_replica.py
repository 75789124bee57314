"""Read replicas: search, export and replay read the store's ``read_url``; turns stay on the primary.

On PostgreSQL the replica is real: a hot standby streaming from the session's
pgserver (conftest ``pg_replica``), paused (``pg_wal_replay_pause``) when a test
needs it to lag. What only the primary holds then proves which database a
reader used. The read engine's own guards (read-only at the database, schema
check, typed errors) are checked on both databases with a second engine on the
same database, and the CLI flags with a SQLite copy standing in for a replica.
"""

from __future__ import annotations

import inspect
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import PgCluster, PgReplica
from typer.testing import CliRunner

from convo import (
    Arm,
    AsyncChat,
    AsyncOpenAIClient,
    AsyncReplayer,
    AsyncStore,
    Chat,
    ConfigurationError,
    Message,
    NotMigratedError,
    OpenAIClient,
    ReadOnlyStoreError,
    Replayer,
    Store,
    export_conversations,
    export_conversations_async,
)
from convo._store.store import database_error
from convo.cli import app
from convo.testing import FakeBackend

KINDS = ["sync", "async"]
WRITES = {"INSERT", "UPDATE", "DELETE"}


async def call(obj: Any, name: str, *args: Any, **kwargs: Any) -> Any:
    value = getattr(obj, name)(*args, **kwargs)
    return await value if inspect.isawaitable(value) else value


def open_store(kind: str, url: Any, **kwargs: Any) -> Store | AsyncStore:
    return Store(url, **kwargs) if kind == "sync" else AsyncStore(url, **kwargs)


def sync_engine(store: Store | AsyncStore) -> sa.Engine:
    engine = store.engine
    return engine if isinstance(engine, sa.Engine) else engine.sync_engine


class Statements:
    """The statements an engine executes (engine events: the engine that ran them)."""

    def __init__(self, store: Store | AsyncStore) -> None:
        self.engine = sync_engine(store)
        self.seen: list[str] = []
        sa.event.listen(self.engine, "before_cursor_execute", self._record)

    def _record(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.seen.append(statement.lstrip().split(None, 1)[0].upper())

    def close(self) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self._record)


async def export_ids(store: Store | AsyncStore) -> dict[str, int]:
    """Conversation id -> own messages, of a native export of ``store``."""
    out = io.StringIO()
    if isinstance(store, AsyncStore):
        await export_conversations_async(store, out)
    else:
        export_conversations(store, out)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    return {r["conversation"]["id"]: r["counts"]["messages"] for r in records
            if r["type"] == "conversation"}


async def execute(store: Store | AsyncStore, sql: str) -> Any:
    """Run raw ``sql`` on ``store``'s engine; its first value, if it returns rows."""
    if isinstance(store, AsyncStore):
        async with store.engine.connect() as aconn:
            result = await aconn.exec_driver_sql(sql)
            return result.scalar() if result.returns_rows else None
    with store.engine.connect() as conn:
        result = conn.exec_driver_sql(sql)
        return result.scalar() if result.returns_rows else None


async def close(store: Store | AsyncStore) -> None:
    await call(store, "close")


@pytest.fixture
def replicated(pg_cluster: PgCluster, pg_replica: PgReplica) -> Iterator[tuple[sa.URL, sa.URL]]:
    """A fresh migrated database on the primary, replicated: (primary URL, replica URL)."""
    url = pg_cluster.create()
    pg_replica.catch_up()
    try:
        yield url, pg_replica.url(url)
    finally:
        pg_cluster.drop(url)


# --- a real streaming replica (PostgreSQL) -----------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_heavy_readers_read_the_replica_while_turns_stay_on_the_primary(
    kind: str, replicated: tuple[sa.URL, sa.URL], pg_replica: PgReplica
) -> None:
    primary_url, replica_url = replicated
    store = open_store(kind, primary_url, read_url=replica_url)
    primary_only = open_store(kind, primary_url)
    fake = FakeBackend()
    client_cls = OpenAIClient if kind == "sync" else AsyncOpenAIClient
    client = client_cls(base_url="http://fake/v1", api_key="sk-test", max_retries=0,
                        transport=fake.transport())
    chat = (Chat if kind == "sync" else AsyncChat)(store, client, model="gpt-4o-mini")
    replayer = (Replayer if kind == "sync" else AsyncReplayer)(store, client)
    try:
        old = await call(store, "create_conversation", owner="u1")
        await call(store, "append", old.id, Message.system("Be brief."), owner="u1")
        await call(chat, "send", old.id, "old question", owner="u1")
        pg_replica.catch_up()

        with pg_replica.paused():  # from here the replica lags: it has `old`'s first turn only
            late = await call(store, "create_conversation", owner="u1")
            await call(store, "append", late.id, Message.user("late question"), owner="u1")
            await call(store, "append", old.id, Message.user("another question"), owner="u1")

            reader_statements = Statements(store.reader)
            primary_statements = Statements(store)
            try:
                # a turn: its append and its build are on the primary, which has what
                # the replica lacks (the build sees the message appended just before)
                result = await call(chat, "send", old.id, "fresh question", owner="u1")
                sent = [m["content"] for m in fake.last_request.json["messages"]]
                assert sent[-2:] == ["another question", "fresh question"]
                assert result.reply.text == "You said: fresh question"
                assert reader_statements.seen == []
                assert "INSERT" in primary_statements.seen

                # search: the replica's view (the primary has four more hits)
                hits = await call(store, "search", "question", owner="u1")
                assert sorted(m.text for m in hits) == ["You said: old question", "old question"]
                assert len(await call(primary_only, "search", "question", owner="u1")) == 6
                assert reader_statements.seen and not WRITES & set(reader_statements.seen)

                # export: the replica's snapshot, `late` not in it, `old` as it was
                assert await export_ids(store) == {old.id: 3}
                assert (await export_ids(primary_only)).keys() == {old.id, late.id}

                # replay: conversations listed and read on the replica (one turn of
                # `old`, no `late`); what it writes goes to the primary
                before = len(reader_statements.seen)
                report = await call(replayer, "replay", None, owner="u1",
                                    arms=[Arm("gpt-4o-mini", name="again")])
                assert [(i.conversation_id, i.turn, i.status) for i in report.items] == [
                    (old.id, 0, "ok")
                ]
                assert reader_statements.seen[before:]  # it read there...
                assert not WRITES & set(reader_statements.seen)  # ...and only read
                stored = await call(primary_only, "replay_items", report.replay.id, owner="u1")
                assert [i.text for i in stored] == ["You said: old question"]
                branch = stored[0].branch_id
                assert branch is not None
                assert [m.text for m in await call(primary_only, "messages", branch)][-2:] == [
                    "old question", "You said: old question"
                ]
            finally:
                reader_statements.close()
                primary_statements.close()

        # caught up: the replica has everything, the replay's writes included
        assert len(await call(store, "search", "question", owner="u1")) == 8  # + the replay's two
        assert report.replay.id in {
            r.id for r in (await call(store.reader, "list_replays", owner="u1")).items
        }
    finally:
        await call(client, "close")
        await close(store)
        await close(primary_only)


@pytest.mark.parametrize("kind", KINDS)
async def test_writes_through_the_replica_fail_with_a_typed_error(
    kind: str, replicated: tuple[sa.URL, sa.URL]
) -> None:
    primary_url, replica_url = replicated
    store = open_store(kind, primary_url, read_url=replica_url)
    try:
        conv = await call(store, "create_conversation")
        reader = store.reader
        assert reader is not store and reader.reader is reader
        statements = Statements(reader)
        try:
            with pytest.raises(ReadOnlyStoreError, match="append writes"):
                await call(reader, "append", conv.id, Message.user("nope"))
            with pytest.raises(ReadOnlyStoreError, match="create_conversation writes"):
                await call(reader, "create_conversation")
            with pytest.raises(ReadOnlyStoreError, match="migrate"):
                await call(reader, "migrate")
            assert statements.seen == []  # refused before any statement
        finally:
            statements.close()
        # and the database itself refuses (a hot standby): translated at the one boundary
        engine = sa.create_engine(replica_url, poolclass=sa.NullPool)
        try:
            with engine.connect() as conn, pytest.raises(sa.exc.DBAPIError) as caught:
                conn.exec_driver_sql("DELETE FROM conversations")
        finally:
            engine.dispose()
        assert isinstance(database_error(caught.value), ReadOnlyStoreError)
        assert await call(store, "count_messages", conv.id) == 0
    finally:
        await close(store)


# --- the read engine's guards, both databases (a second engine on the same database) ----------


@pytest.mark.parametrize("kind", KINDS)
async def test_the_read_engine_is_read_only_at_the_database(kind: str, db_url: sa.URL) -> None:
    store = open_store(kind, db_url, read_url=db_url)
    try:
        conv = await call(store, "create_conversation", title="t")
        await call(store, "append", conv.id, Message.user("hello there"))
        assert [m.text for m in await call(store, "search", "hello")] == ["hello there"]
        with pytest.raises(sa.exc.DBAPIError) as caught:
            await execute(store.reader, "UPDATE conversations SET title = 'x'")
        assert isinstance(database_error(caught.value), ReadOnlyStoreError)
        assert (await call(store, "get_conversation", conv.id)).title == "t"
        if db_url.get_backend_name() == "postgresql":  # a startup option, no session state
            show = "SHOW default_transaction_read_only"
            assert (await execute(store.reader, show), await execute(store, show)) == ("on", "off")
    finally:
        await close(store)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_read_database_at_another_revision_is_a_typed_error(
    kind: str, make_db: Any, db_url: sa.URL
) -> None:
    backend = db_url.get_backend_name()
    behind = make_db(backend, migrated=False)
    if backend == "sqlite":
        Path(str(behind.database)).touch()  # an empty file (a missing one: cannot be opened)
    store = open_store(kind, db_url, read_url=behind)
    try:
        conv = await call(store, "create_conversation")
        with pytest.raises(NotMigratedError) as caught:
            await call(store, "search", "x")
        assert caught.value.replica and caught.value.revision is None
        assert str(caught.value).startswith("read database ")
        assert "migrate the primary" in str(caught.value)
        # the primary is unaffected
        await call(store, "append", conv.id, Message.user("still fine"))
    finally:
        await close(store)


def test_the_read_url_comes_from_the_environment_with_the_database_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    primary, replica = tmp_path / "p.db", tmp_path / "r.db"
    monkeypatch.setenv("CONVO_DATABASE_URL", f"sqlite:///{primary}")
    monkeypatch.setenv("CONVO_READ_DATABASE_URL", f"sqlite:///{replica}")
    with Store() as store:
        assert store.reader is not store
        assert store.reader.engine.url.database == f"file:{replica}"
        assert store.reader.engine.url.query["mode"] == "ro"
    with Store(f"sqlite:///{primary}") as store:  # a database passed in: not the env's replica
        assert store.reader is store


def test_read_urls_that_cannot_be_replicas_are_refused(tmp_path: Path) -> None:
    with (Store(f"sqlite:///{tmp_path / 'p.db'}", read_url="sqlite://") as store,
          pytest.raises(ConfigurationError, match="in-memory")):
        store.reader  # noqa: B018
    with pytest.raises(ConfigurationError, match="AsyncStore"):
        Store(f"sqlite:///{tmp_path / 'p.db'}", read_url=AsyncStore("sqlite://").engine)
    with pytest.raises(ConfigurationError, match="sync Engine"):
        AsyncStore(f"sqlite:///{tmp_path / 'p.db'}", read_url=sa.create_engine("sqlite://"))


def test_the_repr_names_both_databases_without_passwords() -> None:
    store = Store("postgresql://u:hunter2@db1/app", read_url="postgresql://u:hunter3@db2/app")
    assert "hunter" not in repr(store)
    assert "db1" in repr(store) and "read_url='postgresql://u:***@db2/app'" in repr(store)


# --- the CLI (a SQLite copy stands in for a lagging replica) ------------------------------------


def test_the_cli_reads_from_read_url(
    tmp_path: Path, sqlite_template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    primary, replica = tmp_path / "p.db", tmp_path / "r.db"
    shutil.copyfile(sqlite_template, primary)
    with Store(f"sqlite:///{primary}") as store:
        old = store.create_conversation()
        store.append(old.id, Message.user("old words"))
        with store.engine.connect() as conn:  # the WAL into the file, then copy it:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        shutil.copyfile(primary, replica)  # the replica, as of now
        late = store.create_conversation()
        store.append(late.id, Message.user("late words"))
    db, read = f"sqlite:///{primary}", f"sqlite:///{replica}"
    runner = CliRunner()

    def texts(*args: str) -> list[str]:
        result = runner.invoke(app, [*args, "--json"])
        assert result.exit_code == 0, result.output
        return sorted(m["content"] for m in json.loads(result.stdout))

    assert texts("--db", db, "search", "words") == ["late words", "old words"]
    assert texts("--db", db, "search", "words", "--read-url", read) == ["old words"]
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["--db", db, "export", "--read-url", read, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["conversation"]["id"] for line in out.read_text().splitlines()] == [
        old.id
    ]
    # the environment's replica goes with the environment's database, not with --db
    monkeypatch.setenv("CONVO_DATABASE_URL", db)
    monkeypatch.setenv("CONVO_READ_DATABASE_URL", read)
    assert texts("search", "words") == ["old words"]
    assert texts("--db", db, "search", "words") == ["late words", "old words"]
    # a replica that is not at the primary's revision: advice about the replica
    monkeypatch.setenv("CONVO_READ_DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    (tmp_path / "empty.db").touch()
    result = runner.invoke(app, ["search", "words"])
    assert result.exit_code == 1
    assert "read database" in result.output and "migrate the primary" in result.output


def test_cli_replay_reads_the_conversations_from_read_url(
    tmp_path: Path, sqlite_template: Path
) -> None:
    primary, replica = tmp_path / "p.db", tmp_path / "r.db"
    shutil.copyfile(sqlite_template, primary)
    fake = FakeBackend()
    with fake.serve() as server:
        with Store(f"sqlite:///{primary}") as store, OpenAIClient(
            base_url=server.base_url, api_key="sk-test"
        ) as client:
            chat = Chat(store, client, model="gpt-4o-mini")
            old = store.create_conversation(metadata={"team": "a"})
            chat.send(old.id, "first turn")
            with store.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            shutil.copyfile(primary, replica)  # the replica: `old` with one turn
            chat.send(old.id, "second turn")
            late = store.create_conversation(metadata={"team": "a"})
            chat.send(late.id, "late turn")
        db, read = f"sqlite:///{primary}", f"sqlite:///{replica}"

        def replay(*args: str) -> list[tuple[str, int]]:
            result = CliRunner().invoke(app, [
                "--db", db, "replay", *args, "--arm", "gpt-4.1-mini",
                "--base-url", server.base_url, "--json",
            ], env={"OPENAI_API_KEY": "sk-test"})
            assert result.exit_code == 0, result.output
            items = json.loads(result.stdout)["items"]
            assert {i["status"] for i in items} == {"ok"}
            return sorted((i["conversation_id"], i["turn"]) for i in items)

        assert replay("--where", "team=a", "--read-url", read) == [(old.id, 0)]
        assert replay("--where", "team=a") == sorted([(old.id, 0), (old.id, 1), (late.id, 0)])
    # the replays were written to the primary (the replica is a file nobody wrote to)
    with Store(db) as store:
        assert len(store.list_replays().items) == 2
    with Store(read) as store:
        assert store.list_replays().items == []
