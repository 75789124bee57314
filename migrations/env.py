"""Alembic environment of convo.

Where the connection comes from, in order:

1. ``config.attributes["connection"]``: an open connection handed over by
   ``Store.migrate()`` / ``convo db upgrade`` (Alembic cookbook, "Sharing a Connection");
2. ``alembic -x url=...``;
3. ``sqlalchemy.url`` in alembic.ini (unset by default);
4. the ``CONVO_DATABASE_URL`` environment variable;
5. ``sqlite:///convo.db``.

Engines come from convo's own factory, so SQLite gets the same WAL /
foreign keys / explicit BEGIN handling as the store, which also makes its DDL
transactional.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection, pool

from convo._store.engine import create_engine, database_url, resolve_url
from convo._store.migrate import foreign_keys_off, serialized
from convo._store.schema import metadata as target_metadata

config = context.config

# Only the command line configures logging; a library call must not touch
# the application's logging setup.
if config.config_file_name is not None and "connection" not in config.attributes:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    x_url = context.get_x_argument(as_dictionary=True).get("url")
    return database_url(x_url or config.get_main_option("sqlalchemy.url") or None)


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        # SQLite cannot ALTER most things: rebuild tables in batch mode.
        render_as_batch=connection.dialect.name == "sqlite",
        # With convo's BEGIN handling, SQLite DDL is transactional too.
        transactional_ddl=True,
    )


def run_migrations_offline() -> None:
    url = resolve_url(_url())
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=url.get_backend_name() == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    shared = config.attributes.get("connection")
    if shared is not None:
        _configure(shared)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(_url(), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            connection = connection.execution_options(convo_write=True)
            _configure(connection)
            # The lock Store.migrate() holds too (its connection arrives above,
            # already serialized), so `alembic upgrade` never races a store; and,
            # as there, SQLite's foreign keys off, or a batch rebuild's DROP TABLE
            # would cascade to the rows that reference the table.
            with serialized(connection), foreign_keys_off(connection), \
                    context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
