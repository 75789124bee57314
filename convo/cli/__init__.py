"""The ``convo`` command line: a thin shell over the library.

Kept out of ``import convo``: typer and rich load only when the command runs.
"""

from __future__ import annotations

from typing import Annotated

import typer

from . import _api, _context, _conversations, _db, _demo, _export, _replay, _runs, _turns
from ._common import ConvoGroup

__all__ = ["app", "main"]

app = typer.Typer(
    cls=ConvoGroup,  # every command's errors: one line on stderr, never a traceback
    name="convo",
    help="LLM conversations in SQL: store, build token-budgeted contexts, send.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(
    ctx: typer.Context,
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            help="Database URL (default: $CONVO_DATABASE_URL, else sqlite:///convo.db).",
            show_default=False,
        ),
    ] = None,
) -> None:
    ctx.obj = {"db": db}


app.add_typer(_db.app, name="db")
_conversations.register(app)
_context.register(app)
_api.register(app)
_turns.register(app)
_runs.register(app)
_replay.register(app)
_demo.register(app)
_export.register(app)


def main() -> None:
    """Entry point of the ``convo`` script."""
    app()
