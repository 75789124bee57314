"""``convo runs`` and ``convo run show``: the record of every request sent to a model."""

from __future__ import annotations

from typing import Annotated

import typer

from ._common import console, emit_json, open_store
from ._turn_view import body_text, reply_text, run_line, run_table, visible
from ._turns import OwnerOpt, turn_errors

__all__ = ["register"]

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]

run_app = typer.Typer(help="One run: the record of a request sent to a model.",
                      no_args_is_help=True)


@run_app.command("show")
def show(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="Run id (from `convo runs`).")],
    owner: OwnerOpt = None,
    json_: JsonOpt = False,
) -> None:
    """What a run sent and got: request body, settings, kept seqs, tokens, status, reply."""
    with open_store(ctx) as store, turn_errors():
        run = store.get_run(run_id, owner=owner)
    if json_:
        emit_json(run)
        return
    console.print(run_table(run))
    console.print("[bold]request body[/] (as sent)", highlight=False)
    console.out(body_text(run), highlight=False)
    reply = reply_text(run.response)
    label = "reply" if run.status == "ok" else f"reply (partial, run {run.status})"
    console.print(f"[bold]{label}[/]", highlight=False)
    console.out("-" if reply is None else visible(reply), highlight=False)


def register(app: typer.Typer) -> None:
    @app.command()
    def runs(
        ctx: typer.Context,
        conversation_id: Annotated[str, typer.Argument(help="Conversation (or branch) id.")],
        limit: Annotated[int, typer.Option("--limit", help="At most this many.")] = 20,
        cursor: Annotated[
            str | None, typer.Option("--cursor", help="Continue after this page.")
        ] = None,
        owner: OwnerOpt = None,
        json_: JsonOpt = False,
    ) -> None:
        """List a conversation's runs (requests sent to a model), newest first."""
        with open_store(ctx) as store, turn_errors():
            conversation = store.get_conversation(conversation_id, owner=owner)
            page = store.list_runs(conversation_id, owner=owner, limit=limit, cursor=cursor)
        if json_:
            emit_json({"items": page.items, "next_cursor": page.next_cursor})
            return
        for run in page.items:
            console.print(run_line(run), highlight=False, soft_wrap=True)
        if not page.items:
            console.print("no runs", highlight=False)
        if page.next_cursor:
            console.print(f"more: convo runs {conversation_id} --cursor {page.next_cursor}",
                          highlight=False, markup=False, soft_wrap=True)
        current = conversation.current_branch_id
        if current and current != conversation_id:
            console.print(f"turns on this thread now go to branch {current}: "
                          f"convo runs {current}", highlight=False, markup=False, soft_wrap=True)

    app.add_typer(run_app, name="run")
