"""The store's plans for the context builder: the reads a build opens with
(the lineage, the pinned messages and the newest page in one store call), the
pages of older history it reads on, the token-count cache and summaries.

They run on the same shells and the same :class:`convo._store.core.Op` protocol
as the rest of the store (see :mod:`convo._store.core`); the plans here are the
ones a build calls on every turn, kept apart from the conversation and message
plans so each module stays one concept.
"""

from __future__ import annotations

from collections.abc import Mapping
from operator import itemgetter
from typing import Any, TypeAlias

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError

from .._exceptions import (
    ConversationNotFound,
    MessageNotFound,
    StoreInputError,
)
from .._records import StoredMessage, Summary
from . import sql
from .core import (
    ROLLBACK,
    Lineage,
    Op,
    Plan,
    S,
    _lineage,
    _read_segments,
    get_conversation,
    now,
)
from .inputs import (
    ENCODING_MAX,
    INT32_MAX,
    INT_MAX,
    INT_MIN,
    check_int,
    check_text,
    check_values,
    checked,
)
from .replica import refused_write
from .rows import (
    compact_messages,
    construct,
    damaged,
    lean_messages,
    summary_from_row,
    tokens_from_row,
    validate_json_dict,
)

__all__ = [
    "TokenCounts", "add_summary", "context_open", "context_start", "latest_summary", "pinned",
    "save_token_counts", "tail", "tail_of", "token_rows", "token_rows_plan",
]


#: Token counts as the store takes them: tokens by ``(conversation_id, message_id)``
#: (what a context build gives; one shard each in a sharded database), or by
#: message id alone (each message's conversation is looked up first).
TokenCounts: TypeAlias = Mapping[tuple[str, int], int] | Mapping[int, int]


def token_rows(encoding: str, counts: TokenCounts) -> tuple[list[dict[str, Any]], list[int]]:
    """The ``message_tokens`` rows of ``counts``, checked; the rows given by message id
    alone still lack their ``conversation_id`` (see :func:`token_rows_plan`), and
    their ids come second."""
    check_text(encoding, "encoding", max_len=ENCODING_MAX)
    if not isinstance(counts, Mapping):
        raise StoreInputError("counts must be a mapping of message id to token count")
    rows, bare = [], []
    for key, tokens in counts.items():
        cid = None
        if type(key) is tuple and len(key) == 2:
            cid = check_text(key[0], "a conversation id of counts", max_len=32)
            key = key[1]
        # (a build's counts, plain ints in range, skip the calls and the message text)
        message_id = (
            key if type(key) is int and INT_MIN <= key <= INT_MAX
            else check_int(key, "a message id of counts")
        )
        if type(tokens) is not int or not 0 <= tokens <= INT32_MAX:
            tokens = check_int(
                tokens, f"token count for message {message_id}", minimum=0, maximum=INT32_MAX
            )
        if cid is None:
            bare.append(message_id)
        rows.append(
            {"conversation_id": cid, "message_id": message_id, "encoding": encoding,
             "tokens": tokens}
        )
    return rows, bare


def token_rows_plan(encoding: str, counts: TokenCounts) -> Plan[list[dict[str, Any]]]:
    """:func:`token_rows`, with the conversation of each message given by id alone
    looked up (a read on every shard of a sharded database).

    Raises:
        MessageNotFound: a message id that no message has.
    """
    rows, bare = token_rows(encoding, counts)
    homes: dict[int, str] = {}
    for message_id in bare:  # one by one: the statements of the hot path (driver=True)
        home = yield Op(sql.HOME_OF_MESSAGE, {"id": message_id}, "scalar", driver=True)
        if home is None:
            raise MessageNotFound(f"token counts given for unknown message ids: {message_id}")
        homes[message_id] = home
    for row in rows:
        if row["conversation_id"] is None:
            row["conversation_id"] = homes[row["message_id"]]
    return rows


@checked
def save_token_counts(encoding: str, counts: TokenCounts, *, dialect: str) -> Plan[None]:
    """Store token counts; a cache, so on a read-only database it stores nothing.

    A context build counts what it reads and saves the counts for the next
    build; reading from a read-only database (a SQLite file opened with
    ``mode=ro`` or without write permission, a PostgreSQL standby or
    read-only transaction) must still build, so a write the database refuses
    as read-only is skipped, not raised.
    """
    rows = yield from token_rows_plan(encoding, counts)
    if not rows:
        return
    try:
        yield Op(sql.insert_token_counts(dialect), rows, "none", driver=True)
    except IntegrityError as exc:
        raise MessageNotFound(f"token counts given for unknown message ids: {exc.orig}") from exc
    except DBAPIError as exc:
        if not refused_write(exc):
            raise
        yield ROLLBACK


@checked
def add_summary(
    conversation_id: str,
    *,
    start_seq: int,
    end_seq: int,
    content: str,
    metadata: Mapping[str, Any] | None,
    owner: str | None,
    dialect: str,
) -> Plan[Summary]:
    meta = validate_json_dict(metadata, "summary metadata")
    conversation = yield from get_conversation(conversation_id, owner=owner)
    if not 1 <= start_seq <= end_seq <= conversation.last_seq:
        raise StoreInputError(
            f"summary range {start_seq}..{end_seq} is not within messages "
            f"1..{conversation.last_seq} of {conversation_id!r}"
        )
    stamp = now()
    values = {
        "conversation_id": conversation_id, "start_seq": start_seq, "end_seq": end_seq,
        "content": content, "metadata": meta, "created_at": stamp,
    }
    check_values(values, "summary")
    summary_id = yield Op(sql.insert_summary(dialect), values, "scalar")
    return construct(Summary, {**values, "id": summary_id, "metadata": meta or {}})


@checked
def latest_summary(
    conversation_id: str, *, up_to_seq: int | None, owner: str | None
) -> Plan[Summary | None]:
    lineage = yield from _lineage(conversation_id, owner)
    # A summary of any conversation in the chain applies if it ends at or
    # before the point where this conversation's view of it ends.
    conditions = [
        (S.c.conversation_id == cid) & (S.c.end_seq <= (hi if up_to_seq is None else min(hi, up_to_seq)))
        for cid, _lo, hi in lineage.segments
    ]
    stmt = (
        sa.select(S)
        .where(sa.or_(*conditions))
        .order_by(S.c.end_seq.desc(), S.c.id.desc())
        .limit(1)
    )
    row = yield Op(stmt, None, "first")
    return summary_from_row(row) if row is not None else None



@checked
def tail(
    conversation_id: str, *, encoding: str, before: int | None, limit: int, owner: str | None
) -> Plan[list[tuple[StoredMessage, int | None]]]:
    lineage = yield from _lineage(conversation_id, owner)
    rows = yield from _read_segments(
        lineage, after=None, before=before, limit=limit, newest_first=True, encoding=encoding
    )
    return [tokens_from_row(r) for r in rows]


def _open(
    conversation_id: str, encoding: str, limit: int, owner: str | None, before: int | None,
    form: str, after: int | None = None,
) -> Plan[tuple[list[tuple[StoredMessage, int | None]], list[tuple[StoredMessage, int | None]],
                Lineage]]:
    """The opening reads of a build. A conversation that is not a fork (the common
    case) is read in one statement: its row, its pinned and its newest messages
    (:func:`convo._store.sql.open_query`, or with ``form`` ``"compact"`` (SQLite) its
    8-column form :func:`convo._store.sql.compact_query`, ``"lean"`` its 7-column form
    for a turn's build: see :func:`convo._store.rows.lean_messages`); a fork, whose view
    includes its ancestors' rows, reads its lineage first (:func:`_open_lineage`).
    ``after``: the newest page holds only messages with ``seq > after``."""
    params: dict[str, Any] = {"cid": conversation_id, "encoding": encoding, "limit": limit}
    if before is not None:
        params["before"] = before
    if after is not None:
        params["after"] = after
    query, part_col, pinned_part, conv_part, conv_cols, seq_col, values = _OPEN_FORMS[form]
    rows = yield Op(query(before is not None, after is not None), params, driver=True)
    pinned_rows, tail_rows, conv = [], [], None
    for row in rows:
        part = row[part_col]
        if part == pinned_part:
            pinned_rows.append(row)
        elif part == conv_part:
            conv = row
        else:
            tail_rows.append(row)
    if conv is None:
        raise ConversationNotFound(conversation_id, owner=owner)
    parent_col, last_col, owner_col = conv_cols
    parent_id, last_seq, conv_owner = conv[parent_col], conv[last_col], conv[owner_col]
    if owner is not None and conv_owner != owner:
        raise ConversationNotFound(conversation_id, owner=owner)
    if parent_id is not None:
        return (yield from _open_lineage(conversation_id, encoding, limit, owner, before, after))
    # the parts of a UNION ALL come in no guaranteed order (already sorted: linear)
    seq_of = itemgetter(seq_col)
    try:
        pinned_rows.sort(key=seq_of)
        tail_rows.sort(key=seq_of, reverse=True)
    except TypeError:  # (a seq that is not a number: a row changed outside convo)
        for row in (*pinned_rows, *tail_rows):
            if type(row[seq_col]) is not int:
                raise damaged("messages", "seq", row[seq_col], "not an integer",
                              conversation_id=conversation_id, row_id=row[0]) from None
        raise
    lineage = Lineage(conversation_id, ((conversation_id, 0, last_seq),))
    return values(pinned_rows, conversation_id), values(tail_rows, conversation_id), lineage


def _full_rows(rows: list[Any], conversation_id: str) -> list[tuple[StoredMessage, int | None]]:
    return [tokens_from_row(r, conversation_id) for r in rows]


def _lean_query(bounded: bool, floored: bool) -> Any:
    return sql.compact_query(bounded, floored, True)


#: The forms of the opening read (see :func:`_open`), by name: the statement, the
#: column telling a row's part and its value on the pinned messages' rows and on
#: the conversation's row, the conversation row's columns holding parent_id,
#: last_seq and owner, the seq column, rows -> values.
_OPEN_FORMS: dict[str, tuple[Any, int, int, int, tuple[int, int, int], int, Any]] = {
    "full": (sql.open_query, 20, sql.OPEN_PINNED, sql.OPEN_CONVERSATION, (1, 2, 6), 2,
             _full_rows),
    "compact": (sql.compact_query, 4, sql.COMPACT_PINNED, sql.COMPACT_CONVERSATION, (0, 1, 2),
                1, compact_messages),
    "lean": (_lean_query, 4, sql.COMPACT_PINNED, sql.COMPACT_CONVERSATION, (0, 1, 2), 1,
             lean_messages),
}


def _form(dialect: str | None, lean: bool) -> str:
    if dialect != "sqlite":
        return "full"
    return "lean" if lean else "compact"


def _open_lineage(
    conversation_id: str, encoding: str, limit: int, owner: str | None, before: int | None,
    after: int | None = None,
) -> Plan[tuple[list[tuple[StoredMessage, int | None]], list[tuple[StoredMessage, int | None]],
                Lineage]]:
    lineage = yield from _lineage(conversation_id, owner)
    pinned_rows = yield from _read_segments(
        lineage, after=None, before=before, limit=None, newest_first=False,
        encoding=encoding, pinned_only=True,
    )
    tail_rows = yield from _read_segments(
        lineage, after=after, before=before, limit=limit, newest_first=True, encoding=encoding
    )
    return (
        [tokens_from_row(r) for r in pinned_rows], [tokens_from_row(r) for r in tail_rows], lineage
    )


@checked
def context_start(
    conversation_id: str, *, encoding: str, limit: int, owner: str | None,
    before: int | None = None, dialect: str | None = None,
) -> Plan[tuple[list[tuple[StoredMessage, int | None]], list[tuple[StoredMessage, int | None]]]]:
    """The opening reads of a context build on one connection: the lineage once,
    then its pinned messages (oldest first) and its newest ``limit`` messages,
    both limited to ``seq < before`` when given (a build "as of" a past seq).
    ``dialect``: ``"sqlite"`` reads the compact form (see :func:`_open`)."""
    pinned_rows, tail_rows, _ = yield from _open(
        conversation_id, encoding, limit, owner, before, _form(dialect, False)
    )
    return pinned_rows, tail_rows


@checked
def context_open(
    conversation_id: str, *, encoding: str, limit: int, owner: str | None,
    before: int | None = None, dialect: str | None = None, after: int | None = None,
    lean: bool = False,
) -> Plan[tuple[list[tuple[StoredMessage, int | None]], list[tuple[StoredMessage, int | None]],
                Lineage]]:
    """:func:`context_start`, and the lineage it resolved, for :func:`tail_of`;
    ``after``: the newest page holds only messages with ``seq > after`` (at most
    ``limit`` of them). ``lean``: the messages of a turn's build, on SQLite (see
    :func:`convo._store.rows.lean_messages`; other databases read them whole)."""
    return (yield from _open(
        conversation_id, encoding, limit, owner, before, _form(dialect, lean), after
    ))


@checked
def tail_of(
    lineage: Lineage, *, encoding: str, before: int, limit: int, owner: str | None
) -> Plan[list[tuple[StoredMessage, int | None]]]:
    """:func:`tail` on a lineage resolved earlier in the same build (one lineage
    query a build, not one a page).

    A lineage never changes below its newest seq (messages are only appended,
    and a fork point is fixed), so reading older rows with it is exact. Seqs are
    contiguous from 1, so fewer rows than the lineage holds below ``before``
    means the conversation was deleted meanwhile: resolving the lineage again
    then raises :class:`~convo.ConversationNotFound`, as :func:`tail` would.
    """
    rows = yield from _read_segments(
        lineage, after=None, before=before, limit=limit, newest_first=True, encoding=encoding
    )
    held = sum(max(0, min(hi, before - 1) - lo) for _cid, lo, hi in lineage.live())
    if len(rows) < min(limit, held):
        yield from _lineage(lineage.conversation_id, owner)
    return [tokens_from_row(r) for r in rows]


@checked
def pinned(
    conversation_id: str, *, encoding: str, owner: str | None
) -> Plan[list[tuple[StoredMessage, int | None]]]:
    lineage = yield from _lineage(conversation_id, owner)
    rows = yield from _read_segments(
        lineage, after=None, before=None, limit=None, newest_first=False,
        encoding=encoding, pinned_only=True,
    )
    return [tokens_from_row(r) for r in rows]
