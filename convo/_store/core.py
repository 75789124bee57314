"""The pure core of the store, shared by :class:`~convo.Store` and :class:`~convo.AsyncStore`.

Every store operation is a *plan*: a generator that yields :class:`Op`
(a statement, its parameters and what to fetch) and receives the fetched
result, or yields :data:`ROLLBACK`. It never touches a connection, so the sync
and async shells run the very same logic and only differ in ``await``::

    plan = core.append(...)
    op = next(plan)
    while True:
        result = fetch(conn.execute(op.stmt, op.params), op.fetch)   # the shell's only job
        op = plan.send(result)                                        # ... until StopIteration

A database error raised by a statement is thrown into the plan
(``plan.throw``), so a plan can recover (roll back, read, return).

Fork lineage: a conversation's view is its ancestors' messages up to each fork
point, then its own. :func:`_lineage` resolves it from the conversation's own
row, which stores its ancestor chain (:mod:`convo._store.lineage`: no recursive
query), into segments ``(conversation_id, lo, hi)`` (seq in ``(lo, hi]``),
newest first; reads then query segment by segment with ``LIMIT`` and stop as
soon as the limit is filled, so reading the tail never loads the thread.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Final, Literal, TypeAlias, TypeVar

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import Executable

from .._exceptions import (
    ConversationNotFound,
    ForkConflictError,
    InvalidMessageError,
    MessageNotFound,
)
from .._messages import Message, parse_message, parse_messages
from .._records import Conversation, ReplyInfo, StoredMessage
from . import lineage as lineages
from . import sql
from .inputs import (
    check_json,
    check_values,
    checked,
)
from .rows import (
    VALUE_COLUMNS,
    check_pinnable,
    check_short,
    construct,
    conversation_from_row,
    decode_cursor,
    encode_cursor,
    message_from_row,
    message_values,
    new_conversation_id,
    seq_error,
    stored_message,
    validate_json_dict,
)

__all__ = ["ROLLBACK", "UNSET", "ConversationPage", "Mode", "Op", "Plan", "Unset"]

T = TypeVar("T")
Fetch: TypeAlias = Literal["all", "first", "scalar", "rowcount", "lastrowid", "none"]
#: How a shell runs a plan (see :func:`convo._store.engine.mode_engines`): ``"read"``
#: without a transaction, ``"write"`` in one, ``"single"`` for a one-statement write.
Mode: TypeAlias = Literal["read", "write", "single"]

C, M, TK, S = sql.C, sql.M, sql.TK, sql.S


@dataclass(slots=True)  # (not frozen: its __init__ costs twice as much, per statement)
class Op:
    """One statement for a shell to execute, and what to hand back to the plan.

    ``fetch``: ``"all"`` -> list of rows, ``"first"`` -> a row or None,
    ``"scalar"`` -> first column of the first row or None, ``"rowcount"`` -> int,
    ``"lastrowid"`` -> the rowid an INSERT gave its row (SQLite), ``"none"`` -> None. ``params`` as a list means executemany (rows come back
    in parameter order when the statement returns rows).
    """

    stmt: Executable
    params: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None
    fetch: Fetch = "all"
    #: run on the DBAPI cursor (the hot path, see ``_store.driver``): only for
    #: long-lived statements (module-level or cached by their builder), whose
    #: compiled form is kept; rows are plain tuples then, read by position
    driver: bool = False


class _Rollback(Enum):
    ROLLBACK = "ROLLBACK"


#: Yielded by a plan: roll back the current transaction (the next Op begins a new one).
ROLLBACK: Final = _Rollback.ROLLBACK

Plan: TypeAlias = Generator[Op | _Rollback, Any, T]


class Unset(Enum):
    """Type of :data:`UNSET`, the "leave unchanged" default of update methods."""

    UNSET = "UNSET"


UNSET: Final = Unset.UNSET


class ConversationPage(BaseModel):
    """One page of :meth:`~convo.Store.list_conversations`.

    Pass ``next_cursor`` back as ``cursor`` for the next page; it is None on the last page.
    """

    model_config = ConfigDict(frozen=True)

    items: list[Conversation]
    next_cursor: str | None = None


def now() -> datetime:
    return datetime.now(UTC)


def _scope(params: dict[str, Any], owner: str | None) -> bool:
    if owner is not None:
        params["b_owner"] = owner
        return True
    return False


# --- lineage -----------------------------------------------------------------------------

Segment: TypeAlias = lineages.Segment  # (conversation_id, lo, hi): seq in (lo, hi]


@dataclass(frozen=True, slots=True)
class Lineage:
    conversation_id: str
    #: Nearest first: the conversation's own segment, then its parent's, ...
    #: (``hi <= lo`` means the ancestor contributes no rows but its summaries
    #: up to ``hi`` still apply).
    segments: tuple[Segment, ...]

    def live(self) -> list[Segment]:
        return [s for s in self.segments if s[2] > s[1]]

    def owner_of(self, seq: int) -> str | None:
        for cid, lo, hi in self.segments:
            if lo < seq <= hi:
                return cid
        return None


def _lineage(conversation_id: str, owner: str | None) -> Plan[Lineage]:
    """The view of a conversation, from its row alone (one statement)."""
    row = yield Op(lineages.LINEAGE_ROW, {"cid": conversation_id}, "first", driver=True)
    # columns: parent_id, fork_seq, last_seq, owner, lineage
    if row is None or (owner is not None and row[3] != owner):
        raise ConversationNotFound(conversation_id, owner=owner)
    chain: lineages.Chain = ()
    if row[0] is not None:
        chain = yield from lineages.chain_of(row[0], row[1], row[4])
    return Lineage(conversation_id, lineages.segments(conversation_id, row[2], chain))


#: Where a conversation row (``SELECT conversations.*``) has its lineage.
_LINEAGE_AT: Final = list(C.c.keys()).index("lineage")


def _fork_source(conversation_id: str, owner: str | None) -> Plan[tuple[Conversation, list[Any]]]:
    """The conversation a fork or branch is made of, and its lineage (the new
    fork's is this one with the source in front: :func:`convo._store.lineage.extend`)."""
    params = {"cid": conversation_id}
    row = yield Op(sql.select_conversation(_scope(params, owner)), params, "first", driver=True)
    if row is None:
        raise ConversationNotFound(conversation_id, owner=owner)
    source = conversation_from_row(row)
    chain: lineages.Chain = ()
    if source.parent_id is not None:
        chain = yield from lineages.chain_of(source.parent_id, source.fork_seq, row[_LINEAGE_AT])
    return source, list(chain)


def _read_segments(
    lineage: Lineage,
    *,
    after: int | None,
    before: int | None,
    limit: int | None,
    newest_first: bool,
    encoding: str | None = None,
    pinned_only: bool = False,
) -> Plan[list[Any]]:
    stmt = sql.segment_query(newest_first, encoding is not None, pinned_only, limit is not None)
    segments = lineage.live()
    if not newest_first:
        segments.reverse()
    out: list[Any] = []
    for cid, lo, hi in segments:
        if after is not None:
            lo = max(lo, after)
        if before is not None:
            hi = min(hi, before - 1)
        if hi <= lo:
            continue
        params: dict[str, Any] = {"cid": cid, "lo": lo, "hi": hi}
        if limit is not None:
            params["limit"] = limit - len(out)
        if encoding is not None:
            params["encoding"] = encoding
        out.extend((yield Op(stmt, params, driver=True)))
        if limit is not None and len(out) >= limit:
            break
    return out


# --- conversations ---------------------------------------------------------------------


@checked
def create_conversation(
    *, title: str | None, owner: str | None, metadata: Mapping[str, Any] | None
) -> Plan[Conversation]:
    meta = validate_json_dict(metadata, "conversation metadata")
    check_short(owner, "owner")
    stamp = now()
    values = {
        "id": new_conversation_id(), "title": title, "owner": owner, "metadata": meta,
        "created_at": stamp, "updated_at": stamp, "parent_id": None, "fork_seq": None,
        "last_seq": 0, "branch_kind": None, "branch_of": None, "current_branch_id": None,
    }
    check_values(values, "conversation")
    yield Op(sql.INSERT_CONVERSATION, values, "none")
    return construct(Conversation, {**values, "metadata": meta or {}})


@checked
def get_conversation(conversation_id: str, *, owner: str | None) -> Plan[Conversation]:
    params = {"cid": conversation_id}
    row = yield Op(sql.select_conversation(_scope(params, owner)), params, "first", driver=True)
    if row is None:
        raise ConversationNotFound(conversation_id, owner=owner)
    return conversation_from_row(row)


@checked
def update_conversation(
    conversation_id: str,
    *,
    title: str | None | Unset,
    metadata: Mapping[str, Any] | None | Unset,
    owner: str | None,
) -> Plan[Conversation]:
    values: dict[str, Any] = {"updated_at": now()}
    if title is not UNSET:
        values["title"] = title
    if metadata is not UNSET:
        values["metadata"] = validate_json_dict(metadata, "conversation metadata")
    check_values(values, "conversation")
    stmt = sa.update(C).where(C.c.id == conversation_id).values(values).returning(*C.c)
    if owner is not None:
        stmt = stmt.where(C.c.owner == owner)
    row = yield Op(stmt, None, "first")
    if row is None:
        raise ConversationNotFound(conversation_id, owner=owner)
    return conversation_from_row(row)


@checked
def delete_conversation(
    conversation_id: str, *, owner: str | None, cascade_forks: bool
) -> Plan[None]:
    params = {"cid": conversation_id}
    row = yield Op(sql.select_conversation(_scope(params, owner)), params, "first")
    if row is None:
        raise ConversationNotFound(conversation_id, owner=owner)
    # The conversation and every fork below it (forks of forks too).
    levels = yield from lineages.forks_below([conversation_id], full=False)
    ids = [conversation_id, *(r.id for level in levels for r in level)]
    if len(ids) > 1 and not cascade_forks:
        raise ForkConflictError(
            f"conversation {conversation_id!r} has {len(ids) - 1} fork(s) that share its "
            "messages; delete them first or pass cascade_forks=True"
        )
    # Messages, token counts and summaries go with ON DELETE CASCADE.
    try:
        yield Op(sa.delete(C).where(C.c.id.in_(ids)), None, "none")
    except IntegrityError as exc:  # a fork was created meanwhile (its FK refuses)
        raise ForkConflictError(
            f"conversation {conversation_id!r} was forked while being deleted; try again"
        ) from exc


@checked
def list_conversations(
    *,
    dialect: str,
    owner: str | None,
    metadata: Mapping[str, Any] | None,
    created_after: datetime | None,
    created_before: datetime | None,
    updated_after: datetime | None,
    updated_before: datetime | None,
    limit: int,
    cursor: str | None,
) -> Plan[ConversationPage]:
    stmt = sa.select(C)
    if owner is not None:
        stmt = stmt.where(C.c.owner == owner)
    for bound, op in (
        (created_after, C.c.created_at.__gt__),
        (created_before, C.c.created_at.__lt__),
        (updated_after, C.c.updated_at.__gt__),
        (updated_before, C.c.updated_at.__lt__),
    ):
        if bound is not None:
            stmt = stmt.where(op(bound))
    recheck = []
    for key, value in (metadata or {}).items():
        stmt = stmt.where(sql.json_equals(dialect, C.c.metadata, key, value))
        if sql.needs_recheck(dialect, value):  # SQLite, an object or array value
            recheck.append((key, check_json(value, "metadata filter value")))

    def keep(conv: Conversation) -> bool:
        return all(k in conv.metadata and sql.json_same(conv.metadata[k], v) for k, v in recheck)

    items, next_cursor = yield from newest_first(
        stmt, C.c.updated_at, C.c.id, cursor, limit, conversation_from_row, "updated_at",
        keep=keep if recheck else None,
    )
    return ConversationPage(items=items, next_cursor=next_cursor)


def newest_first(
    stmt: sa.Select[Any],
    stamp_col: Any,
    id_col: Any,
    cursor: str | None,
    limit: int,
    from_row: Any,
    stamp_attr: str,
    *,
    keep: Callable[[Any], bool] | None = None,
) -> Plan[tuple[list[Any], str | None]]:
    """One keyset page of ``stmt``, newest first by (``stamp_col``, ``id_col``).

    The cursor is the (stamp, id) of the previous page's last item; one row
    more than asked says whether there is a next page (a limit that large
    means "all" anyway, and limit + 1 must still fit in 64 bits).

    ``keep``: a check in Python of each item the statement returns (a filter the
    database can only approximate); the page then reads on, a page of rows at a
    time, until it has ``limit + 1`` kept items or the rows run out, so pages
    stay full and the cursor stays exact.
    """
    want = min(limit, 2**62) + 1
    ordered = stmt.order_by(stamp_col.desc(), id_col.desc()).limit(want)
    items: list[Any] = []
    after = decode_cursor(cursor) if cursor is not None else None
    while True:
        page = ordered
        if after is not None:
            page = page.where(sa.tuple_(stamp_col, id_col) < sa.tuple_(
                sa.literal(after[0], stamp_col.type), sa.literal(after[1], id_col.type)
            ))
        rows = yield Op(page)
        read = [from_row(r) for r in rows]
        items += read if keep is None else [item for item in read if keep(item)]
        if keep is None or len(items) >= want or len(rows) < want:
            break
        after = (getattr(read[-1], stamp_attr), read[-1].id)
    more = len(items) > limit
    items = items[:limit]
    last = items[-1] if items else None
    next_cursor = encode_cursor(getattr(last, stamp_attr), last.id) if more and last else None
    return items, next_cursor


# --- messages -----------------------------------------------------------------------------


def append_mode(idempotency_key: str | None) -> Mode:
    """How to run :func:`append` and :func:`append_current`: without a key it is a
    single statement on PostgreSQL (``"single"`` is ``"write"`` on SQLite)."""
    return "single" if idempotency_key is None else "write"


@checked
def append(
    conversation_id: str,
    message: Message | Mapping[str, Any],
    *,
    idempotency_key: str | None,
    pinned: bool | None,
    reply: ReplyInfo | None,
    owner: str | None,
    dialect: str,
) -> Plan[StoredMessage]:
    msg = parse_message(message)
    values = message_values(msg, pinned=pinned, idempotency_key=idempotency_key, reply=reply)
    stamp = datetime.now(UTC)  # (now(), inline: every append)
    params = {"cid": conversation_id, "n": 1, "now": stamp}
    if idempotency_key is None and dialect == "postgresql":
        single = _single_params(values, params)
        row = yield Op(
            sql.append_returning_seq(_scope(single, owner)), single, "first", driver=True
        )
        if row is None:
            raise ConversationNotFound(conversation_id, owner=owner)
        message_id, seq = row
        return stored_message(msg, values, id=message_id, conversation_id=conversation_id,
                              seq=seq, created_at=stamp)
    # The counter update takes the conversation's row lock (SQLite: the write
    # lock, via BEGIN IMMEDIATE) so the key check below cannot race.
    if owner is not None:  # (_scope, inline)
        params["b_owner"] = owner
    seq = yield Op(sql.bump_seq(owner is not None), params, "scalar", True)
    if seq is None:
        raise ConversationNotFound(conversation_id, owner=owner)
    if idempotency_key is not None:
        existing = yield Op(
            sql.BY_KEY, {"cid": conversation_id, "key": idempotency_key}, "first", driver=True
        )
        if existing is not None:
            yield ROLLBACK  # undo the counter bump: a retried append writes nothing
            return message_from_row(existing)
        return (
            yield from _insert(conversation_id, seq, msg, values, stamp, idempotency_key, dialect)
        )
    # (_insert without a key, inline: no generator of its own on every append)
    values["conversation_id"], values["seq"], values["created_at"] = conversation_id, seq, stamp
    message_id = yield insert_message(values, dialect)
    return stored_message(msg, values, id=message_id, conversation_id=conversation_id,
                          seq=seq, created_at=stamp)


#: :func:`convo._store.sql.append_returning_seq` binds every message column ("m_" names)
_SINGLE_NULLS = {f"m_{c}": None for c in VALUE_COLUMNS}


def _single_params(values: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters of the one-statement append: the counter's, and every column."""
    single = dict(_SINGLE_NULLS)
    for k, v in values.items():
        single[f"m_{k}"] = v
    single.update(params)
    return single


def insert_message(values: dict[str, Any], dialect: str) -> Op:
    """The INSERT of a message row; its result is the new message's id.

    Only the columns that have a value are listed (the others are NULL anyway, and
    every bound value costs); the id comes back through ``RETURNING`` (SQLite has
    no rowid alias since the key is (conversation_id, id): see :mod:`convo._store.schema`).
    """
    given = (
        values if None not in values.values() else {k: v for k, v in values.items() if v is not None}
    )
    return Op(sql.insert_new_message(dialect), given, "scalar", True)


def _insert(
    cid: str,
    seq: int,
    msg: Message,
    values: dict[str, Any],
    stamp: datetime,
    idempotency_key: str | None,
    dialect: str,
) -> Plan[StoredMessage]:
    """Insert a message at ``seq`` (its counter bumped by the caller, in this transaction)."""
    values.update(conversation_id=cid, seq=seq, created_at=stamp)
    try:
        message_id = yield insert_message(values, dialect)
    except IntegrityError:
        # Safety net (the lock makes this unreachable among convo writers).
        if idempotency_key is None:
            raise
        yield ROLLBACK
        existing = yield Op(sql.BY_KEY, {"cid": cid, "key": idempotency_key}, "first",
                            driver=True)
        if existing is None:
            raise
        return message_from_row(existing)
    return stored_message(msg, values, id=message_id, conversation_id=cid, seq=seq,
                          created_at=stamp)


@checked
def append_current(
    conversation_id: str,
    message: Message | Mapping[str, Any],
    *,
    idempotency_key: str | None,
    owner: str | None,
    dialect: str,
) -> Plan[tuple[str, StoredMessage]]:
    """:func:`append` to the thread's current branch (``conversation_id`` itself when
    it has none), resolved in the same transaction: the conversation it went to,
    and the message. With a key already stored in that view (inherited rows of a
    branch included), the stored message comes back and nothing is written."""
    msg = parse_message(message)
    values = message_values(msg, pinned=None, idempotency_key=idempotency_key, reply=None)
    stamp = now()
    params: dict[str, Any] = {"cid": conversation_id, "now": stamp}
    scoped = _scope(params, owner)
    if idempotency_key is None and dialect == "postgresql":
        single = _single_params(values, params)
        row = yield Op(sql.append_returning_seq(scoped, True), single, "first", driver=True)
        if row is None:
            raise ConversationNotFound(conversation_id, owner=owner)
        message_id, seq, cid = row
        return cid, stored_message(msg, values, id=message_id, conversation_id=cid, seq=seq,
                                   created_at=stamp)
    # The counter update takes the branch's row lock (SQLite: the write lock) first,
    # so the key lookup below cannot race with another send of the same turn.
    row = yield Op(sql.bump_current_seq(scoped), params, "first", driver=True)
    if row is None:
        raise ConversationNotFound(conversation_id, owner=owner)
    cid, seq = row
    if idempotency_key is not None:
        existing = None
        if cid == conversation_id:
            existing = yield Op(sql.BY_KEY, {"cid": cid, "key": idempotency_key}, "first",
                                driver=True)
        else:
            # On a branch, the turn may have been stored before the branch was made
            # (a retry after a regenerate): look through the inherited history too.
            lineage = yield from _lineage(cid, owner)
            for segment, lo, hi in lineage.live():
                existing = yield Op(
                    sql.by_key_in_range(),
                    {"cid": segment, "key": idempotency_key, "lo": lo, "hi": hi},
                    "first",
                    driver=True,
                )
                if existing is not None:
                    break
        if existing is not None:
            yield ROLLBACK  # undo the counter bump: a retried send writes nothing
            return cid, message_from_row(existing)
    return cid, (yield from _insert(cid, seq, msg, values, stamp, idempotency_key, dialect))


@checked
def append_many(
    conversation_id: str,
    messages: Iterable[Message | Mapping[str, Any]],
    *,
    owner: str | None,
    dialect: str,
) -> Plan[list[StoredMessage]]:
    if isinstance(messages, (str, bytes, Mapping, Message)) or not isinstance(messages, Iterable):
        raise InvalidMessageError(
            f"messages must be a list of messages (Message or dict), not {type(messages).__name__}"
        )
    msgs = parse_messages(messages)
    rows = [message_values(m, pinned=None, idempotency_key=None, reply=None) for m in msgs]
    if not rows:
        yield from get_conversation(conversation_id, owner=owner)  # still say "not found"
        return []
    stamp = now()
    params = {"cid": conversation_id, "n": len(rows), "now": stamp}
    last = yield Op(sql.bump_seq(_scope(params, owner)), params, "scalar", driver=True)
    if last is None:
        raise ConversationNotFound(conversation_id, owner=owner)
    first = last - len(rows) + 1
    # One column list for the batch: the columns any of its messages has (a
    # plain chat: role, content, pinned), NULL where a message has none.
    given = set().union(*rows)
    width = len(given)
    for seq, values in enumerate(rows, first):
        if len(values) < width:
            for column in sorted(given.difference(values)):
                values[column] = None
        values["conversation_id"] = conversation_id
        values["seq"] = seq
        values["created_at"] = stamp
    # A plain executemany on the driver (sqlite3's C loop, psycopg's pipeline),
    # then the ids of the seq range we hold the counter lock for: several times
    # faster than INSERT ... RETURNING in batches, whose huge statements psycopg
    # re-parses.
    if dialect == "sqlite":
        # The ids the row-at-a-time INSERT would give (MAX(id) + 1 each), from one
        # read: the write lock is held since the counter update. A MAX(id) subquery
        # per row ran the batch several times slower.
        top = yield Op(sql.MAX_MESSAGE_ID, None, "scalar", driver=True)
        for message_id, values in enumerate(rows, top + 1):
            values["id"] = message_id
        yield Op(sql.INSERT_PLAIN, rows, "none", driver=True)
        ids = [(values["id"],) for values in rows]
    else:
        yield Op(sql.insert_new_message(dialect, False), rows, "none", driver=True)
        ids = yield Op(sql.IDS_IN_RANGE, {"cid": conversation_id, "lo": first, "hi": last},
                       driver=True)
    return [
        stored_message(m, v, id=r[0], conversation_id=conversation_id, seq=v["seq"],
                       created_at=stamp)
        for m, v, r in zip(msgs, rows, ids, strict=True)
    ]


@checked
def messages(
    conversation_id: str,
    *,
    after: int | None,
    before: int | None,
    limit: int | None,
    newest_first: bool,
    owner: str | None,
) -> Plan[list[StoredMessage]]:
    lineage = yield from _lineage(conversation_id, owner)
    rows = yield from _read_segments(
        lineage, after=after, before=before, limit=limit, newest_first=newest_first
    )
    if (error := seq_error(rows)) is not None:
        raise error
    return [message_from_row(r) for r in rows]


@checked
def get_message(conversation_id: str, seq: int, *, owner: str | None) -> Plan[StoredMessage]:
    lineage = yield from _lineage(conversation_id, owner)
    rows = yield from _read_segments(
        lineage, after=seq - 1, before=seq + 1, limit=1, newest_first=False
    )
    if not rows:
        raise MessageNotFound(f"conversation {conversation_id!r} has no message {seq}")
    if (error := seq_error(rows)) is not None:
        raise error
    return message_from_row(rows[0])


@checked
def count_messages(conversation_id: str, *, owner: str | None) -> Plan[int]:
    # last_seq counts the lineage: a fork's counter starts at its fork point.
    conversation = yield from get_conversation(conversation_id, owner=owner)
    return conversation.last_seq


@checked
def fork(
    conversation_id: str,
    *,
    at: int | None,
    title: str | None,
    owner: str | None,
    metadata: Mapping[str, Any] | None,
) -> Plan[Conversation]:
    meta = validate_json_dict(metadata, "conversation metadata")
    source, chain = yield from _fork_source(conversation_id, owner)
    point = source.last_seq if at is None else at
    if not 0 <= point <= source.last_seq:
        raise MessageNotFound(
            f"cannot fork conversation {conversation_id!r} at {point}: "
            f"it has messages 1..{source.last_seq}"
        )
    stamp = now()
    # O(1): one row; the fork reads its ancestors' rows through the lineage.
    values = {
        "id": new_conversation_id(),
        "title": title if title is not None else source.title,
        "owner": source.owner,
        "metadata": meta,
        "created_at": stamp,
        "updated_at": stamp,
        "parent_id": source.id,
        "fork_seq": point,
        "last_seq": point,
        "branch_kind": None,
        "branch_of": None,
        "current_branch_id": None,
    }
    row = {**values, "lineage": lineages.extend(source.id, point, chain)}
    check_values(row, "conversation")
    try:
        yield Op(sql.INSERT_CONVERSATION, row, "none")
    except IntegrityError as exc:  # the source was deleted meanwhile
        raise ConversationNotFound(conversation_id, owner=owner) from exc
    return construct(Conversation, {**values, "metadata": meta or {}})


_SEARCH_ESCAPE = "\\"


@checked
def search(
    text: str,
    *,
    dialect: str,
    owner: str | None,
    conversation_id: str | None,
    limit: int,
) -> Plan[list[StoredMessage]]:
    pattern = "%" + (
        text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    ) + "%"
    if dialect == "postgresql":
        match = M.c.content.ilike(pattern, escape=_SEARCH_ESCAPE)
    else:
        match = M.c.content.like(pattern, escape=_SEARCH_ESCAPE)  # ASCII-only case folding
    stmt = sa.select(M).where(match)
    if conversation_id is not None:
        lineage = yield from _lineage(conversation_id, owner)
        stmt = stmt.where(sa.or_(*(
            (M.c.conversation_id == cid) & (M.c.seq > lo) & (M.c.seq <= hi)
            for cid, lo, hi in lineage.live()
        ), sa.false()))
    elif owner is not None:
        stmt = stmt.join(C, C.c.id == M.c.conversation_id).where(C.c.owner == owner)
    rows = yield Op(stmt.order_by(M.c.id.desc()).limit(limit))
    if (error := seq_error(rows)) is not None:
        raise error
    return [message_from_row(r) for r in rows]


# --- context builder support ------------------------------------------------------------


@checked
def set_pinned(conversation_id: str, seq: int, value: bool, *, owner: str | None) -> Plan[None]:
    lineage = yield from _lineage(conversation_id, owner)
    holder = lineage.owner_of(seq)
    if holder is None:
        raise MessageNotFound(f"conversation {conversation_id!r} has no message {seq}")
    if holder != conversation_id:
        raise ForkConflictError(
            f"message {seq} of {conversation_id!r} is inherited from {holder!r}; "
            "pinning it would change that conversation and its other forks"
        )
    if value:
        found = yield Op(
            sa.select(M.c.role, M.c.tool_calls).where(
                M.c.conversation_id == conversation_id, M.c.seq == seq
            ),
            None,
            "first",
        )
        if found is not None:
            check_pinnable(found[0], found[1] is not None, seq)
    stmt = sa.update(M).where(M.c.conversation_id == conversation_id, M.c.seq == seq)
    count = yield Op(stmt.values(pinned=value), None, "rowcount")
    if not count:
        raise MessageNotFound(f"conversation {conversation_id!r} has no message {seq}")
