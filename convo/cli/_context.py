"""``convo context`` and ``convo tokens``: what would be sent, and what it costs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from .._exceptions import UnknownModelError
from ._common import console, emit_json, fail, open_store, safe, visible_data

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def register(app: typer.Typer) -> None:
    @app.command()
    def context(
        ctx: typer.Context,
        conversation_id: Annotated[str, typer.Argument(help="Conversation id.")],
        model: Annotated[str, typer.Option("--model", help="Target model.")],
        mode: Annotated[str, typer.Option("--mode", help="chat | completion")] = "chat",
        template: Annotated[
            str | None,
            typer.Option(
                "--template",
                help="Completion template: a name, a .jinja file or a tokenizer_config.json.",
            ),
        ] = None,
        budget: Annotated[int | None, typer.Option("--budget", help="Prompt token budget.")] = None,
        reserve: Annotated[
            int | None, typer.Option("--reserve", help="Tokens reserved for the reply.")
        ] = None,
        encoding: Annotated[
            str | None, typer.Option("--encoding", help="Tokenizer encoding for unknown models.")
        ] = None,
        owner: Annotated[str | None, typer.Option("--owner", help="Scope to this owner.")] = None,
        json_: JsonOpt = False,
    ) -> None:
        """Print the request body that would be sent for a conversation, and the build report."""
        from .._context.builder import ContextBuilder

        if mode not in ("chat", "completion"):
            raise fail(f"--mode must be chat or completion, not {mode!r}")
        with open_store(ctx) as store, _model_advice(model, encoding, budget):
            builder = ContextBuilder(
                store,
                model=model,
                mode="completion" if mode == "completion" else "chat",
                template=template,
                budget=budget,
                reserve=reserve,
                encoding=encoding,
            )
            built = builder.build(conversation_id, owner=owner)
        body = built.request()
        if json_:
            emit_json({"request": body, "report": built.report})
            return
        console.print_json(data=visible_data(body))
        console.print(_report_table(built.report))

    @app.command()
    def tokens(
        file: Annotated[Path, typer.Argument(help="A JSON list of chat messages ('-' for stdin).")],
        model: Annotated[str, typer.Option("--model", help="Model whose billing rules apply.")],
        encoding: Annotated[
            str | None, typer.Option("--encoding", help="Encoding for unknown models.")
        ] = None,
        tools: Annotated[
            Path | None, typer.Option("--tools", help="A JSON list of tool definitions.")
        ] = None,
        json_: JsonOpt = False,
    ) -> None:
        """Count the prompt tokens of a chat request, as OpenAI bills them."""
        import sys

        from .._messages import load_messages
        from .._tokens.counter import count_tokens

        raw = _decode(sys.stdin.buffer.read(), "stdin") if str(file) == "-" else _read(file)
        messages = load_messages(raw)
        tool_defs = _tools(tools) if tools else None
        with _model_advice(model, encoding, budget=0):
            n = count_tokens(messages, model=model, tools=tool_defs, encoding=encoding)
        if json_:
            emit_json({"model": model, "messages": len(messages), "prompt_tokens": n})
        else:
            console.print(
                f"{n} prompt tokens ({len(messages)} messages, model {model})", highlight=False
            )


@contextmanager
def _model_advice(model: str, encoding: str | None, budget: int | None) -> Iterator[None]:
    """An unknown model, answered with the flags that fix it (not the Python arguments)."""
    try:
        yield
    except UnknownModelError:
        needs = []
        if encoding is None:
            needs.append("--encoding ENCODING (e.g. --encoding o200k_base)")
        if budget is None:
            needs.append("--budget N (its prompt token budget)")
        fix = " and ".join(needs) or "--encoding and --budget"
        raise fail(f"convo does not know the model {model!r}: pass {fix}") from None


def _read(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc.strerror}") from None
    return _decode(data, str(path))


def _decode(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise fail(f"{where} is not UTF-8 text (byte {exc.start}): {exc.reason}") from None


def _tools(path: Path) -> list[dict[str, Any]]:
    try:
        tools = json.loads(_read(path))
    except ValueError as exc:  # JSONDecodeError, or a number too long to convert
        raise fail(f"{path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise fail(f"{path} is not valid JSON: nested too deeply") from None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise fail(f"{path} must hold a JSON list of tool definitions (objects)")
    return tools


def _report_table(report: Any) -> Table:
    t = Table("", "value", title="context report", show_header=False)
    rows = [
        (
            "model / mode",
            f"{report.model} / {report.mode}"
            + (f" ({report.template})" if report.template else ""),
        ),
        ("encoding", report.encoding + ("" if report.exact else " (some counts estimated)")),
        ("budget", str(report.budget)),
        ("prompt tokens", str(report.prompt_tokens)),
        ("budget left", str(report.budget_left)),
        ("reply reserve", "—" if report.reply_reserve is None else str(report.reply_reserve)),
        (
            "overhead / pinned / summary / history",
            f"{report.overhead_tokens} / {report.pinned_tokens} / {report.summary_tokens} / {report.history_tokens}",
        ),
        ("kept messages", str(len(report.kept_seqs))),
        (
            "dropped",
            f"{report.dropped_count}"
            + (f" (seq ≤ {report.dropped_through})" if report.dropped_through else ""),
        ),
        (
            "summary",
            f"seq {report.summary.start_seq}–{report.summary.end_seq}, {report.summary.tokens} tokens"
            if report.summary
            else "—",
        ),
        (
            "truncated",
            f"seq {report.truncated.seq} ({report.truncated.mode})" if report.truncated else "—",
        ),
        ("stopped because", report.stop_reason),
        ("rows read", str(report.rows_read)),
    ]
    for k, v in rows:
        t.add_row(k, safe(v))
    return t
