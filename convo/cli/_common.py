"""Shared plumbing of the CLI: the database option, output, and error handling."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console

from .._exceptions import ConvoError, NotMigratedError

__all__ = ["DEFAULT_DB", "console", "db_url", "emit_json", "fail", "guard", "open_store"]

DEFAULT_DB = "sqlite:///convo.db"
console = Console()
T = TypeVar("T")


def db_url(ctx: typer.Context) -> str:
    """The database URL: ``--db``, else ``CONVO_DATABASE_URL``, else a SQLite file ``convo.db``."""
    root = ctx.find_root()
    url = (root.obj or {}).get("db") if root.obj else None
    return url or os.environ.get("CONVO_DATABASE_URL") or DEFAULT_DB


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` on stderr (unwrapped, so it can be grepped) and return Exit."""
    sys.stderr.write(f"error: {message}\n")
    return typer.Exit(code)


@contextmanager
def guard() -> Iterator[None]:
    """Turn convo's errors into one clear line on stderr and a non-zero exit."""
    try:
        yield
    except NotMigratedError as exc:
        raise fail(f"{exc}") from None
    except ConvoError as exc:
        raise fail(f"{type(exc).__name__}: {exc}") from None


@contextmanager
def open_store(ctx: typer.Context) -> Iterator[Any]:
    from .._store import Store

    with guard():
        store = Store(db_url(ctx))
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


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(to_jsonable(value), ensure_ascii=False, indent=2) + "\n")


def run(fn: Callable[[], T]) -> T:
    with guard():
        return fn()
