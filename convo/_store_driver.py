"""The hot read path: selected statements run on the DBAPI cursor.

Reading the newest messages is what every context build does, so its cost is
the floor of convo's latency. SQLAlchemy's ``Connection.execute`` spends more
than the database does on such small reads (compiled-cache lookup, ``Result``
and ``Row`` objects); for the few statements marked ``driver=True`` the shells
instead run the SQL that SQLAlchemy compiled for the dialect, once, straight
on the driver's cursor, then apply the very result processors SQLAlchemy
would (JSON decoding, UTC datetimes), so the values are the same. Rows come
back as plain tuples, read by position. When anything listens to the
engine's cursor events (tracing, query logging, ``echo``), the same SQL goes
through ``Connection.exec_driver_sql`` instead, so every statement is still
seen; the async shell always takes that route.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.sql import Executable

__all__ = ["DriverStatement", "observed", "prepare", "process"]


@dataclass(frozen=True, slots=True)
class DriverStatement:
    """A statement compiled for one dialect: SQL text, how to bind, how to read."""

    stmt: Executable  # kept so the cache key (its id) stays unique
    sql: str
    positional: tuple[str, ...] | None  # bind order for qmark/format styles; None: named
    defaults: Mapping[str, Any]
    processors: tuple[Callable[[Any], Any] | None, ...]

    def args(self, params: Mapping[str, Any] | None) -> tuple[Any, ...] | dict[str, Any]:
        merged = {**self.defaults, **(params or {})}
        if self.positional is None:
            return merged
        return tuple(merged[name] for name in self.positional)


def observed(conn: Any) -> bool:
    """True when anything would see statements on ``conn``: cursor events, ``echo``,
    or SQL logging (``logging.getLogger("sqlalchemy.engine")`` at INFO)."""
    d = conn.dispatch
    return bool(
        d.before_cursor_execute
        or d.after_cursor_execute
        or conn._echo
        or conn.engine._should_log_info()
    )


def prepare(dialect: Dialect, stmt: Executable) -> DriverStatement:
    """``stmt`` compiled for ``dialect``, cached on the dialect itself (so the cache
    lives and dies with its engine; the statements here are module-level)."""
    cache: dict[int, DriverStatement] = dialect.__dict__.setdefault("_convo_driver_cache", {})
    found = cache.get(id(stmt))
    if found is not None and found.stmt is stmt:
        return found
    compiled = stmt.compile(dialect=dialect)  # type: ignore[attr-defined]
    processors = tuple(
        col.type._cached_result_processor(dialect, None)
        for col in compiled._result_columns  # (keyname, name, objects, type) entries
    )
    prepared = DriverStatement(
        stmt=stmt,
        sql=compiled.string,
        positional=tuple(compiled.positiontup) if compiled.positional else None,
        # literal binds (e.g. LIMIT defaults); required ones come with each call
        defaults={
            k: bp.value for k, bp in compiled.binds.items() if not bp.required and bp.value is not None
        },
        processors=processors,
    )
    cache[id(stmt)] = prepared
    return prepared


def process(prepared: DriverStatement, rows: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
    """Apply the columns' result processors to raw driver rows."""
    procs = prepared.processors
    if not any(procs):
        return [tuple(r) for r in rows]
    active = [(i, p) for i, p in enumerate(procs) if p is not None]
    out = []
    for row in rows:
        values = list(row)
        for i, proc in active:
            value = values[i]
            # NULL stays None under every processor on this path (JSON, datetimes);
            # most optional columns are NULL, so skip the call
            if value is not None:
                values[i] = proc(value)
        out.append(tuple(values))
    return out
