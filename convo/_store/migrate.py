"""Alembic migrations, run programmatically (``Store.migrate()``, ``convo db upgrade``).

The migration scripts live in the repository's ``migrations/`` and ship
inside the wheel as ``convo/_migrations``; :func:`script_location` finds the
installed copy first, else the checkout's (editable installs, tests).
Migrations run on a connection handed to ``env.py`` through
``config.attributes["connection"]`` (Alembic cookbook, "Sharing a Connection").

Concurrent migrations serialize (:func:`serialized`): app servers that all
call ``Store.migrate()`` at start-up would otherwise race to create the same
tables (PostgreSQL answers the loser with a unique violation). PostgreSQL
takes an advisory lock on a fixed key; SQLite takes its write lock up front
(``BEGIN IMMEDIATE``). Whoever waits then finds the schema migrated and has
nothing left to do.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from .._exceptions import ConfigurationError, NotMigratedError
from .engine import WRITE_OPTION, safe_url

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic is imported inside the functions: `import convo` should not pay for
# it, only migrating does.

__all__ = [
    "MIGRATION_LOCK_KEY",
    "alembic_config",
    "current_revision",
    "downgrade",
    "foreign_keys_off",
    "head_revision",
    "is_known",
    "newer_schema",
    "script_location",
    "serialized",
    "upgrade",
]

#: The PostgreSQL advisory lock every convo migration holds (``"convo_db"`` as
#: a big-endian int64): fixed, so all processes and versions of convo agree.
MIGRATION_LOCK_KEY = int.from_bytes(b"convo_db", "big")

_PACKAGE_DIR = Path(__file__).resolve().parent.parent


def script_location() -> Path:
    """The directory of the migration scripts (installed package first, then the checkout)."""
    for candidate in (_PACKAGE_DIR / "_migrations", _PACKAGE_DIR.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise ConfigurationError(
        "convo's migration scripts are missing: expected convo/_migrations in the "
        "installed package or migrations/ in the source checkout"
    )


def alembic_config(connection: sa.Connection | None = None) -> Config:
    """An Alembic config for convo's scripts, optionally bound to an open connection."""
    from alembic.config import Config

    # Alembic's Config binds sys.stdout as a default argument at import time; if
    # alembic was first imported while stdout was redirected (a CLI runner, a
    # notebook cell), that stream may be closed by now. Pass the current one.
    config = Config(stdout=sys.stdout)
    config.set_main_option("script_location", str(script_location()))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The head revision of the migration scripts."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "no migration scripts"
    return head


def current_revision(connection: sa.Connection) -> str | None:
    """The revision the database is at, or None when it has no convo schema."""
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


@cache
def _known_revisions() -> frozenset[str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    return frozenset(rev.revision for rev in script.walk_revisions())


def is_known(revision: str) -> bool:
    """Whether ``revision`` is one of this convo's migrations (else a newer convo wrote it)."""
    return revision in _known_revisions()


def newer_schema(url: str, revision: str) -> NotMigratedError:
    """The error for a database that a newer convo migrated (its revision is unknown here)."""
    return NotMigratedError(
        f"database {url} was migrated by a newer convo (revision {revision!r}); this convo "
        f"knows revisions up to {head_revision()!r}: upgrade convo (pip install -U convo), "
        "or point it at another database",
        revision=revision,
        newer=True,
    )


def upgrade(connection: sa.Connection, revision: str = "head") -> None:
    """Upgrade the database behind ``connection`` to ``revision`` and commit.

    Raises:
        ConfigurationError: ``revision`` is not a revision (or ``head``) of convo's scripts.
        NotMigratedError: the database was migrated by a newer convo.
    """
    from alembic import command

    _migrate(command.upgrade, connection, revision)


def downgrade(connection: sa.Connection, revision: str) -> None:
    """Downgrade the database behind ``connection`` to ``revision`` and commit."""
    from alembic import command

    _migrate(command.downgrade, connection, revision)


def _migrate(
    run: Callable[[Config, str], None], connection: sa.Connection, revision: str
) -> None:
    from alembic.script.revision import RevisionError
    from alembic.util.exc import CommandError

    if not isinstance(revision, str) or not revision.strip():
        raise ConfigurationError(
            f"a migration revision must be a non-empty string such as 'head', not {revision!r}"
        )
    with serialized(connection), foreign_keys_off(connection):
        # Read under the lock: a database another process just migrated is current now.
        found = current_revision(connection)
        if found is not None and not is_known(found):
            raise newer_schema(safe_url(connection.engine.url), found)
        try:
            run(alembic_config(connection), revision)
        except (CommandError, RevisionError) as exc:
            raise ConfigurationError(f"cannot migrate to revision {revision!r}: {exc}") from None


@contextmanager
def serialized(connection: sa.Connection) -> Iterator[None]:
    """Hold convo's migration lock on ``connection`` for the block.

    PostgreSQL: a transaction-level advisory lock on :data:`MIGRATION_LOCK_KEY`
    (``pg_advisory_xact_lock``), taken in the transaction the migration runs in
    (begun here if none is open) and released by the server when that
    transaction commits or rolls back. Nothing outlives the transaction, so a
    migration leaves no state in the server session: it is safe through a
    transaction-mode pooler such as PgBouncer, and a connection that breaks
    midway cannot leave the lock behind. The caller commits (Alembic's
    transaction, or :class:`foreign_keys_off` on leaving).
    SQLite: the migration's transaction begins ``IMMEDIATE`` (the write lock,
    waited for under the busy timeout).
    """
    if connection.dialect.name != "postgresql":
        if not connection.in_transaction():
            connection.execution_options(**{WRITE_OPTION: True})
        yield
        return
    connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    yield


class foreign_keys_off:  # used like a function
    """On SQLite, switch foreign keys off around a migration.

    Batch migrations rebuild tables (copy, drop, rename); with foreign keys on,
    dropping a table referenced with ON DELETE CASCADE would delete the
    referencing rows. The pragma only works outside a transaction, so it is set
    on the DBAPI connection before Alembic begins (and set back afterwards).
    """

    def __init__(self, connection: sa.Connection) -> None:
        self.connection = connection
        self.sqlite = connection.dialect.name == "sqlite"

    def _pragma(self, value: str) -> None:
        if self.sqlite and not self.connection.in_transaction():
            cursor = self.connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                cursor.execute(f"PRAGMA foreign_keys={value}")
            finally:
                cursor.close()

    def __enter__(self) -> None:
        self._pragma("OFF")

    def __exit__(self, *exc: object) -> None:
        if self.connection.in_transaction():
            if exc[0] is None:
                self.connection.commit()
            else:
                self.connection.rollback()
        self._pragma("ON")
