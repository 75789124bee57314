"""What docs/store.md tells operators, checked on a real PostgreSQL.

* PgBouncer's transaction mode: psycopg prepares statements server-side after
  ``prepare_threshold`` (5) executions, so convo's store *would* leave prepared
  statements in the session; ``connect_args={"prepare_threshold": None}``
  passed through ``Store(...)`` turns that off.
* Backups: ``pg_dump --format=custom`` of a live database restored with
  ``pg_restore --no-owner`` into an empty one is a working convo database.
  (SQLite's backup API and ``VACUUM INTO`` run in docs/store.md's own block.)
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from convo import Message, Store


def _prepared_statements(store: Store) -> int:
    """Prepared statements in the session of the store's (only) pooled connection."""
    with store.engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT count(*) FROM pg_prepared_statements").scalar_one())


@pytest.mark.parametrize("threshold", ["default", None])
def test_prepare_threshold_none_keeps_sessions_free_of_prepared_statements(
    make_db: Callable[..., sa.URL], threshold: str | None
) -> None:
    kwargs: dict[str, object] = {"pool_size": 1, "max_overflow": 0}  # one session to look into
    if threshold is None:
        kwargs["connect_args"] = {"prepare_threshold": None}
    with Store(make_db("postgresql"), **kwargs) as store:
        conv = store.create_conversation()
        for n in range(8):  # past psycopg's default threshold of 5 executions
            store.append(conv.id, Message.user(f"message {n}"))
            store.messages(conv.id, limit=2, newest_first=True)
        prepared = _prepared_statements(store)
    if threshold is None:
        assert prepared == 0
    else:
        assert prepared > 0  # what a transaction pooler would hand to another client's session


def _pg_bin(name: str) -> str:
    import pgserver  # the test extra installs it; pg_cluster (below) skips without it

    path = Path(pgserver.__file__).parent / "pginstall" / "bin" / name
    assert path.exists(), path
    return str(path)


def _libpq(url: sa.URL) -> str:
    """The URL as libpq (pg_dump, pg_restore) reads it: no SQLAlchemy driver name."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def test_pg_dump_and_pg_restore_as_documented(make_db: Callable[..., sa.URL], tmp_path: Path) -> None:
    live = make_db("postgresql")
    with Store(live) as store:
        conv = store.create_conversation(title="keep me", owner="u1", metadata={"tier": 2})
        store.append(conv.id, Message.system("Be brief."))
        store.append(conv.id, Message.user("Hello"), idempotency_key="req-1")
        fork = store.fork(conv.id, at=1)
        dump = tmp_path / "chat.dump"
        # Taken while the store is open (a live database), with the flags store.md shows.
        done = subprocess.run([_pg_bin("pg_dump"), "--format=custom", f"--file={dump}", _libpq(live)],
                              capture_output=True, text=True, check=False, timeout=120)
        assert done.returncode == 0, done.stderr

    restored = make_db("postgresql", migrated=False)  # an empty database
    done = subprocess.run([_pg_bin("pg_restore"), "--no-owner", f"--dbname={_libpq(restored)}", str(dump)],
                          capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr

    with Store(restored) as store:
        assert store.is_migrated()  # alembic_version came along
        got = store.get_conversation(conv.id, owner="u1")
        assert (got.title, got.metadata) == ("keep me", {"tier": 2})
        assert [m.text for m in store.messages(conv.id)] == ["Be brief.", "Hello"]
        assert store.get_conversation(fork.id).parent_id == conv.id
        # Appends go on where the dump left off; idempotency keys still hold.
        again = store.append(conv.id, Message.user("Hello"), idempotency_key="req-1")
        assert again.seq == 2 and store.append(conv.id, Message.user("Next")).seq == 3
