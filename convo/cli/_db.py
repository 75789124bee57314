"""``convo db upgrade`` / ``convo db current``."""

from __future__ import annotations

from typing import Annotated

import typer

from ._common import console, db_url, emit_json, safe, shown_url, upgrade_command

app = typer.Typer(
    help="Database schema (Alembic migrations shipped with convo).", no_args_is_help=True
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@app.command()
def upgrade(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """Create or upgrade the database schema to the newest revision.

    Safe to run from several machines at once: migrations serialize on a lock.
    """
    from .._store.store import Store

    url = db_url(ctx)
    with Store(url) as store:
        store.migrate()
        rev = store.current_revision()
    if json_:
        emit_json({"database": shown_url(url), "revision": rev})
    else:
        console.print(
            f"database {safe(shown_url(url))} is at revision [bold]{safe(str(rev))}[/]",
            highlight=False,
            soft_wrap=True,  # a command to copy must not be broken over lines
        )


@app.command()
def current(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """Show the schema revision of the database (none if never migrated)."""
    from .._store import migrate as _migrate
    from .._store.store import Store

    url = db_url(ctx)
    with Store(url) as store:
        rev = store.current_revision()
    if json_:
        emit_json({"database": shown_url(url), "revision": rev})
        return
    if rev is None:
        shown = f"none (run: {upgrade_command(ctx)})"
    elif not _migrate.is_known(rev):
        shown = f"{rev} (migrated by a newer convo: upgrade convo)"
    else:
        shown = rev
    console.print(
        f"database {safe(shown_url(url))}: revision [bold]{safe(shown)}[/]",
        highlight=False,
        soft_wrap=True,
    )
