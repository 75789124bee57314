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
TABLES = {"conversations", "messages", "message_tokens", "summaries", "runs"}


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
        with Store(url) as store:  # the 0001 store API writes the rows (the schema checks are off)
            store._schema_ok = True
            conv = store.create_conversation(title="old", owner="o", metadata={"k": [1, "x"]})
            store.append(conv.id, {"role": "system", "content": "Be brief."})
            store.append(conv.id, {"role": "user", "content": "Hi", "name": "ann"},
                         idempotency_key="key-1")
            store.append(conv.id, {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]})
            store.append(conv.id, {"role": "tool", "tool_call_id": "c1", "content": "42"})
            fork = store.fork(conv.id, at=2)
            store.append(fork.id, {"role": "assistant", "content": "Hello"})
            store.save_token_counts("o200k_base", {1: 5, 2: 9})
            store.add_summary(conv.id, start_seq=1, end_seq=2, content="sum")

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
            assert [m.content for m in store.messages(fork.id)] == ["Be brief.", "Hi", "Hello"]
            # the new table works on the upgraded database
            run = store.start_run(conv.id, endpoint="chat.completions", mode="chat",
                                  model="m", request={"model": "m", "messages": []})
            assert store.get_run(run.id).owner == "o"
        after = dump()
        assert after == before
    finally:
        engine.dispose()
