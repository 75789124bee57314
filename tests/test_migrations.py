"""Alembic migrations: no drift between models and migrations, downgrade/upgrade, CLI."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from convo._store import migrate as _migrate
from convo._store.engine import create_engine
from convo._store.schema import SCHEMA_REVISION, metadata
from convo._store.store import Store

ROOT = Path(__file__).resolve().parent.parent
TABLES = {
    "conversations", "messages", "message_tokens", "summaries", "runs", "replays", "replay_items",
}


def _tables(url: sa.URL) -> set[str]:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_head_is_the_revision_the_store_expects():
    assert _migrate.head_revision() == SCHEMA_REVISION
    assert _migrate.script_location() == ROOT / "migrations"  # editable checkout


def test_installed_scripts_are_preferred(tmp_path, monkeypatch):
    installed = tmp_path / "convo" / "_migrations"
    installed.mkdir(parents=True)
    (installed / "env.py").write_text("")
    monkeypatch.setattr(_migrate, "_PACKAGE_DIR", tmp_path / "convo")
    assert _migrate.script_location() == installed


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_models_and_migrations_do_not_drift(backend, make_db):
    url = make_db(backend, migrated=False)
    with Store(url) as store:
        store.migrate()
        store.migrate()  # idempotent
        assert store.current_revision() == SCHEMA_REVISION
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, metadata) == []
            command.check(_migrate.alembic_config(conn))  # `alembic check`: raises on drift
    finally:
        engine.dispose()
    assert TABLES <= _tables(url)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_downgrade_to_base_and_upgrade_again(backend, make_db):
    url = make_db(backend, migrated=False)
    with Store(url) as store:
        store.migrate()
        conv = store.create_conversation()
        store.append(conv.id, {"role": "user", "content": "hi"})
        with store.engine.connect() as conn:
            _migrate.downgrade(conn, "base")
        assert not TABLES & _tables(url)
        assert store.current_revision() is None
        store.migrate()
        assert store.is_migrated()
        assert store.list_conversations().items == []  # a clean schema again
        conv = store.create_conversation()
        assert store.append(conv.id, {"role": "user", "content": "again"}).seq == 1


def _alembic(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_alembic_cli_from_the_repo_root(backend, make_db):
    url = make_db(backend, migrated=False)
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    result = _alembic("-x", f"url={url.render_as_string(hide_password=False)}", "upgrade", "head", env=env)
    assert result.returncode == 0, result.stderr
    assert TABLES <= _tables(url)
    env["CONVO_DATABASE_URL"] = url.render_as_string(hide_password=False)
    result = _alembic("current", env=env)
    assert result.returncode == 0, result.stderr
    assert SCHEMA_REVISION in result.stdout
    result = _alembic("check", env=env)
    assert result.returncode == 0, result.stderr + result.stdout


def test_alembic_offline_sql(tmp_path):
    env = {**os.environ, "CONVO_DATABASE_URL": "postgresql://nobody@nowhere/db"}
    result = _alembic("upgrade", "head", "--sql", env=env)
    assert result.returncode == 0, result.stderr
    assert "CREATE TABLE messages" in result.stdout
    assert "WHERE pinned" in result.stdout and "JSONB" in result.stdout


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_upgrading_a_0001_database_with_data_keeps_every_row(backend, make_db):
    """0001 -> head on a database that holds conversations, forks, messages, counts, summaries."""
    url = make_db(backend, migrated=False)
    engine = create_engine(url)
    tables = ["conversations", "messages", "message_tokens", "summaries"]
    try:
        with engine.connect() as conn:
            _migrate.upgrade(conn, "0001_initial")
            conn.commit()
        # Rows written as a 0001 database holds them (raw SQL: today's store
        # writes today's columns).
        stamp = "2026-11-22 10:00:00.000000" if backend == "sqlite" else "2026-11-22T10:00:00+00"
        conv_id, fork_id = "0" * 31 + "1", "0" * 31 + "2"
        statements = [
            ("INSERT INTO conversations (id, title, owner, metadata, created_at, updated_at,"
             " parent_id, fork_seq, last_seq) VALUES"
             f" ('{conv_id}', 'old', 'o', '{{\"k\": [1, \"x\"]}}', '{stamp}', '{stamp}',"
             " NULL, NULL, 4)"),
            ("INSERT INTO conversations (id, title, owner, metadata, created_at, updated_at,"
             " parent_id, fork_seq, last_seq) VALUES"
             f" ('{fork_id}', 'old', 'o', NULL, '{stamp}', '{stamp}', '{conv_id}', 2, 3)"),
        ]
        rows = [
            (1, conv_id, 1, "system", "Be brief.", "NULL", "NULL", "true", "NULL"),
            (2, conv_id, 2, "user", "Hi", "'ann'", "NULL", "false", "'key-1'"),
            (3, conv_id, 3, "assistant", None, "NULL",
             ("'[{\"id\": \"c1\", \"type\": \"function\", \"function\": "
              "{\"name\": \"f\", \"arguments\": \"{}\"}}]'"), "false", "NULL"),
            (4, conv_id, 4, "tool", "42", "NULL", "NULL", "false", "NULL"),
            (5, fork_id, 3, "assistant", "Hello", "NULL", "NULL", "false", "NULL"),
        ]
        for mid, cid, seq, role, content, name, calls, pinned, key in rows:
            text = "NULL" if content is None else f"'{content}'"
            if backend == "sqlite":
                pinned = "1" if pinned == "true" else "0"
            statements.append(
                "INSERT INTO messages (id, conversation_id, seq, role, content, name, tool_calls,"
                f" pinned, idempotency_key, created_at) VALUES ({mid}, '{cid}', {seq}, '{role}',"
                f" {text}, {name}, {calls}, {pinned}, {key}, '{stamp}')"
            )
        statements += [
            "INSERT INTO message_tokens (message_id, encoding, tokens) VALUES (1, 'o200k_base', 5)",
            "INSERT INTO message_tokens (message_id, encoding, tokens) VALUES (2, 'o200k_base', 9)",
            ("INSERT INTO summaries (id, conversation_id, start_seq, end_seq, content,"
             f" created_at) VALUES (1, '{conv_id}', 1, 2, 'sum', '{stamp}')"),
        ]
        with engine.begin() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)

        def dump() -> dict[str, list[tuple[object, ...]]]:
            with engine.connect() as conn:
                return {
                    t: sorted(tuple(r) for r in conn.exec_driver_sql(f"SELECT * FROM {t}"))
                    for t in tables
                }

        before = dump()
        assert sum(len(rows) for rows in before.values()) == 2 + 5 + 2 + 1
        with Store(url) as store:
            assert store.current_revision() == "0001_initial"
            store.migrate()
            assert store.current_revision() == SCHEMA_REVISION
            assert [m.content for m in store.messages(fork_id)] == ["Be brief.", "Hi", "Hello"]
            assert store.get_conversation(fork_id).branch_kind is None
            assert store.messages(conv_id)[2].tool_calls is not None
            # the new table works on the upgraded database
            run = store.start_run(conv_id, endpoint="chat.completions", mode="chat",
                                  model="m", request={"model": "m", "messages": []})
            assert store.get_run(run.id).owner == "o"
        after = dump()
        # every old row and value is still there; the new columns are empty
        conv_cols = ("branch_kind", "branch_of", "current_branch_id")
        with engine.connect() as conn:
            new = conn.exec_driver_sql(
                f"SELECT {', '.join(conv_cols)} FROM conversations"
            ).all()
            lineages = dict(conn.exec_driver_sql("SELECT id, lineage FROM conversations").all())
        assert all(tuple(r) == (None, None, None) for r in new)
        # 0005: the fork's ancestor chain, on its row
        assert {k: _json(v) for k, v in lineages.items()} == {
            conv_id: None, fork_id: [[conv_id, 2]]}
        after["conversations"] = [r[:-4] for r in after["conversations"]]
        # 0004: each token count learnt its message's conversation
        assert after["message_tokens"] == [
            (1, "o200k_base", 5, conv_id), (2, "o200k_base", 9, conv_id)]
        after["message_tokens"] = [r[:-1] for r in after["message_tokens"]]
        assert after == before
    finally:
        engine.dispose()


def _json(value: object) -> object:
    """A JSON column's value as read by the driver (SQLite: its text)."""
    return json.loads(value) if isinstance(value, str) else value


def _dump(engine: sa.Engine, tables: list[str]) -> dict[str, list[dict[str, object]]]:
    """Every row of ``tables`` as {column: value}, in a stable order (column order may change)."""
    with engine.connect() as conn:
        return {
            t: sorted(
                (dict(r) for r in conn.exec_driver_sql(f"SELECT * FROM {t}").mappings()),
                key=repr,
            )
            for t in tables
        }


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_upgrading_a_0003_database_with_data_to_shard_keys_keeps_every_row(backend, make_db):
    """0003 -> 0004 (keys with conversation_id) on a database holding a thread and its
    fork, token counts of both, summaries, runs and a replay: every row and value
    survives, each token count gets its message's conversation, reads through the new
    keys find everything, and the downgrade gives the 0003 rows back."""
    url = make_db(backend, migrated=False)
    engine = create_engine(url)
    tables = sorted(TABLES)
    try:
        with engine.connect() as conn:
            _migrate.upgrade(conn, "0003_replays")
        stamp = "2026-11-22 10:00:00.000000" if backend == "sqlite" else "2026-11-22T10:00:00+00"
        true, false = ("1", "0") if backend == "sqlite" else ("true", "false")
        a, fork, b = "0" * 31 + "a", "0" * 31 + "f", "0" * 31 + "b"
        conv = ("INSERT INTO conversations (id, title, owner, created_at, updated_at, parent_id,"
                " fork_seq, last_seq, branch_kind, branch_of) VALUES ")
        statements = [
            conv + f"('{a}', 'a', 'o', '{stamp}', '{stamp}', NULL, NULL, 3, NULL, NULL)",
            conv + f"('{fork}', 'f', 'o', '{stamp}', '{stamp}', '{a}', 2, 3, 'regenerate', '{a}')",
            conv + f"('{b}', 'b', 'p', '{stamp}', '{stamp}', NULL, NULL, 1, NULL, NULL)",
        ]
        # ids interleave across conversations and have gaps, as a busy database's do
        for mid, cid, seq, role, pinned in [
            (1, a, 1, "system", true), (2, a, 2, "user", false), (4, b, 1, "user", false),
            (5, a, 3, "assistant", false), (7, fork, 3, "assistant", false),
        ]:
            statements.append(
                "INSERT INTO messages (id, conversation_id, seq, role, content, pinned, created_at)"
                f" VALUES ({mid}, '{cid}', {seq}, '{role}', 'm{mid}', {pinned}, '{stamp}')"
            )
        for mid, enc, n in [(1, "o200k_base", 5), (1, "cl100k_base", 6), (2, "o200k_base", 9),
                            (4, "o200k_base", 3), (7, "o200k_base", 11)]:
            statements.append(
                "INSERT INTO message_tokens (message_id, encoding, tokens)"
                f" VALUES ({mid}, '{enc}', {n})"
            )
        statements += [
            ("INSERT INTO summaries (id, conversation_id, start_seq, end_seq, content, created_at)"
             f" VALUES (1, '{a}', 1, 2, 'sum a', '{stamp}'), (3, '{fork}', 1, 3, 'sum f',"
             f" '{stamp}')"),
            ("INSERT INTO runs (id, conversation_id, owner, endpoint, mode, model, request,"
             " kept_seqs, summary_id, reply_message_id, status, created_at) VALUES"
             f" ('r1', '{a}', 'o', 'chat.completions', 'chat', 'm', '{{}}', '[1, 2]', 1, 5, 'ok',"
             f" '{stamp}'), ('r2', '{fork}', 'o', 'chat.completions', 'chat', 'm', '{{}}', NULL,"
             f" NULL, 7, 'ok', '{stamp}')"),
            ("INSERT INTO replays (id, owner, mode, status, created_at, updated_at) VALUES"
             f" ('rp', 'o', 'forward', 'done', '{stamp}', '{stamp}')"),
            ("INSERT INTO replay_items (replay_id, conversation_id, turn, arm, status, branch_id,"
             f" run_id, user_seq, created_at) VALUES ('rp', '{a}', 1, 'x', 'ok', '{fork}', 'r2',"
             f" 2, '{stamp}')"),
        ]
        if backend == "postgresql":  # the sequences, as the rows' own inserts would have left them
            statements += [
                "SELECT setval('messages_id_seq', 7)", "SELECT setval('summaries_id_seq', 3)"]
        with engine.begin() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)
        before = _dump(engine, tables)
        assert {t: len(rows) for t, rows in before.items()} == {
            "conversations": 3, "messages": 5, "message_tokens": 5, "summaries": 2, "runs": 2,
            "replays": 1, "replay_items": 1,
        }

        with Store(url) as store:
            store.migrate()
            assert store.current_revision() == SCHEMA_REVISION
        after = _dump(engine, tables)
        lineages = {r["id"]: _json(r.pop("lineage")) for r in after["conversations"]}
        assert lineages == {a: None, b: None, fork: [[a, 2]]}  # 0005
        home = {1: a, 2: a, 4: b, 7: fork}
        for row in after["message_tokens"]:
            assert row.pop("conversation_id") == home[row["message_id"]]  # type: ignore[index]
        assert after == before

        with engine.connect() as conn:  # and back: the 0003 rows, exactly
            _migrate.downgrade(conn, "0003_replays")
        assert _dump(engine, tables) == before
        with engine.connect() as conn:
            _migrate.upgrade(conn, "head")

        with Store(url) as store:
            # the fork reads its inherited rows and their counts through the new keys
            view = store.tail(fork, encoding="o200k_base", limit=10)
            assert [(m.id, m.conversation_id, n) for m, n in view] == [
                (7, fork, 11), (2, a, 9), (1, a, 5)]
            assert store.latest_summary(fork).content == "sum f"
            assert store.get_run("r2").reply_message_id == 7
            assert store.list_runs(a).items[0].summary_id == 1
            # new ids continue after the highest one (SQLite: MAX(id) + 1; PostgreSQL: the sequence)
            new = store.append(b, {"role": "user", "content": "new"})
            assert new.id == 8 and new.seq == 2
            assert store.add_summary(b, start_seq=1, end_seq=2, content="s").id == 4
            store.save_token_counts("o200k_base", {new.id: 2, (a, 5): 4})
            counts = {m.id: n for m, n in store.tail(a, encoding="o200k_base", limit=9)}
            assert counts == {5: 4, 2: 9, 1: 5}
    finally:
        engine.dispose()


#: How convo resolved a fork's ancestors before revision 0005 (the oracle of the backfill).
_OLD_CHAIN = """
WITH RECURSIVE chain(id, parent_id, fork_seq, depth) AS (
    SELECT id, parent_id, fork_seq, 0 FROM conversations WHERE id = :cid
    UNION ALL
    SELECT c.id, c.parent_id, c.fork_seq, chain.depth + 1
    FROM conversations c JOIN chain ON c.id = chain.parent_id
)
SELECT id, fork_seq FROM chain ORDER BY depth
"""


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_upgrading_a_0004_database_stores_each_forks_chain_as_the_recursive_query_found_it(
    backend, make_db
):
    """0004 -> 0005 on forks of forks (a fork inside its parent's inherited part, a
    fork at 0, a branch, two trees): every lineage equals the chain the recursive
    query gave, reads see the same views, and a downgrade and upgrade again agree."""
    url = make_db(backend, migrated=False)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            _migrate.upgrade(conn, "0004_shard_keys")
        stamp = "2026-11-22 10:00:00.000000" if backend == "sqlite" else "2026-11-22T10:00:00+00"
        r, a, b, c, d, s, t, u = (f"{'0' * 31}{k}" for k in "12345678")
        # (id, parent, fork_seq, last_seq, branch_kind, branch_of), parents first
        convs = [(r, None, None, 5, None, None), (a, r, 3, 6, None, None),
                 (b, a, 5, 7, None, None), (c, b, 2, 4, None, None), (d, c, 4, 5, None, None),
                 (s, r, 0, 0, None, None), (t, None, None, 1, None, None),
                 (u, t, 1, 2, "regenerate", t)]
        own = {r: range(1, 6), a: range(4, 7), b: range(6, 8), c: range(3, 5), d: [5],
               t: [1], u: [2]}

        def sql(v: object) -> str:
            return "NULL" if v is None else f"'{v}'" if isinstance(v, str) else str(v)

        statements = [
            "INSERT INTO conversations (id, owner, created_at, updated_at, parent_id, fork_seq,"
            f" last_seq, branch_kind, branch_of) VALUES ('{cid}', 'o', '{stamp}', '{stamp}',"
            f" {sql(parent)}, {sql(seq)}, {last}, {sql(kind)}, {sql(of)})"
            for cid, parent, seq, last, kind, of in convs
        ]
        statements += [
            "INSERT INTO messages (id, conversation_id, seq, role, content, created_at) VALUES"
            f" ({i}, '{cid}', {seq}, 'user', '{cid[-1]}{seq}', '{stamp}')"
            for i, (cid, seq) in enumerate(
                ((cid, seq) for cid, seqs in own.items() for seq in seqs), 1)
        ]
        if backend == "postgresql":
            statements.append(f"SELECT setval('messages_id_seq', {len(statements)})")
        with engine.begin() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)
            oracle = {}
            for cid, *_ in convs:
                chain = conn.execute(sa.text(_OLD_CHAIN), {"cid": cid}).all()
                oracle[cid] = [[up[0], below[1]] for below, up in itertools.pairwise(chain)] or None
        assert oracle[d] == [[c, 4], [b, 2], [a, 5], [r, 3]] and oracle[r] is None

        def lineages() -> dict[str, object]:
            with engine.connect() as conn:
                rows = conn.exec_driver_sql("SELECT id, lineage FROM conversations").all()
            return {cid: _json(value) for cid, value in rows}

        with Store(url) as store:
            store.migrate()
            assert lineages() == oracle
            views = {cid: [m.text for m in store.messages(cid)] for cid, *_ in convs}
            assert views[d] == ["11", "12", "43", "44", "55"]
            assert views[b] == ["11", "12", "13", "24", "25", "36", "37"]
            assert views[s] == [] and views[u] == ["71", "82"]
            with store.engine.connect() as conn:
                _migrate.downgrade(conn, "0004_shard_keys")
            with engine.connect() as conn:
                columns = conn.exec_driver_sql("SELECT * FROM conversations").keys()
            assert "lineage" not in columns
            store.migrate()
            assert lineages() == oracle
            assert {cid: [m.text for m in store.messages(cid)] for cid, *_ in convs} == views
    finally:
        engine.dispose()


# --- concurrency, foreign revisions, bad arguments ----------------------------------------

_MIGRATE_WHEN_TOLD = """
import os, sys, time
from pathlib import Path
from convo import Store
from convo._store import migrate as _migrate
url, ready, go = sys.argv[1:4]
_migrate.head_revision()  # alembic imported and scripts read: all start from the same line
store = Store(url)
Path(ready, str(os.getpid())).touch()
while not Path(go).exists():
    time.sleep(0.002)
store.migrate()
print(store.current_revision())
"""


def _migrate_together(url: sa.URL, workdir: Path, n: int) -> list[subprocess.CompletedProcess[str]]:
    """Start ``n`` processes, let them all reach ``Store.migrate()``, then release them at once."""
    ready, go = workdir / "ready", workdir / "go"
    ready.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _MIGRATE_WHEN_TOLD,
             url.render_as_string(hide_password=False), str(ready), str(go)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(n)
    ]
    results = []
    try:
        while len(list(ready.iterdir())) < n:
            if any(p.poll() is not None for p in procs):
                break  # one died before the start line: its output says why
            time.sleep(0.01)
        go.touch()
        for p in procs:
            out, err = p.communicate(timeout=300)
            results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return results


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_six_processes_migrating_a_fresh_database_all_succeed(backend, make_db, tmp_path):
    # The docs' FastAPI example migrates in every worker at start-up: without the
    # migration lock, PostgreSQL failed some of them with UniqueViolation (in most rounds).
    for round_ in range(2):
        url = make_db(backend, migrated=False)
        work = tmp_path / f"round{round_}"
        work.mkdir()
        results = _migrate_together(url, work, 6)
        for r in results:
            assert r.returncode == 0, r.stderr[-3000:]
            assert r.stdout.strip() == SCHEMA_REVISION
        engine = sa.create_engine(url, poolclass=sa.NullPool)
        try:
            with engine.connect() as conn:
                versions = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
        finally:
            engine.dispose()
        assert versions == [(SCHEMA_REVISION,)]


def _set_revision(url: sa.URL, revision: str) -> None:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_database_migrated_by_a_newer_convo_says_so(backend, make_db):
    from convo import AsyncStore, NotMigratedError

    url = make_db(backend)
    _set_revision(url, "0042_from_the_future")
    with Store(url) as store:
        with pytest.raises(NotMigratedError) as found:
            store.list_conversations()
        assert found.value.newer and found.value.revision == "0042_from_the_future"
        text = str(found.value)
        assert "migrated by a newer convo (revision '0042_from_the_future')" in text
        assert "db upgrade" not in text  # upgrading the database cannot help
        # migrating is refused the same way, not with alembic's "Can't locate revision"
        with pytest.raises(NotMigratedError, match="migrated by a newer convo"):
            store.migrate()
        assert store.current_revision() == "0042_from_the_future"  # left as it was
    async_store = AsyncStore(url)
    try:
        with pytest.raises(NotMigratedError, match="newer convo"):
            await async_store.get_conversation("0" * 32)
        with pytest.raises(NotMigratedError, match="newer convo"):
            await async_store.migrate()
    finally:
        await async_store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_database_migrated_by_a_newer_convo_in_the_cli(backend, make_db):
    from typer.testing import CliRunner

    from convo.cli import app

    url = make_db(backend)
    _set_revision(url, "0042_from_the_future")
    db = url.render_as_string(hide_password=False)
    runner = CliRunner()
    for args in (["ls"], ["db", "upgrade"], ["new"]):
        res = runner.invoke(app, ["--db", db, *args])
        assert res.exit_code == 1, res.output
        assert "migrated by a newer convo (revision '0042_from_the_future')" in res.output
        assert "Traceback" not in res.output and "db upgrade`" not in res.output
    res = runner.invoke(app, ["--db", db, "db", "current"])
    assert res.exit_code == 0 and "0042_from_the_future (migrated by a newer convo" in res.output


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.parametrize("revision", ["", "   ", None, 7, "no_such_revision"])
def test_migrate_to_a_bad_revision_is_a_configuration_error(backend, revision, make_db):
    from convo import ConfigurationError

    url = make_db(backend, migrated=False)
    with Store(url) as store:
        with pytest.raises(ConfigurationError):
            store.migrate(revision)  # type: ignore[arg-type]
        assert store.current_revision() is None
        assert not TABLES & _tables(url)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_async_migrate_takes_the_same_lock(backend, make_db):
    from convo import AsyncStore

    url = make_db(backend, migrated=False)
    store = AsyncStore(url)
    try:
        await store.migrate()
        await store.migrate()  # idempotent, and the lock was released
        assert await store.current_revision() == SCHEMA_REVISION
        conv = await store.create_conversation()
        assert conv.last_seq == 0
        if backend == "postgresql":
            # the pooled connection that migrated holds no advisory lock any more
            engine = sa.create_engine(url, poolclass=sa.NullPool)
            try:
                with engine.connect() as conn:
                    held = conn.exec_driver_sql(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                    ).scalar()
            finally:
                engine.dispose()
            assert held == 0
    finally:
        await store.close()


_SESSION_STATE = ("pg_advisory_lock", "pg_advisory_unlock", "prepare ", "listen ", "declare ",
                  "create temp", "discard ", "set_config(")


def test_a_migration_leaves_no_state_in_the_server_session(make_db):
    """Every statement of an upgrade and a downgrade is transaction-scoped: the migration
    lock is ``pg_advisory_xact_lock`` (released by COMMIT or ROLLBACK), never a session
    lock, so migrating through a transaction-mode pooler (PgBouncer) cannot leave a lock
    held by a pooled server connection, and a connection broken midway holds nothing."""
    url = make_db("postgresql", migrated=False)
    engine = create_engine(url)
    sent: list[str] = []
    sa.event.listen(engine, "before_cursor_execute",
                    lambda conn, cursor, statement, *rest: sent.append(statement.lower()))
    try:
        with Store(engine) as store:
            store.migrate()
            with engine.connect() as conn:
                _migrate.downgrade(conn, "0003_replays")
            store.migrate()
            assert store.current_revision() == SCHEMA_REVISION
        locks = [s for s in sent if "advisory" in s]
        assert locks and all("pg_advisory_xact_lock" in s for s in locks), locks
        assert not [s for s in sent if any(bad in s for bad in _SESSION_STATE)]
        # and the lock serializes: held by another transaction, a migration waits for it
        with engine.connect() as holder:
            holder.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"),
                           {"k": _migrate.MIGRATION_LOCK_KEY})
            import threading

            done = threading.Event()

            def migrate() -> None:
                with engine.connect() as conn:
                    _migrate.downgrade(conn, "0003_replays")
                done.set()

            worker = threading.Thread(target=migrate)
            worker.start()
            deadline = time.monotonic() + 30
            waiting = 0
            while not waiting and time.monotonic() < deadline:
                waiting = holder.exec_driver_sql(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                ).scalar()
                time.sleep(0.01)
            assert waiting == 1 and not done.is_set()
            holder.commit()  # releases the lock: the migration goes on
            worker.join(30)
            assert done.is_set()
        with Store(engine) as store:
            assert store.current_revision() == "0003_replays"
    finally:
        engine.dispose()
