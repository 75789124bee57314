"""The SQL statements of the store, built once (SQLAlchemy caches their compiled form).

Pure construction: nothing here executes. :mod:`convo._store.core` yields these
statements from its plans; the shells run them.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from .schema import ConversationRow, MessageRow, MessageTokenRow, SummaryRow

C = cast(sa.Table, ConversationRow.__table__)
M = cast(sa.Table, MessageRow.__table__)
TK = cast(sa.Table, MessageTokenRow.__table__)
S = cast(sa.Table, SummaryRow.__table__)

_B = sa.bindparam
_MSG_COLUMNS = [c for c in M.c]


@cache
def select_conversation(scoped: bool) -> sa.Select[Any]:
    stmt = sa.select(C).where(C.c.id == _B("cid"))
    return stmt.where(C.c.owner == _B("b_owner")) if scoped else stmt


def _with_tokens() -> Any:
    """Messages joined with their stored token count for ``:encoding`` (None when
    not counted yet): the source of every tail read. Joined on conversation_id too:
    a sharded database keeps the join on one shard."""
    return M.outerjoin(TK, (TK.c.conversation_id == M.c.conversation_id)
                       & (TK.c.message_id == M.c.id) & (TK.c.encoding == _B("encoding")))


@cache
def segment_query(
    newest_first: bool, with_tokens: bool, pinned_only: bool, limited: bool
) -> sa.Select[Any]:
    cols: list[Any] = list(_MSG_COLUMNS)
    src: Any = M
    if with_tokens:
        src = _with_tokens()
        cols.append(TK.c.tokens)
    stmt = (
        sa.select(*cols)
        .select_from(src)
        .where(M.c.conversation_id == _B("cid"), M.c.seq > _B("lo"), M.c.seq <= _B("hi"))
        .order_by(M.c.seq.desc() if newest_first else M.c.seq)
    )
    if limited:
        stmt = stmt.limit(_B("limit"))
    if pinned_only:
        stmt = stmt.where(M.c.pinned)
    return stmt


#: The part column of :func:`open_query`'s rows (after the messages' columns and the count).
OPEN_PINNED, OPEN_NEWEST, OPEN_CONVERSATION = 1, 2, 0


#: The message columns that are NULL in most rows (everything but a plain text
#: message's), in the order :func:`compact_query` packs them.
RARE_COLUMNS = (
    "parts", "name", "tool_calls", "refusal", "tool_call_id", "metadata", "idempotency_key",
    "model", "finish_reason", "usage", "system_fingerprint", "seed",
)
#: The rare columns that shape what a context sends and counts (the others: a
#: message's metadata, idempotency key and reply info, which a build never reads)
WIRE_RARE_COLUMNS = ("parts", "name", "tool_calls", "refusal", "tool_call_id")
#: The flag column of :func:`compact_query`'s rows: the message's ``pinned`` (0 or 1)
#: on a newest-page row, else one of these
COMPACT_PINNED, COMPACT_CONVERSATION = 2, -1


@cache
def compact_query(
    bounded: bool, floored: bool = False, lean: bool = False
) -> sa.CompoundSelect[Any]:
    """:func:`open_query` for SQLite, in 8 columns instead of 21: ``id, seq, role,
    content, flag, created_at, tokens, rare``.

    ``created_at`` is the stored text (see ``_store_rows.compact_messages``);
    ``rare`` is NULL when all of :data:`RARE_COLUMNS` are (a plain text message),
    else their values as one JSON array (``json_array``: text columns, JSON ones
    included, as JSON strings, ``seed`` as a number): an exact encoding that
    ``_store_rows.compact_message`` decodes. ``flag`` is the message's ``pinned``
    on the newest page's rows, :data:`COMPACT_PINNED` on the pinned messages' rows,
    :data:`COMPACT_CONVERSATION` on the conversation's row, which carries
    parent_id, last_seq and owner in the id, seq and role columns.

    Why: Python's sqlite3 module (3.11) releases and takes back the GIL for every
    column of every row it fetches, which made the 13 mostly-NULL columns and the
    part column of :func:`open_query` cost a context build more than its SQL.

    ``floored``: the newest page holds only messages with ``seq > :after`` (see
    :func:`open_query`).

    ``lean`` (a turn's build, see ``_store_rows.lean_messages``): 7 columns, without
    ``created_at``, and ``rare`` is NULL unless one of :data:`WIRE_RARE_COLUMNS` is
    set, so a reply with only its reply info is read as a plain message (nothing
    unpacked).
    """
    rare = [M.c[name] for name in RARE_COLUMNS]
    shaping = [M.c[name] for name in (WIRE_RARE_COLUMNS if lean else RARE_COLUMNS)]
    packed = sa.case(
        (sa.func.coalesce(*shaping).is_(None), sa.null()), else_=sa.func.json_array(*rare)
    )
    # created_at as its stored text: parsed where the row becomes a value (one
    # pass over the rows instead of the driver's processing pass, then that one);
    # the lean form has no such column (each column fetched costs every row)
    stamp = [] if lean else [sa.type_coerce(M.c.created_at, sa.Text)]

    def message_cols(flag: Any) -> list[Any]:
        return [M.c.id, M.c.seq, M.c.role, M.c.content, flag, *stamp, TK.c.tokens, packed]

    mine = M.c.conversation_id == _B("cid")
    if bounded:
        mine = mine & (M.c.seq < _B("before"))
    newest_only = mine & (M.c.seq > _B("after")) if floored else mine
    pinned = (
        # the first SELECT gives the columns their types: the flag is a plain integer
        sa.select(*message_cols(sa.literal_column(str(COMPACT_PINNED), sa.Integer)))
        .select_from(_with_tokens())
        .where(mine, M.c.pinned)
    )
    # The newest :limit rows are those from the :limit-th newest seq on (all of them
    # when there are fewer): that seq is read from the (conversation_id, seq) index
    # alone, and the rows by a range of it. (An ORDER BY ... LIMIT subquery costs more:
    # SQLite copies every value of its rows, contents included, into the outer query.)
    # The floor is there for the cost only (with fewer than :limit rows above it, the
    # :limit-th newest seq is at or below it, and the floor alone bounds the range):
    # the index is read down to the floor, not :limit entries (a floored read's limit
    # is twice the rows it expects).
    nth = M.alias("nth")
    nth_mine = nth.c.conversation_id == _B("cid")
    if bounded:
        nth_mine = nth_mine & (nth.c.seq < _B("before"))
    if floored:
        nth_mine = nth_mine & (nth.c.seq > _B("after"))
    oldest_seq = (
        sa.select(nth.c.seq).where(nth_mine).order_by(nth.c.seq.desc())
        .limit(1).offset(_B("limit") - 1).scalar_subquery()  # (limits are >= 1)
    )
    newest = (
        sa.select(*message_cols(sa.type_coerce(M.c.pinned, sa.Integer)))
        .select_from(_with_tokens())
        .where(newest_only, M.c.seq >= sa.func.coalesce(oldest_seq, 0))
    )
    conversation = sa.select(
        C.c.parent_id, C.c.last_seq, C.c.owner, sa.null(),
        sa.literal_column(str(COMPACT_CONVERSATION), sa.Integer),
        *(sa.null() for _ in stamp), sa.null(), sa.null(),
    ).where(C.c.id == _B("cid"))
    return sa.union_all(pinned, newest, conversation)


def context_dialect(dialect: Any) -> str | None:
    """The ``dialect`` a store gives its context reads (``_store_context.context_open``):
    the dialect's name, or None when its engine decodes JSON with a deserializer of
    its own, which SQLite's compact read (decoding the JSON it packs itself) would
    bypass: the full columns are read then."""
    return None if getattr(dialect, "_json_deserializer", None) is not None else str(dialect.name)


@cache
def open_query(bounded: bool, floored: bool = False) -> sa.CompoundSelect[Any]:
    """The opening read of a context build, in ONE statement (one round trip, one
    snapshot): the pinned messages of ``:cid``, its newest ``:limit`` messages, and
    its conversation row, each with its count for ``:encoding``; with ``bounded``
    only messages with ``seq < :before``; with ``floored`` the newest page only
    with ``seq > :after`` (a builder that knows which rows its last build of the
    conversation needed reads only those and the ones appended since).

    Rows are the message columns, the token count, then the part
    (:data:`OPEN_PINNED`, :data:`OPEN_NEWEST`, :data:`OPEN_CONVERSATION`); the
    conversation's row carries parent_id, last_seq and owner in the
    conversation_id, seq and name columns (the rest NULL). The parts come in no
    guaranteed order. These are the conversation's own rows only: a fork's
    reader resolves its lineage instead (see ``_store_context._open``).
    """
    # every message row is :cid's, so its id is not read again with each row
    cols: list[Any] = [
        *(sa.null() if c.name == "conversation_id" else c for c in _MSG_COLUMNS), TK.c.tokens
    ]
    mine = M.c.conversation_id == _B("cid")
    if bounded:
        mine = mine & (M.c.seq < _B("before"))
    newest_only = mine & (M.c.seq > _B("after")) if floored else mine
    pinned = (
        sa.select(*cols, sa.literal_column(str(OPEN_PINNED), sa.Integer).label("part"))
        .select_from(_with_tokens())
        .where(mine, M.c.pinned)
    )
    newest = (
        sa.select(*cols)
        .select_from(_with_tokens())
        .where(newest_only)
        .order_by(M.c.seq.desc())
        .limit(_B("limit"))
        .subquery("newest")
    )
    conv_cols = {"conversation_id": C.c.parent_id, "seq": C.c.last_seq, "name": C.c.owner}
    conversation = sa.select(
        *(conv_cols.get(c.name, sa.null()) for c in _MSG_COLUMNS),
        sa.null(),
        sa.literal_column(str(OPEN_CONVERSATION), sa.Integer),
    ).where(C.c.id == _B("cid"))
    return sa.union_all(
        pinned,
        sa.select(newest, sa.literal_column(str(OPEN_NEWEST), sa.Integer)),
        conversation,
    )


@cache
def bump_seq(scoped: bool) -> sa.Update:
    stmt = (
        sa.update(C)
        .where(C.c.id == _B("cid"))
        .values(last_seq=C.c.last_seq + _B("n"), updated_at=_B("now"))
        .returning(C.c.last_seq)
    )
    return stmt.where(C.c.owner == _B("b_owner")) if scoped else stmt


@cache
def bump_current_seq(scoped: bool) -> sa.Update:
    """:func:`bump_seq` on the current branch of the thread ``cid`` (``cid`` itself
    when it has none), in the same statement::

        UPDATE conversations SET last_seq = last_seq + 1 ...
        WHERE id = COALESCE((SELECT current_branch_id FROM conversations AS root
                             WHERE root.id = :cid), :cid)
        RETURNING id, last_seq

    A branch has its thread's owner, so the owner scope is checked on it.
    """
    root = C.alias("root")
    current = sa.select(root.c.current_branch_id).where(root.c.id == _B("cid"))
    stmt = (
        sa.update(C)
        .where(C.c.id == sa.func.coalesce(current.scalar_subquery(), _B("cid")))
        .values(last_seq=C.c.last_seq + 1, updated_at=_B("now"))
        .returning(C.c.id, C.c.last_seq)
    )
    return stmt.where(C.c.owner == _B("b_owner")) if scoped else stmt


@cache
def append_returning_seq(scoped: bool, current: bool = False) -> sa.Insert:
    """PostgreSQL: bump the counter and insert in ONE statement (one round trip)::

        WITH bump AS (UPDATE conversations SET last_seq = last_seq + 1 ... RETURNING last_seq)
        INSERT INTO messages (...) SELECT ..., bump.last_seq FROM bump RETURNING id, seq

    The UPDATE takes the row lock exactly as the two-statement form does; with
    no such conversation (or owner) nothing is inserted and no row comes back.
    ``current``: on the current branch of the thread (see :func:`bump_current_seq`);
    the row then also says which conversation that is.
    """
    bump = (bump_current_seq(scoped) if current else bump_seq(scoped)).cte("bump")
    fixed = ("conversation_id", "seq", "created_at")
    rest = [c for c in M.c if c.name not in fixed and c.name != "id"]
    select = sa.select(
        bump.c.id if current else _B("cid", type_=M.c.conversation_id.type),
        bump.c.last_seq,
        _B("now", type_=M.c.created_at.type),
        # "m_" prefix: an UPDATE adds a SET for any parameter named like one
        # of its table's columns (here: "metadata").
        *(_B(f"m_{c.name}", type_=c.type) for c in rest),
    ).select_from(bump)
    returning = (M.c.id, M.c.seq, M.c.conversation_id) if current else (M.c.id, M.c.seq)
    return (
        sa.insert(M)
        .from_select([*fixed, *(c.name for c in rest)], select)
        .returning(*returning)
        .add_cte(bump)
    )


@cache
def by_key_in_range() -> sa.Select[Any]:
    """The message stored under an idempotency key within one lineage segment."""
    return sa.select(M).where(
        M.c.conversation_id == _B("cid"), M.c.idempotency_key == _B("key"),
        M.c.seq > _B("lo"), M.c.seq <= _B("hi"),
    )


@cache
def insert_token_counts(dialect: str) -> sa.Insert:
    """Token counts, keeping existing ones: counts are deterministic per (message,
    encoding), so a concurrent writer stored the same number and DO NOTHING is exact."""
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(TK)
    return insert.on_conflict_do_nothing()


def _next_id(table: sa.Table) -> Any:
    """SQLite: the id of a new row, ``MAX(id) + 1`` (on the plain index on ``id``).

    The rowid alias gave these values before the key became (conversation_id, id);
    every SQLite write runs under ``BEGIN IMMEDIATE``, so no two writers see the
    same maximum. PostgreSQL takes the column's sequence instead.
    """
    return sa.select(sa.func.coalesce(sa.func.max(table.c.id), 0) + 1).scalar_subquery()


@cache
def insert_new_message(dialect: str, returning: bool = True) -> sa.Insert:
    """The INSERT of a message that has no id yet (the database gives it)."""
    stmt = sa.insert(M) if dialect == "postgresql" else sa.insert(M).values(id=_next_id(M))
    return stmt.returning(M.c.id) if returning else stmt


@cache
def insert_summary(dialect: str) -> sa.Insert:
    """The INSERT of a summary; its result is the new id."""
    stmt = sa.insert(S) if dialect == "postgresql" else sa.insert(S).values(id=_next_id(S))
    return stmt.returning(S.c.id)


#: The conversation of a message given by id alone (a lookup on every shard).
HOME_OF_MESSAGE = sa.select(M.c.conversation_id).where(M.c.id == _B("id"))
BY_KEY = sa.select(M).where(M.c.conversation_id == _B("cid"), M.c.idempotency_key == _B("key"))
#: An INSERT of rows whose ids are given (an import keeping ids; a SQLite batch).
INSERT_PLAIN = sa.insert(M)
#: SQLite: the largest message id (a batch's ids follow it, see append_many).
MAX_MESSAGE_ID = sa.select(sa.func.coalesce(sa.func.max(M.c.id), 0))
IDS_IN_RANGE = (
    sa.select(M.c.id)
    .where(M.c.conversation_id == _B("cid"), M.c.seq >= _B("lo"), M.c.seq <= _B("hi"))
    .order_by(M.c.seq)
)
INSERT_CONVERSATION = sa.insert(C)



def json_equals(dialect: str, column: Any, key: str, value: Any) -> Any:
    """``column[key] == value`` with JSON semantics (type-exact: 1 != "1", true != 1;
    numbers by value: 1 == 1.0; objects whatever their key order; arrays in order).

    On PostgreSQL the clause is exact (JSONB equality). On SQLite it is exact for
    scalars; for an object or an array it only checks the member's type, and the
    caller re-checks the rows it returns with :func:`json_same` (SQLite keeps an
    object's keys in the order they were written, and has no canonical form to
    compare: see :func:`needs_recheck`).

    ``key`` and ``value`` come checked: the only caller, ``_store_core.list_conversations``,
    takes its filters through ``@checked``'s ``metadata`` rule (a plain JSON object that
    could have been stored, see :func:`convo._store.inputs.check_json`).
    """
    if dialect == "postgresql":
        # JSONB equality is semantic (key order, number spelling don't matter).
        text = json.dumps(value, separators=(",", ":"))
        return column.op("->")(sa.literal(key, sa.Text)) == sa.cast(
            sa.literal(text, sa.Text), postgresql.JSONB
        )
    # SQLite: json_each yields each top-level member with its decoded key, so
    # any key matches (a JSON path cannot spell every key: quotes, backslashes,
    # and before SQLite 3.45 any non-ASCII key, stored \u-escaped).
    each = sa.func.json_each(column).table_valued("key", "type", "value").alias()
    if value is None:
        match = each.c.type == "null"
    elif isinstance(value, bool):
        match = each.c.type == ("true" if value else "false")
    elif isinstance(value, (int, float)):
        match = each.c.type.in_(["integer", "real"]) & (each.c.value == value)
    elif isinstance(value, str):
        match = (each.c.type == "text") & (each.c.value == value)
    else:  # an object or an array: its type here, its members by json_same
        match = each.c.type == ("object" if isinstance(value, dict) else "array")
    found = sa.exists().where(each.c.key == sa.literal(key, sa.Text), match)
    # Rows written before convo refused NaN hold text SQLite calls malformed
    # JSON; json_each would fail the whole listing on them, so they never match.
    return sa.case((sa.func.json_valid(column) == 1, found), else_=sa.false())


def needs_recheck(dialect: str, value: Any) -> bool:
    """Whether :func:`json_equals`'s clause for ``value`` is only a pre-filter."""
    return dialect != "postgresql" and isinstance(value, (dict, list))


def json_same(a: Any, b: Any) -> bool:
    """Two decoded JSON values are equal as PostgreSQL's JSONB compares them:
    type-exact (``true != 1``, ``1 != "1"``), numbers by value (``1 == 1.0``),
    objects whatever their key order, arrays element by element."""
    if type(a) is bool or type(b) is bool:
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict):
        return (isinstance(b, dict) and a.keys() == b.keys()
                and all(json_same(v, b[k]) for k, v in a.items()))
    if isinstance(a, list):
        return (isinstance(b, list) and len(a) == len(b)
                and all(json_same(x, y) for x, y in zip(a, b, strict=True)))
    return type(a) is type(b) and a == b
