"""``convo reproduce | replay | replays``: reproduce runs, replay stored threads against arms."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from ._common import (
    ReadUrlOpt,
    console,
    db_url,
    emit_json,
    fail,
    open_store,
    read_db_url,
    visible,
)

if TYPE_CHECKING:
    from .._replay.plan import ReplayReport

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
OwnerOpt = Annotated[str | None, typer.Option("--owner", help="Scope to this owner.")]
BaseUrlOpt = Annotated[
    str | None, typer.Option("--base-url", help="Server base URL (default: $OPENAI_BASE_URL).")
]


def _visible(text: str | None, limit: int = 80) -> str:
    """Stored or remote text for a table cell: control characters shown, not obeyed."""
    if text is None:
        return "-"
    shown = visible(text).replace("\n", "\\n")
    if len(shown) > limit:
        shown = shown[: limit - 1] + "…"
    return escape(shown)


def _async_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    driver = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+psycopg"}.get(
        parsed.drivername, parsed.drivername
    )
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


def _where(pairs: list[str] | None) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise fail(f"--where expects KEY=VALUE, got {pair!r}", 2)
        try:
            meta[key] = json.loads(value)
        except json.JSONDecodeError:
            meta[key] = value
    return {"metadata": meta} if meta else {}


def _report_table(report: ReplayReport) -> None:
    arms = Table(title=f"replay {report.replay.id} ({report.replay.mode}, {report.replay.status})")
    for column in ("arm", "turns", "ok", "failed", "skipped", "similarity", "prompt tok",
                   "completion tok", "latency ms", "judge wins"):
        arms.add_column(column)
    for a in report.arms():
        arms.add_row(
            escape(a.arm), str(a.turns), str(a.ok), str(a.failed), str(a.skipped),
            f"{a.mean_similarity:.2f}" if a.mean_similarity is not None else "-",
            str(a.prompt_tokens), str(a.completion_tokens),
            f"{a.mean_latency_ms:.0f}" if a.mean_latency_ms is not None else "-", str(a.wins),
        )
    console.print(arms)
    turns = Table(title="side by side")
    turns.add_column("conversation")
    turns.add_column("turn")
    turns.add_column("original")
    names = [a.arm for a in report.arms()]
    for name in names:
        turns.add_column(escape(name))
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for item in report.items:
        row = rows.setdefault((item.conversation_id, item.turn), {"original": item.original_text})
        cell = _visible(item.text, 60) if item.status == "ok" else f"[red]{item.status}[/red]"
        if item.similarity is not None:
            cell += f" ({item.similarity:.2f})"
        row[item.arm] = cell
    for (cid, turn), row in rows.items():
        turns.add_row(cid[-8:], str(turn), _visible(row["original"], 60),
                      *(row.get(n, "-") for n in names))
    console.print(turns)


def register(app: typer.Typer) -> None:
    @app.command()
    def reproduce(
        ctx: typer.Context,
        run_id: Annotated[str, typer.Argument(help="The run to re-send.")],
        base_url: BaseUrlOpt = None,
        owner: OwnerOpt = None,
        json_: JsonOpt = False,
    ) -> None:
        """Re-send a run's recorded body byte for byte and compare the answers."""
        from .._client.client import OpenAIClient
        from .._replay.replayer import Replayer

        with open_store(ctx) as store, OpenAIClient(base_url=base_url) as client:
            rep = Replayer(store, client).reproduce(run_id, owner=owner)
        if json_:
            emit_json(rep)
            return
        table = Table(title=f"reproduction of run {run_id}")
        table.add_column("")
        table.add_column("original")
        table.add_column("now")
        o, n = rep.original, rep.run
        table.add_row("reply", _visible(rep.original_text), _visible(rep.text))
        table.add_row("finish reason", str(o.finish_reason), str(n.finish_reason))
        table.add_row("fingerprint", str(o.system_fingerprint), str(n.system_fingerprint))
        table.add_row("prompt / completion tokens",
                      f"{o.reported_prompt_tokens} / {o.completion_tokens}",
                      f"{n.reported_prompt_tokens} / {n.completion_tokens}")
        table.add_row("latency ms", f"{o.latency_ms or 0:.0f}", f"{n.latency_ms or 0:.0f}")
        console.print(table)
        console.print(
            f"same text: {rep.same_text}  similarity: {rep.similarity:.3f}  "
            f"same fingerprint: {rep.same_fingerprint}  seed: {rep.seed}  new run: {n.id}",
            highlight=False,
        )

    @app.command()
    def replay(
        ctx: typer.Context,
        ids: Annotated[
            list[str] | None,
            typer.Argument(help="Conversation ids (or: show REPLAY_ID).", show_default=False),
        ] = None,
        arm: Annotated[
            list[str] | None,
            typer.Option("--arm", help="MODEL[:chat|completion[:TEMPLATE]]; repeatable."),
        ] = None,
        where: Annotated[
            list[str] | None,
            typer.Option("--where", help="Replay conversations whose metadata KEY=VALUE."),
        ] = None,
        owner: OwnerOpt = None,
        created_after: Annotated[
            datetime | None,
            typer.Option("--created-after", help="Only conversations created after this time."),
        ] = None,
        created_before: Annotated[
            datetime | None,
            typer.Option("--created-before", help="Only conversations created before this time."),
        ] = None,
        teacher_forcing: Annotated[
            bool, typer.Option("--teacher-forcing", help="Answer the original history.")
        ] = False,
        concurrency: Annotated[
            int, typer.Option("--concurrency", help="Conversations at once.", min=1, max=256)
        ] = 4,
        judge: Annotated[
            str | None, typer.Option("--judge", help="A model that compares the replies.")
        ] = None,
        resume: Annotated[
            str | None, typer.Option("--resume", help="Resume this replay id.")
        ] = None,
        base_url: BaseUrlOpt = None,
        csv_out: Annotated[
            Path | None, typer.Option("--csv", help="Also write the report as CSV here.")
        ] = None,
        read_url: ReadUrlOpt = None,
        json_: JsonOpt = False,
    ) -> None:
        """Replay stored conversations against arms (``convo replay show ID`` shows one)."""
        args = list(ids or [])
        if args[:1] == ["show"]:
            if len(args) != 2:
                raise fail("usage: convo replay show REPLAY_ID", 2)
            _show(ctx, args[1], owner, json_, csv_out)
            return
        if not arm and resume is None:
            raise fail("give at least one --arm MODEL[:mode[:template]]", 2)
        filters = _where(where)
        for key, value in (("created_after", created_after), ("created_before", created_before)):
            if value is not None:
                filters[key] = value
        if not args and not filters and owner is None and resume is None:
            raise fail("give conversation ids, --where KEY=VALUE, --created-after/--before or "
                       "--owner", 2)
        report = _run_replay(ctx, args, arm or [], filters, owner, teacher_forcing,
                             concurrency, judge, resume, base_url, quiet=json_,
                             read_url=read_db_url(ctx, read_url))
        if csv_out is not None:
            csv_out.write_text(report.to_csv(), encoding="utf-8")
        if json_:
            console.out(report.to_json(), highlight=False)
        else:
            _report_table(report)

    @app.command()
    def replays(
        ctx: typer.Context,
        owner: OwnerOpt = None,
        limit: Annotated[int, typer.Option("--limit", min=1, max=10_000)] = 20,
        json_: JsonOpt = False,
    ) -> None:
        """List replays, newest first."""
        with open_store(ctx) as store:
            page = store.list_replays(owner=owner, limit=limit)
        if json_:
            emit_json(page)
            return
        table = Table(title="replays")
        for column in ("id", "mode", "status", "arms", "conversations", "created"):
            table.add_column(column)
        for r in page.items:
            spec = r.spec
            arms = spec.get("arms") if isinstance(spec.get("arms"), list) else []
            convs = spec.get("conversations") if isinstance(spec.get("conversations"), list) else []
            names = ", ".join(str(a.get("name")) for a in arms or [] if isinstance(a, dict))
            table.add_row(r.id, r.mode, r.status, escape(names), str(len(convs or [])),
                          r.created_at.isoformat(timespec="seconds"))
        console.print(table)


def _show(ctx: typer.Context, replay_id: str, owner: str | None, json_: bool,
          csv_out: Path | None) -> None:
    from .._replay.plan import ReplayReport

    with open_store(ctx) as store:
        report = ReplayReport(replay=store.get_replay(replay_id, owner=owner),
                              items=store.replay_items(replay_id, owner=owner))
    if csv_out is not None:
        csv_out.write_text(report.to_csv(), encoding="utf-8")
    if json_:
        console.out(report.to_json(), highlight=False)
    else:
        _report_table(report)


def _run_replay(
    ctx: typer.Context,
    ids: list[str],
    arms: list[str],
    where: dict[str, Any],
    owner: str | None,
    teacher_forcing: bool,
    concurrency: int,
    judge: str | None,
    resume: str | None,
    base_url: str | None,
    *,
    quiet: bool,
    read_url: str | None = None,
) -> ReplayReport:
    from rich.progress import Progress

    from .._client.async_client import AsyncOpenAIClient
    from .._replay.async_replayer import AsyncReplayer
    from .._store.async_store import AsyncStore

    async def go() -> ReplayReport:
        store = AsyncStore(_async_url(db_url(ctx)), read_url=read_url)
        try:
            async with AsyncOpenAIClient(base_url=base_url) as client:
                replayer = AsyncReplayer(store, client)
                with Progress(console=console, transient=True, disable=quiet) as bar:
                    task = bar.add_task("replaying", total=None)

                    def step(p: Any) -> None:
                        bar.update(task, total=p.total, completed=p.done)

                    return await replayer.replay(
                        ids or None, arms=arms, where=where or None, owner=owner,
                        mode="teacher-forcing" if teacher_forcing else "continue",
                        judge=judge, replay_id=resume, concurrency=concurrency,
                        on_progress=step,
                    )
        finally:
            await store.close()

    return asyncio.run(go())
