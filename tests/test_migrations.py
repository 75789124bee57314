"""Alembic migrations: no drift between models and migrations, downgrade/upgrade, CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from convo import _migrate
from convo._engine import create_engine
from convo._schema import SCHEMA_REVISION, metadata
from convo._store import Store

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
            "INSERT INTO conversations (id, title, owner, metadata, created_at, updated_at,"
            " parent_id, fork_seq, last_seq) VALUES"
            f" ('{conv_id}', 'old', 'o', '{{\"k\": [1, \"x\"]}}', '{stamp}', '{stamp}',"
            " NULL, NULL, 4)",
            "INSERT INTO conversations (id, title, owner, metadata, created_at, updated_at,"
            " parent_id, fork_seq, last_seq) VALUES"
            f" ('{fork_id}', 'old', 'o', NULL, '{stamp}', '{stamp}', '{conv_id}', 2, 3)",
        ]
        rows = [
            (1, conv_id, 1, "system", "Be brief.", "NULL", "NULL", "true", "NULL"),
            (2, conv_id, 2, "user", "Hi", "'ann'", "NULL", "false", "'key-1'"),
            (3, conv_id, 3, "assistant", None, "NULL",
             "'[{\"id\": \"c1\", \"type\": \"function\", \"function\": "
             "{\"name\": \"f\", \"arguments\": \"{}\"}}]'", "false", "NULL"),
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
            "INSERT INTO summaries (id, conversation_id, start_seq, end_seq, content,"
            f" created_at) VALUES (1, '{conv_id}', 1, 2, 'sum', '{stamp}')",
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
        assert all(tuple(r) == (None, None, None) for r in new)
        after["conversations"] = [r[:-3] for r in after["conversations"]]
        assert after == before
    finally:
        engine.dispose()
