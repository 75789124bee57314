"""How the turn commands print: replies, one-line run summaries, run records.

Text that comes from the database or a server (replies, request bodies,
error messages that quote them) goes through :func:`visible` before it
reaches the terminal, so a stored escape sequence cannot move the cursor,
recolour the screen, retitle the window or write the clipboard.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from rich.table import Table

from ._common import safe, visible

if TYPE_CHECKING:
    from .._records import Run
    from .._turns.plan import TurnResult

__all__ = [
    "body_text", "reply_text", "run_line", "run_table", "safe", "seq_ranges", "tool_calls_text",
    "turn_summary", "visible",
]


def seq_ranges(seqs: Iterable[int]) -> str:
    """``[1, 2, 3, 7, 9, 10]`` as ``"1-3, 7, 9-10"``."""
    out: list[str] = []
    ordered = sorted(set(seqs))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ", ".join(out) or "none"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _tokens(run: Run) -> str:
    est, rep = run.estimated_prompt_tokens, run.reported_prompt_tokens
    prompt = f"{rep if rep is not None else est} prompt"
    if rep is not None and est is not None and rep != est:
        prompt += f" (estimated {est})"
    if run.completion_tokens is not None:
        prompt += f" + {run.completion_tokens} completion"
    return prompt + " tokens"


def turn_summary(result: TurnResult, asked_for: str) -> str:
    """One line (rich markup) about a finished turn: run, model, tokens, context, time."""
    run = result.run
    parts: list[str] = []
    if run is not None:
        parts.append(f"run {run.id} {run.status}")
        parts.append(f"{safe(run.model)} ({run.mode})")
        parts.append(_tokens(run))
    if result.report is not None:
        report = result.report
        n = len(report.kept_seqs)
        kept = f"{n} message{'' if n == 1 else 's'} kept"
        if report.dropped_count:
            kept += f", {report.dropped_count} dropped"
        if report.summary is not None:
            kept += ", a summary"
        parts.append(kept)
    if run is not None and run.latency_ms is not None:
        parts.append(_ms(run.latency_ms))
    if len(result.runs) > 1:
        parts.append(f"{len(result.runs)} requests")
    if result.from_store:
        parts.append("stored earlier under this idempotency key: nothing sent")
    if result.duplicate:
        parts.append("a concurrent send stored its reply first: that one is shown")
    if result.conversation_id != asked_for:
        parts.append(f"branch {result.conversation_id}")
    return "[dim]" + " · ".join(parts) + "[/]"


def tool_calls_text(calls: Iterable[Any]) -> str:
    """``→ name(arguments)`` per call, one per line."""
    return "\n".join(f"→ {c.function.name}({c.function.arguments}) [id {c.id}]" for c in calls)


def reply_text(response: dict[str, Any] | None) -> str | None:
    """The reply a run's stored ``response`` holds (chat or completion, whole or partial)."""
    if not response:
        return None
    choices = response.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return None
    choice = choices[0]
    if "text" in choice:
        return str(choice["text"])
    message = choice.get("message") or {}
    pieces = []
    if message.get("content"):
        pieces.append(str(message["content"]))
    if message.get("refusal"):
        pieces.append(f"[refusal] {message['refusal']}")
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        pieces.append(f"→ {fn.get('name')}({fn.get('arguments')}) [id {call.get('id')}]")
    return "\n".join(pieces)


def run_line(run: Run) -> str:
    """One run on one line (rich markup), its full id first so it can be copied."""
    est, rep = run.estimated_prompt_tokens, run.reported_prompt_tokens
    tokens = f"{rep if rep is not None else est}"
    if run.completion_tokens is not None:
        tokens += f"+{run.completion_tokens}"
    status = {"ok": "green", "pending": "yellow"}.get(run.status, "red")
    line = (
        f"{run.id}  {run.created_at.strftime('%Y-%m-%d %H:%M:%S')}  [{status}]{run.status}[/]  "
        f"{safe(run.model)} ({run.mode})  round {run.round}  kept {len(run.kept_seqs)}  "
        f"{tokens} tokens  {_ms(run.latency_ms)}"
    )
    if run.error_type:
        line += f"  {safe(run.error_type)}"
    return line


def run_table(run: Run) -> Table:
    """What a run recorded, field by field (the request body and reply come separately)."""
    s = run.settings
    url = f"{(run.base_url or '').rstrip('/')}/{run.endpoint.replace('.', '/')}"
    turn = f"round {run.round}"
    if run.idempotency_key:
        turn += f", idempotency key {run.idempotency_key}"
    budget = (f"{s.get('budget')} prompt tokens, {s.get('reply_reserve')} reserved for the "
              f"reply, encoding {s.get('encoding')}")
    template = "-"
    if s.get("template"):
        template = f"{s.get('template')} (sha256 {str(s.get('template_sha256'))[:12]})"
    timings = (f"{run.attempts} attempt(s), first byte {_ms(run.ttfb_ms)}, "
               f"total {_ms(run.latency_ms)}")
    created = run.created_at.isoformat()
    if run.finished_at:
        created += f", finished {run.finished_at.isoformat()}"
    rows: list[tuple[str, str]] = [
        ("status", run.status + (f" ({run.finish_reason})" if run.finish_reason else "")),
        ("conversation", run.conversation_id + (f" (owner {run.owner})" if run.owner else "")),
        ("request", f"POST {url}" + (" (streamed)" if run.stream else "")),
        ("model / mode", f"{run.model} / {run.mode}"),
        ("turn", turn),
        ("budget", budget),
        ("template", template),
        ("kept seqs", f"{seq_ranges(run.kept_seqs)} ({len(run.kept_seqs)} messages)"),
        ("summary", "-" if run.summary_id is None else f"summary {run.summary_id}"),
        ("tokens", _tokens(run)),
        ("timings", timings),
        ("created", created),
    ]
    if run.system_fingerprint or run.seed is not None:
        seed = "-" if run.seed is None else str(run.seed)
        rows.append(("fingerprint / seed", f"{run.system_fingerprint or '-'} / {seed}"))
    if run.reply_message_id is not None:
        rows.append(("reply message", f"id {run.reply_message_id}"))
    if run.error_type or run.error_message:
        rows.append(("error", f"{run.error_type or ''}: {run.error_message or ''}"))
    for link, value in (("reproduces", run.reproduces_id), ("replays", run.replays_id)):
        if value:
            rows.append((link, value))
    table = Table("", "", title=f"run {run.id}", show_header=False)
    for key, value in rows:
        table.add_row(key, safe(value))
    return table


def body_text(run: Run) -> str:
    """The request body, indented for reading (the stored text is the exact one sent)."""
    try:
        return visible(json.dumps(run.body(), ensure_ascii=False, indent=2))
    except ValueError:
        return visible(run.request)
