"""``convo db upgrade`` / ``convo db current``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from ._common import console, db_url, emit_json, guard

app = typer.Typer(
    help="Database schema (Alembic migrations shipped with convo).", no_args_is_help=True
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@app.command()
def upgrade(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """Create or upgrade the database schema to the newest revision."""
    from .._store import Store

    url = db_url(ctx)
    with guard(), Store(url) as store:
        store.migrate()
        rev = store.current_revision()
    if json_:
        emit_json({"database": _safe(url), "revision": rev})
    else:
        console.print(
            f"database {escape(_safe(url))} is at revision [bold]{rev}[/]", highlight=False
        )


@app.command()
def current(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """Show the schema revision of the database (none if never migrated)."""
    from .._store import Store

    url = db_url(ctx)
    with guard(), Store(url) as store:
        rev = store.current_revision()
    if json_:
        emit_json({"database": _safe(url), "revision": rev})
    else:
        console.print(
            f"database {escape(_safe(url))}: revision [bold]{rev or 'none (run: convo db upgrade)'}[/]",
            highlight=False,
        )


def _safe(url: str) -> str:
    """The URL without its password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a bad URL is reported by the store itself
        return "<invalid url>"
