"""Shared plumbing of the CLI: the database option, output, and error handling.

Two promises hold for every command:

* **No traceback.** :class:`ConvoGroup` runs every command inside
  :func:`report_errors`: convo's errors become one ``error: ...`` line on
  stderr, anything unexpected too (with its type), and the exit status is 1
  (2 stays typer's own, for usage errors).
* **No terminal escapes from data.** Text that comes from the database or a
  server (titles, messages, names, replies, error messages that quote them) is
  printed through :func:`visible`, which shows control characters as
  ``\\x1b``-style escapes: a stored ``ESC ] 52`` cannot write the clipboard, a
  stored cursor-up cannot rewrite earlier output. ``--json`` output escapes
  the same characters as JSON ``\\u`` escapes, so it stays exact JSON.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from .._exceptions import ConvoError, NotMigratedError

__all__ = [
    "DEFAULT_DB",
    "ConvoGroup",
    "ReadUrlOpt",
    "command_line",
    "console",
    "db_url",
    "emit_json",
    "fail",
    "open_store",
    "read_db_url",
    "report_errors",
    "safe",
    "shown_url",
    "upgrade_command",
    "visible",
    "visible_data",
]

DEFAULT_DB = "sqlite:///convo.db"
READ_ENV = "CONVO_READ_DATABASE_URL"
console = Console()

#: ``--read-url``: the heavy readers' read replica (export, search, replay).
ReadUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--read-url",
        help="Read from this replica of the database (default: $CONVO_READ_DATABASE_URL "
             "when --db is not given).",
        show_default=False,
    ),
]

# C0 controls but tab and newline, DEL, C1 controls (U+009B is a one-character
# CSI to many terminals), and the invisible bidi overrides and isolates that
# reorder what a line appears to say.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# What json.dumps(ensure_ascii=False) leaves raw of the above (it escapes C0),
# plus the line separators some terminals and JavaScript treat as newlines.
_JSON_RAW = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str) -> str:
    """``text`` with control characters shown as escapes (``\\x1b``, ``\\u202e``), so
    printing it cannot move the cursor, recolour, retitle or write the clipboard."""
    return _CONTROL.sub(_escape_char, text)


def visible_data(value: Any) -> Any:
    """``value`` (JSON data) with :func:`visible` applied to every string, for display."""
    if isinstance(value, str):
        return visible(value)
    if isinstance(value, list):
        return [visible_data(v) for v in value]
    if isinstance(value, dict):
        return {visible(str(k)): visible_data(v) for k, v in value.items()}
    return value


def safe(text: str) -> str:
    """:func:`visible` and escaped for rich markup: for text inside a markup string or a table."""
    return escape(visible(text))


def db_url(ctx: typer.Context) -> str:
    """The database URL: ``--db``, else ``CONVO_DATABASE_URL``, else a SQLite file ``convo.db``."""
    url = _db_flag(ctx)
    return url or os.environ.get("CONVO_DATABASE_URL") or DEFAULT_DB


def read_db_url(ctx: typer.Context, flag: str | None) -> str | None:
    """The read replica's URL: ``--read-url``, else ``CONVO_READ_DATABASE_URL`` when the
    database is not named by ``--db`` either (the environment's replica belongs to the
    environment's database), else None (read from the database itself)."""
    if flag:
        return flag
    return None if _db_flag(ctx) else os.environ.get(READ_ENV) or None


def _db_flag(ctx: typer.Context) -> str | None:
    root = ctx.find_root()
    return (root.obj or {}).get("db") if root.obj else None


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` on stderr (unwrapped, so it can be grepped) and return Exit."""
    sys.stderr.write(f"error: {visible(message)}\n")
    sys.stderr.flush()
    return typer.Exit(code)


def _usage_or_exit(exc: BaseException) -> bool:
    """Typer's (and click's) own control flow: exits, aborts, usage errors (exit code 2)."""
    return isinstance(exc, (typer.Exit, typer.Abort)) or isinstance(
        getattr(exc, "exit_code", None), int
    )


def _advice(ctx: typer.Context, exc: ConvoError) -> str:
    """The message for ``exc``, with advice in CLI terms (flags, not Python arguments)."""
    if isinstance(exc, NotMigratedError):
        if exc.newer or exc.replica:  # advice about convo itself, or about the replica
            return str(exc)
        state = f"is at revision {exc.revision!r}" if exc.revision else "has no convo schema"
        return f"database {shown_url(db_url(ctx))} {state}: run `{upgrade_command(ctx)}`"
    return f"{type(exc).__name__}: {exc}"


def command_line(ctx: typer.Context, *args: str) -> str:
    """``convo ARGS`` for the user to run next, with the ``--db`` this invocation was
    given (password masked), quoted for a POSIX shell."""
    flag = _db_flag(ctx)
    words = ["convo", *(["--db", shown_url(flag)] if flag else []), *args]
    return " ".join(shlex.quote(w) for w in words)


def upgrade_command(ctx: typer.Context) -> str:
    """The command that migrates the database this invocation uses."""
    return command_line(ctx, "db", "upgrade")


def shown_url(url: str) -> str:
    """``url`` as the user wrote it, with any password masked (a secret is never printed)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return "<invalid url>"
    return url if parsed.password is None else parsed.render_as_string(hide_password=True)


@contextmanager
def report_errors(ctx: typer.Context) -> Iterator[None]:
    """Turn any error into one clear line on stderr and exit status 1 (never a traceback)."""
    try:
        yield
    except ConvoError as exc:
        raise fail(_advice(ctx, exc)) from None
    except Exception as exc:  # the CLI promises no tracebacks
        if _usage_or_exit(exc) or isinstance(exc, BrokenPipeError):
            raise  # typer's own: usage errors, exits; a closed pipe (`| head`) ends quietly
        if isinstance(exc, OSError):
            raise fail(f"{type(exc).__name__}: {exc}") from None
        raise fail(
            f"unexpected {type(exc).__name__}: {exc} (a bug in convo; please report it)"
        ) from None


class ConvoGroup(TyperGroup):
    """The root command group: runs every subcommand inside :func:`report_errors`."""

    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]
        with report_errors(ctx):
            return super().invoke(ctx)


@contextmanager
def open_store(ctx: typer.Context, read_url: str | None = None) -> Iterator[Any]:
    """The command's :class:`~convo.Store`; ``read_url``: its ``--read-url`` flag (the
    commands that take one)."""
    from .._store.store import Store

    store = Store(db_url(ctx), read_url=read_db_url(ctx, read_url))
    try:
        yield store
    finally:
        store.close()


def to_jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    return value


def json_text(value: Any, *, indent: int | None = 2) -> str:
    """JSON text of ``value``, readable (non-ASCII kept) but with every character a
    terminal could act on written as a ``\\u`` escape (same JSON value)."""
    text = json.dumps(to_jsonable(value), ensure_ascii=False, indent=indent)
    return _JSON_RAW.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def emit_json(value: Any) -> None:
    sys.stdout.write(json_text(value) + "\n")
