"""Alembic migrations, run programmatically (``Store.migrate()``, ``convo db upgrade``).

The migration scripts live in the repository's ``migrations/`` and ship
inside the wheel as ``convo/_migrations``; :func:`script_location` finds the
installed copy first, else the checkout's (editable installs, tests).
Migrations run on a connection handed to ``env.py`` through
``config.attributes["connection"]`` (Alembic cookbook, "Sharing a Connection").
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from ._exceptions import ConfigurationError

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic is imported inside the functions: `import convo` should not pay for
# it, only migrating does.

__all__ = [
    "alembic_config",
    "current_revision",
    "downgrade",
    "head_revision",
    "script_location",
    "upgrade",
]

_PACKAGE_DIR = Path(__file__).resolve().parent


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


def upgrade(connection: sa.Connection, revision: str = "head") -> None:
    """Upgrade the database behind ``connection`` to ``revision`` and commit."""
    from alembic import command

    with _foreign_keys_off(connection):
        command.upgrade(alembic_config(connection), revision)


def downgrade(connection: sa.Connection, revision: str) -> None:
    """Downgrade the database behind ``connection`` to ``revision`` and commit."""
    from alembic import command

    with _foreign_keys_off(connection):
        command.downgrade(alembic_config(connection), revision)


class _foreign_keys_off:  # used like a function
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
