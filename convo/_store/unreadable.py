"""Why stored rows could not be read: the slow path of :class:`~convo.StoredDataError`.

When SQLAlchemy fails to process a result's rows (a value changed outside convo:
JSON that is not JSON, a timestamp that is not one), :func:`unreadable_result`
names the tables, and :func:`unread_value` reads the rows again value by value to
name the column and the row, as the driver path does
(:func:`convo._store.driver.unreadable`). Nothing here runs unless a read failed.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Result

from .._exceptions import StoredDataError
from . import driver
from .core import Op

__all__ = ["unread_value", "unreadable_result"]


def unreadable_result(result: Result[Any]) -> StoredDataError | None:
    """The error of a result whose rows SQLAlchemy failed to process: its tables
    (None when the result has no compiled statement: not a stored row's fault)."""
    compiled = getattr(getattr(result, "context", None), "compiled", None)
    columns = getattr(compiled, "_result_columns", None)
    if not columns:
        return None
    tables = sorted({o.table.name for col in columns for o in col[2]
                     if isinstance(o, sa.Column) and o.table is not None})
    return StoredDataError(" / ".join(tables) or "an unknown table",
                           problem="not JSON, or not a timestamp")


def unread_value(conn: Connection, op: Op) -> StoredDataError | None:
    """The error of the value that :func:`fetch` could not read from ``op``'s rows
    (it names the tables only), naming its column and row as the driver path does
    (see :func:`convo._store.driver.unreadable`): the SELECT is run again and its
    rows read as the driver gives them, then each value through its column's
    processor. The slow path of both shells, after the error; None when it is not
    found again (the row changed meanwhile) or ``op`` is not a SELECT (a write is
    not run twice)."""
    if not getattr(op.stmt, "is_select", False):
        return None
    try:
        result = conn.execute(op.stmt, op.params)
        try:
            context = result.context
            cursor = context.cursor
            description, rows = cursor.description, cursor.fetchall()
        finally:
            result.close()
        compiled: Any = context.compiled
        types = tuple(col[3] for col in compiled._result_columns)
        procs = tuple(t._cached_result_processor(conn.dialect, d[1])
                      for t, d in zip(types, description, strict=True))
        prepared = driver.DriverStatement(
            stmt=op.stmt, sql=compiled.string, bind=lambda _: (), processors=procs,
            returns_rows=True, result_types=types,
        )
        return driver.unreadable(prepared, rows, procs, compiled)
    except Exception:  # noqa: BLE001 - the names are a help; the tables' error is raised anyway
        return None
