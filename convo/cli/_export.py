"""``convo export | import``: conversations to and from JSON Lines files."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from ._common import ReadUrlOpt, emit_json, fail, open_store


def _report(text: str) -> None:
    # stderr: stdout may be the export itself
    sys.stderr.write(text + "\n")


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export(
        ctx: typer.Context,
        ids: Annotated[
            list[str] | None,
            typer.Argument(help="Conversation ids (default: all).", show_default=False),
        ] = None,
        format_: Annotated[
            str, typer.Option("--format", help="native | chat | completion")
        ] = "native",
        output: Annotated[
            str | None, typer.Option("-o", "--output", help="File to write (default: stdout).")
        ] = None,
        owner: Annotated[str | None, typer.Option("--owner", help="Only this owner's.")] = None,
        template: Annotated[
            str | None,
            typer.Option("--template", help="completion: a built-in name, .jinja or "
                                            "tokenizer_config.json (default: transcript)."),
        ] = None,
        model: Annotated[
            str | None,
            typer.Option("--model", help="completion: cut prompts to this model's budget."),
        ] = None,
        budget: Annotated[
            int | None, typer.Option("--budget", help="completion: prompt tokens (needs --model).")
        ] = None,
        train_on: Annotated[
            str, typer.Option("--train-on", help="chat / completion: all | last assistant message.")
        ] = "all",
        include_replays: Annotated[
            bool, typer.Option("--include-replays", help="chat / completion: replay branches too.")
        ] = False,
        tokens: Annotated[
            bool, typer.Option("--tokens/--no-tokens", help="native: stored token counts.")
        ] = True,
        read_url: ReadUrlOpt = None,
        json_: Annotated[bool, typer.Option("--json", help="Print the stats as JSON.")] = False,
    ) -> None:
        """Write conversations as JSON Lines: native (lossless), or chat / completion
        fine-tuning data."""
        from .._transfer.exporter import export_conversations

        with open_store(ctx, read_url) as store:
            stats = export_conversations(
                store, output if output is not None else sys.stdout, format=format_,  # type: ignore[arg-type]
                ids=ids or None, owner=owner, include_replays=include_replays, tokens=tokens,
                train_on=train_on,  # type: ignore[arg-type]
                template=template, model=model, budget=budget,
            )
        if json_:
            if output is None:
                raise fail("--json needs -o FILE (stdout holds the export)")
            emit_json(stats)
            return
        line = (f"exported {stats.conversations} conversation(s), {stats.messages} message(s), "
                f"{stats.lines} line(s) ({stats.format})")
        if stats.skipped:
            line += f"; skipped {stats.skipped}"
            for cid, reason in stats.skipped_reasons[:5]:
                line += f"\n  {cid}: {reason}"
        _report(line)

    @app.command("import")
    def import_(
        ctx: typer.Context,
        file: Annotated[str, typer.Argument(help="A native export file ('-': stdin).")],
        new_ids: Annotated[
            bool, typer.Option("--new-ids", help="Give every row a new id (links kept).")
        ] = False,
        json_: Annotated[bool, typer.Option("--json", help="Print the stats as JSON.")] = False,
    ) -> None:
        """Import a native export: every line is checked first, then all or nothing."""
        from .._transfer.importer import import_conversations

        source: Any = sys.stdin.buffer if file == "-" else file
        with open_store(ctx) as store:
            stats = import_conversations(store, source, new_ids=new_ids)
        if json_:
            emit_json(stats)
            return
        print(
            f"imported {stats.conversations} conversation(s), {stats.messages} message(s), "
            f"{stats.summaries} summary(ies), {stats.runs} run(s)"
        )
        for old, new in stats.id_map.items():
            print(f"{old} -> {new}")
