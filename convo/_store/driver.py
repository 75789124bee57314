"""The hot path: selected statements run on the DBAPI cursor.

A turn is a handful of small statements (append a message, read the newest
messages, insert a run, update it), so their cost is the floor of convo's
latency. SQLAlchemy's ``Connection.execute`` spends more than the database does
on such statements (compiled-cache lookup, execution context, ``Result`` and
``Row`` objects); for the statements a plan marks ``driver=True`` the shells
instead run the SQL that SQLAlchemy compiled for the dialect, once, straight on
the driver's cursor: parameters go through the very bind processors
SQLAlchemy would apply (JSON text, UTC datetimes, booleans), rows through its
result processors, so what is written and read is the same. Rows come back as
plain tuples, read by position. When anything listens to the engine's cursor
events (tracing, query logging, ``echo``), the same SQL goes through
``Connection.exec_driver_sql`` instead, so every statement is still seen; the
async shell always takes that route.

Transactions stay SQLAlchemy's: the shell begins them on the ``Connection``
(so convo's SQLite ``BEGIN IMMEDIATE`` hook runs) and commits or rolls back
there; only the statements in between skip the ``Connection`` machinery.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic_core import from_json
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Executable, sqltypes
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.schema import Column
from sqlalchemy.types import TypeDecorator

from .._exceptions import StoredDataError

__all__ = [
    "DriverStatement", "bind_args", "direct_ok", "execute", "execute_dbapi", "execute_text", "from_result",
    "json_value",
    "observed", "prepare", "process", "raw_execute", "rows_as", "run_direct",
]

Processor = Callable[[Any], Any]

#: Prepared statements kept per dialect; the statements themselves are module-level
#: (or cached by their builders), so this stays small; it is emptied if it ever grows.
_CACHE_MAX = 512
#: where on a dialect (its ``__dict__``) they are kept
_CACHE = "_convo_driver_cache"
_NO_CACHE: dict[Any, DriverStatement] = {}


@dataclass(frozen=True, slots=True)
class DriverStatement:
    """A statement compiled for one dialect: SQL text, how to bind, how to read."""

    stmt: Executable  # kept so the cache key (its id) stays unique
    sql: str
    #: the DBAPI parameters of one parameter set (see :func:`_binder`)
    bind: Callable[[Mapping[str, Any]], tuple[Any, ...] | dict[str, Any]]
    processors: tuple[Processor | None, ...]
    returns_rows: bool
    #: the result columns' types, for processors that depend on the driver's type
    #: code of the column (psycopg numbers), resolved from the cursor's description
    result_types: tuple[Any, ...] = ()
    lazy: bool = False

    def row_processors(self, dialect: Dialect, description: Any) -> tuple[Processor | None, ...]:
        """The result processors; those that need the cursor's type codes from ``description``."""
        if not self.lazy:
            return self.processors
        return tuple(
            p if p is not _LAZY else t._cached_result_processor(dialect, d[1])
            for p, t, d in zip(self.processors, self.result_types, description, strict=True)
        )

    def args(self, params: Mapping[str, Any] | None) -> tuple[Any, ...] | dict[str, Any]:
        """The DBAPI parameters for ``params`` (processed as SQLAlchemy would)."""
        return self.bind(params or _EMPTY)


_EMPTY: Mapping[str, Any] = {}


def _none_to_none(proc: Processor) -> bool:
    """Whether ``proc`` binds None as None (SQL NULL), so a None can skip the call:
    the processors of convo's columns (JSON with ``none_as_null``, datetimes,
    booleans) all do; one that does not (plain JSON writes ``'null'``) is called."""
    try:
        return proc(None) is None
    except Exception:  # noqa: BLE001 - refuses None: leave it to the processor
        return False


def _binder(
    positional: tuple[str, ...] | None,
    procs: Mapping[str, Processor],
    defaults: Mapping[str, Any],
    booleans: frozenset[str] = frozenset(),
) -> Callable[[Mapping[str, Any]], Any]:
    """A function turning one parameter set into the DBAPI's parameters, written out
    for the statement's binds (as :func:`_converter` is for result rows): per bind,
    the value given or the statement's literal default, through its bind processor.

    ``booleans``: the binds of Boolean type, whose True and False are processed once.

    The hot path binds every statement of a turn and every row of a bulk insert;
    a loop over the binds with a lookup per name cost several times the
    generated expression. Positional styles (qmark, format) get a tuple in bind
    order; named styles a dict of the defaults updated with the given values (as
    SQLAlchemy passes them), the processed binds replaced.
    """
    namespace: dict[str, Any] = {}

    def value(i: int, name: str, given: str) -> str:
        key = repr(name)
        if given == "p" and name in defaults:
            namespace[f"d{i}"] = defaults[name]
            raw = f"p.get({key}, d{i})"
        else:
            raw = f"{given}[{key}]"
        proc = procs.get(name)
        if proc is None:
            return raw
        namespace[f"f{i}"] = proc
        if name in booleans:
            # a Boolean's True and False bind as the processor made them once (its
            # two Python calls per value were a tenth of binding a message row)
            namespace[f"t{i}"], namespace[f"u{i}"] = proc(True), proc(False)
            return f"(t{i} if (v := {raw}) is True else u{i} if v is False else f{i}(v))"
        if _none_to_none(proc):
            return f"(f{i}(v) if (v := {raw}) is not None else None)"
        return f"f{i}({raw})"

    if positional is not None:
        items = [value(i, name, "p") for i, name in enumerate(positional)]
        body = f"    return ({''.join(item + ', ' for item in items)})\n"
    else:
        namespace["defaults"] = dict(defaults)
        body = "    out = {**defaults, **p}\n" + "".join(
            f"    out[{name!r}] = {value(i, name, 'out')}\n" for i, name in enumerate(procs)
        ) + "    return out\n"
    exec("def bind(p):\n" + body, namespace)  # noqa: S102 - generated from bind names only
    bind: Callable[[Mapping[str, Any]], Any] = namespace["bind"]
    return bind


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


def _many(params: Any) -> bool:
    """Parameter sets for executemany: a list or tuple of mappings (an Op's contract);
    exact types first, the ABC checks are slow on this path."""
    kind = type(params)
    if kind is dict or params is None:
        return False
    if kind is list or kind is tuple:
        return True
    return isinstance(params, Sequence) and not isinstance(params, Mapping)


def prepare(
    dialect: Dialect, stmt: Executable, params: Any = None, many: bool | None = None
) -> DriverStatement:
    """``stmt`` compiled for ``dialect`` (and, for an INSERT or UPDATE, for the names
    in ``params``; ``many``: they are a list of parameter sets, by default as
    :func:`bind_args` tells), cached on the dialect itself (so the cache lives and
    dies with its engine)."""
    if many is None:
        many = _many(params)
    # an INSERT / UPDATE is compiled for the parameter names (SQLAlchemy compiles the
    # VALUES / SET clauses from the first parameter set), in the caller's order: a
    # plan passes its keys in one order, and sorting them cost more than the lookup
    # (the key names the parameters of every statement, as execute_dbapi's lookup does;
    # a SELECT's compiled form does not depend on them)
    names = tuple((params[0] if many else params) or ())
    cache: dict[Any, DriverStatement] | None = dialect.__dict__.get(_CACHE)
    if cache is None:
        cache = dialect.__dict__.setdefault(_CACHE, {})
    key = (id(stmt), names, many)
    found = cache.get(key)
    if found is not None and found.stmt is stmt:
        return found
    keys = names if isinstance(stmt, UpdateBase) else None
    if keys is None:
        compiled = stmt.compile(dialect=dialect)  # type: ignore[attr-defined]
    else:
        compiled = stmt.compile(  # type: ignore[attr-defined]
            dialect=dialect, column_keys=list(keys), for_executemany=many
        )
    if (
        compiled.insert_prefetch
        or compiled.update_prefetch
        or compiled.literal_execute_params
        or compiled.post_compile_params
        or compiled.escaped_bind_names
    ):
        # Python-side defaults, expanding IN lists, escaped names: SQLAlchemy's job
        raise TypeError(f"statement not supported on the driver path: {compiled.string[:80]}")
    bind_procs: dict[str, Any] = dict(compiled._bind_processors)
    if any(not callable(p) for p in bind_procs.values()):
        raise TypeError("tuple-typed binds are not supported on the driver path")
    types = tuple(col.type for col in compiled._result_columns)  # (keyname, name, objects, type)
    processors = tuple(_result_processor(dialect, t) for t in types)
    prepared = DriverStatement(
        stmt=stmt,
        sql=compiled.string,
        bind=_binder(
            tuple(compiled.positiontup) if compiled.positional else None,
            bind_procs,
            # literal binds (e.g. LIMIT defaults, status = 'pending'); required ones
            # come with each call
            {k: bp.value for k, bp in compiled.binds.items()
             if not bp.required and bp.value is not None},
            frozenset(k for k, bp in compiled.binds.items()
                      if isinstance(bp.type, sqltypes.Boolean)),
        ),
        processors=processors,
        returns_rows=bool(compiled._result_columns),
        result_types=types,
        lazy=any(p is _LAZY for p in processors),
    )
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[key] = prepared
    return prepared


_LAZY: Any = object()


def _result_processor(dialect: Dialect, type_: Any) -> Any:
    try:
        proc = type_._cached_result_processor(dialect, None)
    except Exception:  # noqa: BLE001 - it needs the driver's type code (psycopg numerics)
        return _LAZY
    if proc is not None and dialect.name == "sqlite" and isinstance(
        type_.dialect_impl(dialect), sqltypes.JSON
    ):
        # JSON text decoded in one call rather than through SQLAlchemy's three
        # wrappers; other values take their route
        general = proc
        custom = getattr(dialect, "_json_deserializer", None)
        if custom is not None:

            def decode_with(value: Any) -> Any:
                return custom(value) if type(value) is str else general(value)

            return decode_with

        def decode(value: Any) -> Any:
            if type(value) is not str:
                return general(value)
            return json_value(value)

        return decode
    return proc


def json_value(value: str) -> Any:
    """The value of JSON text stored by SQLite (what SQLAlchemy's JSON type reads back
    with ``json.loads``): ``pydantic_core.from_json``, several times faster on the
    small objects stored (usage, metadata); the same values (text it refuses, e.g.
    a lone surrogate escape, is left to ``json.loads``)."""
    try:
        return from_json(value)
    except ValueError:
        return json.loads(value)


def process(
    prepared: DriverStatement,
    rows: Sequence[Sequence[Any]],
    procs: tuple[Processor | None, ...] | None = None,
) -> list[tuple[Any, ...]]:
    """Apply the columns' result processors (``procs``, default: the prepared ones)
    to raw driver rows."""
    if procs is None:
        procs = prepared.processors
    if not any(procs):
        if type(rows) is list and (not rows or type(rows[0]) is tuple):
            # the driver's own rows (sqlite3, psycopg: tuples; one row factory a
            # connection): used as fetched, not copied row by row
            return rows
        return [tuple(r) for r in rows]
    convert = _converters.get(procs)
    if convert is None:
        convert = _converter(procs)
    try:  # (free in Python 3.11 when nothing is raised)
        return convert(rows)
    except (ValueError, TypeError, AttributeError):
        found = unreadable(prepared, rows, procs)
        if found is None:
            raise  # (not a stored value: a bug, told as it is)
    raise found from None  # (the processor's error may quote the value: not chained)


def unreadable(
    prepared: DriverStatement, rows: Sequence[Sequence[Any]], procs: tuple[Processor | None, ...],
    compiled: Any = None,
) -> StoredDataError | None:
    """The error of the first stored value in ``rows`` that its column's result
    processor refuses (JSON text that is not JSON, a timestamp that is not one: a
    row changed outside convo), naming its table, column and row (the row's
    ``conversation_id``, ``seq`` or ``id`` when the statement selected them); None
    if every value is read. The slow path of :func:`process`, after it failed (and of
    :func:`convo._store.unreadable.unread_value`, with the statement as it was ``compiled``)."""
    names: list[tuple[str | None, str | None]] = []
    try:
        if compiled is None:
            compiled = prepared.stmt.compile()  # type: ignore[attr-defined]
        for col in compiled._result_columns:
            tables = [o.table.name for o in col[2] if isinstance(o, Column)]
            names.append((tables[0] if tables else None, col[0]))
    except Exception:  # noqa: BLE001 - the names are a help; the error is raised anyway
        names = []
    if len(names) != len(procs):
        names = [(None, None)] * len(procs)
    index = {name: i for i, (_, name) in enumerate(names) if name is not None}
    for row in rows:
        for i, proc in enumerate(procs):
            value = row[i]
            if proc is None or value is None:
                continue
            try:
                proc(value)
            except (ValueError, TypeError, AttributeError):
                table, column = names[i]
                types = prepared.result_types
                kind = type(types[i]) if i < len(types) else None
                problem = (
                    "not a timestamp" if kind is not None and issubclass(kind, TypeDecorator)
                    else "not JSON" if kind is not None and issubclass(kind, sqltypes.JSON)
                    else None
                )

                # the row's own identity, where the statement selected it from its table
                own = {name: row[j] for name, j in index.items() if names[j][0] == table}
                seq = own.get("seq") if table == "messages" else None
                cid = own.get("id") if table == "conversations" else own.get("conversation_id")
                return StoredDataError(
                    table or "an unknown table", column,
                    conversation_id=cid if type(cid) is str else None,
                    seq=seq if type(seq) is int else None,
                    row_id=None if table == "conversations" else own.get("id"),
                    value_type=type(value).__name__, problem=problem,
                )
    return None


_converters: dict[tuple[Processor | None, ...], Callable[[Any], list[tuple[Any, ...]]]] = {}


def _converter(procs: tuple[Processor | None, ...]) -> Callable[[Any], list[tuple[Any, ...]]]:
    """A function converting rows with ``procs``, written out for their columns.

    Rows are what a context build reads by the dozen, so instead of a loop over
    the processors per row the columns are unpacked and converted in one
    expression (as ``dataclasses`` and ``namedtuple`` generate code; the source
    depends only on the number of columns and which have a processor). NULL stays
    None under every processor on this path (JSON, datetimes): most optional
    columns are NULL, so the call is skipped.
    """
    names = [f"c{i}" for i in range(len(procs))]
    values = [
        name if proc is None else f"(p{i}({name}) if {name} is not None else None)"
        for i, (name, proc) in enumerate(zip(names, procs, strict=True))
    ]
    source = (
        "def convert(rows):\n"
        f"    return [({', '.join(values)},) for ({', '.join(names)},) in rows]\n"
    )
    namespace: dict[str, Any] = {f"p{i}": p for i, p in enumerate(procs) if p is not None}
    exec(source, namespace)  # noqa: S102 - generated from column positions only
    convert: Callable[[Any], list[tuple[Any, ...]]] = namespace["convert"]
    if len(_converters) >= _CACHE_MAX:
        _converters.clear()
    _converters[procs] = convert
    return convert


def rows_as(rows: list[tuple[Any, ...]], how: str) -> Any:
    """Processed rows as an Op's ``fetch`` asks: all, the first row, or its first value."""
    if how == "all":
        return rows
    if how == "first":
        return rows[0] if rows else None
    return rows[0][0] if rows else None  # "scalar"


def from_result(prepared: DriverStatement, result: Any, how: str, dialect: Dialect) -> Any:
    """What ``how`` asks for, from an ``exec_driver_sql`` result of ``prepared``."""
    if how == "rowcount":
        return result.rowcount
    if how == "lastrowid":
        return result.lastrowid
    if how == "none" or not prepared.returns_rows:
        return None
    procs = None
    if prepared.lazy:
        procs = prepared.row_processors(dialect, result.cursor.description)
    return rows_as(process(prepared, result.all(), procs), how)


def execute(conn: Connection, stmt: Executable, params: Any, how: str) -> Any:
    """Run ``stmt`` with ``params`` on ``conn``'s DBAPI cursor; the result fetched as
    :class:`~convo._store.core.Op` ``how`` says (rows are tuples)."""
    if observed(conn):
        # someone listens to cursor events (tracing, logging): go through SQLAlchemy
        prepared = prepare(conn.dialect, stmt, params)
        result = conn.exec_driver_sql(prepared.sql, bind_args(prepared, params))
        return from_result(prepared, result, how, conn.dialect)
    dbapi_conn = conn.connection.dbapi_connection
    assert dbapi_conn is not None
    try:
        return execute_dbapi(conn.dialect, dbapi_conn, stmt, params, how)
    except DBAPIError as exc:
        if exc.connection_invalidated:
            conn.invalidate(exc.orig)
        raise


def bind_args(prepared: DriverStatement, params: Any, many: bool | None = None) -> Any:
    """The DBAPI parameters of ``params``: one set, or a list of them (executemany)."""
    bind = prepared.bind
    if many if many is not None else _many(params):
        return [bind(p) for p in params]  # executemany
    return bind(params or _EMPTY)


def execute_dbapi(
    dialect: Dialect, dbapi_conn: Any, stmt: Executable, params: Any, how: str,
    cursor: Any = None,
) -> Any:
    """:func:`execute` on a DBAPI connection (on ``cursor``, when given: the caller's
    to close). Driver errors are raised wrapped as SQLAlchemy's
    :class:`~sqlalchemy.exc.DBAPIError` (``connection_invalidated`` when the
    connection is gone: the caller invalidates it)."""
    if type(params) is dict:  # the common case: found in the cache of prepare, inline
        many = False
        found = dialect.__dict__.get(_CACHE, _NO_CACHE).get((id(stmt), tuple(params), False))
        prepared = (
            found if found is not None and found.stmt is stmt
            else prepare(dialect, stmt, params, False)
        )
        args = prepared.bind(params)
    else:
        many = _many(params)
        prepared = prepare(dialect, stmt, params, many)
        bind = prepared.bind
        args = [bind(p) for p in params] if many else bind(params or _EMPTY)  # (bind_args)
    own = cursor is None
    if own:
        cursor = dbapi_conn.cursor()
    try:
        if many:
            cursor.executemany(prepared.sql, args)
        else:
            cursor.execute(prepared.sql, args)
        if how == "rowcount":
            return cursor.rowcount
        if how == "lastrowid":
            return cursor.lastrowid
        if not prepared.returns_rows:
            return None
        rows = cursor.fetchall()  # also what finishes a DML ... RETURNING on SQLite
        if how == "none":
            return None
        procs = (
            prepared.row_processors(dialect, cursor.description)
            if prepared.lazy else prepared.processors
        )
        if how == "scalar":  # (one value: no row conversion)
            if not rows:
                return None
            value, proc = rows[0][0], procs[0]
            return value if proc is None or value is None else proc(value)
        return rows_as(process(prepared, rows if how == "all" else rows[:1], procs), how)
    except dialect.loaded_dbapi.Error as exc:
        raise _wrapped(dialect, dbapi_conn, cursor, prepared.sql, args, exc) from exc
    finally:
        if own:
            cursor.close()


def raw_execute(conn: Connection, sql: str) -> None:
    """Run one statement without parameters or rows (``BEGIN IMMEDIATE``) on the cursor,
    or through SQLAlchemy when statements are observed."""
    if observed(conn):
        conn.exec_driver_sql(sql)
        return
    dbapi_conn = conn.connection.dbapi_connection
    assert dbapi_conn is not None
    try:
        execute_text(conn.dialect, dbapi_conn, sql)
    except DBAPIError as exc:
        if exc.connection_invalidated:
            conn.invalidate(exc.orig)
        raise


def execute_text(dialect: Dialect, dbapi_conn: Any, sql: str, cursor: Any = None) -> None:
    """One statement without parameters or rows on a DBAPI connection (on ``cursor``,
    when given; errors wrapped as in :func:`execute_dbapi`)."""
    own = cursor is None
    if own:
        cursor = dbapi_conn.cursor()
    try:
        cursor.execute(sql)
    except dialect.loaded_dbapi.Error as exc:
        raise _wrapped(dialect, dbapi_conn, cursor, sql, (), exc) from exc
    finally:
        if own:
            cursor.close()


def _wrapped(
    dialect: Dialect, dbapi_conn: Any, cursor: Any, sql: str, args: Any, exc: Exception
) -> DBAPIError:
    """What SQLAlchemy's execute would do with a driver error: wrap it (so the store
    translates it into convo's tree), noting whether the connection is gone."""
    wrapped = DBAPIError.instance(
        sql, args, exc, dialect.loaded_dbapi.Error,
        connection_invalidated=dialect.is_disconnect(exc, dbapi_conn, cursor),  # type: ignore[arg-type]
    )
    assert isinstance(wrapped, DBAPIError)  # (driver errors are DBAPI errors)
    return wrapped


# --- the direct path: plans on a pooled DBAPI connection -------------------------------

#: Engine events the direct path would skip (it runs no ``Connection``): with any of
#: them listened to, plans run through SQLAlchemy's ``Connection`` as usual.
_CONNECTION_EVENTS = (
    "before_execute", "after_execute", "before_cursor_execute", "after_cursor_execute",
    "engine_connect", "set_connection_execution_options", "commit", "rollback", "savepoint",
    "rollback_savepoint", "release_savepoint", "begin_twophase", "prepare_twophase",
    "commit_twophase", "rollback_twophase",
)
_DIALECT_EVENTS = ("handle_error", "do_execute", "do_executemany", "do_execute_no_params")


#: Pool events the direct path would skip: its thread connection is checked out once,
#: so a listener on these (but convo's own ``checkout`` hook) would miss the calls.
_POOL_EVENTS = ("checkout", "checkin", "reset")


_events = operator.attrgetter(*_CONNECTION_EVENTS)
_dialect_events = operator.attrgetter(*_DIALECT_EVENTS)
_pool_events = operator.attrgetter(*_POOL_EVENTS)
try:  # SQLAlchemy's event collections (see _watch)
    from sqlalchemy.event.attr import _EmptyListener, _ListenerCollection
except ImportError:  # pragma: no cover - another SQLAlchemy layout: the full check each call
    _EmptyListener = _ListenerCollection = None  # type: ignore[assignment,misc]


def _listeners(collection: Any) -> list[Any]:
    """The listeners of an event ``collection``: on the instance, then inherited."""
    return [*collection] if _ListenerCollection is None else [
        *getattr(collection, "listeners", ()), *collection.parent_listeners
    ]


def _watch(dispatch: Any, names: tuple[str, ...], *, mine: str = "") -> list[Any] | None:
    """The listener lists of the events ``names`` of ``dispatch`` (an engine's or a
    pool's): each event's own list (not that of the event ``mine``, holding convo's
    hook), then the class-level one; None when the layout is not SQLAlchemy's known
    one.

    An event nobody listened to on an instance is an ``_EmptyListener`` (shared by
    every instance of the class), which the first listener on the instance replaces
    with a ``_ListenerCollection`` of its own. It is made here, empty, as that first
    listener would (``for_modify``; an empty collection is as false as the shared
    one): from then on every listener added to the instance joins its own list and
    every listener added to a class joins the class-level list, both in place,
    so the lists' lengths say whether one came.
    """
    if _ListenerCollection is None:
        return None
    lists: list[Any] = []
    for name in names:
        collection = getattr(dispatch, name)
        if type(collection) is _EmptyListener:
            collection = collection.for_modify(dispatch)
        if type(collection) is not _ListenerCollection or getattr(dispatch, name) is not collection:
            return None
        if name != mine:
            lists.append(collection.listeners)
        lists.append(collection.parent_listeners)
    return lists


#: on an engine: what :func:`direct_ok` last found quiet (see there)
_QUIET = "_convo_quiet"


def direct_ok(engine: Any, begin_hook: Callable[..., Any], checkout_hook: Callable[..., Any]) -> bool:
    """Whether plans may run on a pooled DBAPI connection of ``engine`` without a
    SQLAlchemy ``Connection``: SQLite, nothing logged or echoed, and no event
    listeners on the engine, its class, its dialect or its pool (checkout,
    checkin, reset) but convo's own ``begin`` hook (whose ``BEGIN IMMEDIATE``
    the direct path issues itself) and ``checkout`` hook (run when the thread's
    connection was taken).

    Asked before every direct plan (a listener may be added at any time, and
    must be seen at the next call). The common answer comes from what the last
    full check found (:func:`_quiet`): the engine's and the pool's listener lists
    of these events (see :func:`_watch`) still empty, convo's hooks still the only
    ones on theirs, the dialect still unmarked, the same engine parts (a disposed
    engine has a new pool), and nothing logged. Reading the events' collections
    instead cost a few percent of an append.
    """
    state = engine.__dict__.get(_QUIET)
    if state is not None:
        dispatch, dialect, pool, lists, begin_own, checkout_own = state
        if (
            not any(lists)  # (deques: their truth is their length, at C speed)
            and len(begin_own) == 1 and begin_own[0] is begin_hook
            and len(checkout_own) == 1 and checkout_own[0] is checkout_hook
            and engine.dispatch is dispatch
            and engine.dialect is dialect
            and engine.pool is pool
            and not dialect._has_events
            and not engine._should_log_info()
        ):
            return True
    return _quiet(engine, begin_hook, checkout_hook)


def _quiet(
    engine: Any, begin_hook: Callable[..., Any], checkout_hook: Callable[..., Any]
) -> bool:
    """:func:`direct_ok`'s full check; what it found quiet is kept on the engine."""
    engine.__dict__.pop(_QUIET, None)
    dialect = engine.dialect
    if dialect.name != "sqlite" or engine._should_log_info():
        return False
    d = engine.dispatch
    collections: tuple[Any, ...] = _events(d)
    # SQLAlchemy marks a dialect (or its class) on the first listener of its
    # events: unmarked, none of them can have one
    marked = getattr(dialect, "_has_events", True)
    if marked and any(_dialect_events(dialect.dispatch)):
        return False
    if any(map(_listeners, collections)):
        return False
    begin = d.begin
    if _listeners(begin) != [begin_hook]:
        return False
    pool = engine.pool
    p = pool.dispatch
    pool_events = _pool_events(p)
    checkout = pool_events[0]
    found = _listeners(checkout)
    if found and found != [checkout_hook]:
        return False
    if any(map(_listeners, pool_events[1:])):
        return False
    if marked or not found:
        return True  # (right, but checked in full each time)
    lists = _watch(d, (*_CONNECTION_EVENTS, "begin"), mine="begin")
    pool_lists = _watch(p, _POOL_EVENTS, mine="checkout")
    if lists is None or pool_lists is None:
        return True
    engine.__dict__[_QUIET] = (
        d, dialect, pool, (*lists, *pool_lists), d.begin.listeners, p.checkout.listeners,
    )
    return True


def run_direct(
    engine: Any, plan: Any, *, writes: bool, rollback: Any, held: Any = None,
    held_cursor: Any = None,
) -> Any:
    """Run a plan of ``driver=True`` statements on a pooled DBAPI connection: what
    ``Store._run`` does through a ``Connection`` (``BEGIN IMMEDIATE`` before the first
    statement of a write, ``COMMIT`` at the end, a rollback on error), at the cost of
    the driver calls alone. ``rollback`` is the plans' ROLLBACK marker. ``held``: a
    connection the caller keeps (left open afterwards; on a lost connection the
    caller drops it), else one is checked out for this plan and returned at the end.
    ``held_cursor``: a cursor of ``held`` the caller keeps for its plans (its
    creation was a tenth of the Python an append adds), else one is made for this
    plan and closed at the end."""
    dialect = engine.dialect
    error = dialect.loaded_dbapi.Error
    cache = dialect.__dict__.get(_CACHE, _NO_CACHE)  # (prepare's)
    fairy = held if held is not None else engine.raw_connection()  # pool events still run
    dbapi_conn = fairy.dbapi_connection
    in_tx = False
    cursor = held_cursor
    try:
        try:
            op = next(plan)
            if cursor is None:
                cursor = dbapi_conn.cursor()  # one for the plan's statements
            while True:
                try:
                    if op is rollback:
                        if in_tx:
                            dbapi_conn.rollback()
                            in_tx = False
                        value = None
                    else:
                        if not op.driver:
                            raise AssertionError(f"not a driver statement: {op.stmt}")
                        if writes and not in_tx:
                            try:  # (execute_text, inlined: once per write plan)
                                cursor.execute("BEGIN IMMEDIATE")
                            except error as exc:
                                raise _wrapped(
                                    dialect, dbapi_conn, cursor, "BEGIN IMMEDIATE", (), exc
                                ) from exc
                            in_tx = True
                        params, stmt = op.params, op.stmt
                        prepared = (
                            cache.get((id(stmt), tuple(params), False))
                            if type(params) is dict and op.fetch == "scalar" else None
                        )
                        if prepared is not None and prepared.stmt is stmt and not prepared.lazy:
                            # (execute_dbapi, inline, for what a write's statements mostly
                            # are: one parameter set, one value back; the same steps)
                            args = prepared.bind(params)
                            try:
                                cursor.execute(prepared.sql, args)
                                rows = cursor.fetchall() if prepared.returns_rows else None
                            except error as exc:
                                raise _wrapped(
                                    dialect, dbapi_conn, cursor, prepared.sql, args, exc
                                ) from exc
                            if not rows:
                                value = None
                            else:
                                value, proc = rows[0][0], prepared.processors[0]
                                if proc is not None and value is not None:
                                    value = proc(value)
                        else:
                            value = execute_dbapi(
                                dialect, dbapi_conn, stmt, params, op.fetch, cursor
                            )
                except DBAPIError as exc:  # the plan may recover (see _store/core.py)
                    if exc.connection_invalidated:
                        raise
                    op = plan.throw(exc)
                    continue
                op = plan.send(value)
        except StopIteration as stop:
            if in_tx:
                # on the plan's cursor, whose statement cache keeps COMMIT prepared
                # (the driver's commit() prepares it anew every time)
                assert cursor is not None  # (the transaction began on it)
                try:
                    cursor.execute("COMMIT")
                except error as exc:
                    raise _wrapped(dialect, dbapi_conn, cursor, "COMMIT", (), exc) from exc
                in_tx = False
            return stop.value
    except DBAPIError as exc:
        if exc.connection_invalidated:
            in_tx = False
            if held is None:
                fairy.invalidate(exc.orig)  # (a held one is the caller's to drop)
        raise
    finally:
        if cursor is not None and cursor is not held_cursor:
            try:
                cursor.close()
            except dialect.loaded_dbapi.Error:  # its connection is gone
                pass
        if in_tx:
            try:
                dbapi_conn.rollback()
            except dialect.loaded_dbapi.Error:  # gone: the pool's reset deals with it
                pass
        if held is None:
            fairy.close()
