"""Row <-> value conversion for the store: the one place SQL rows meet pydantic values.

Writes are validated (messages through :func:`convo._messages.parse_message`,
every column value through :func:`convo._store.inputs.check_values`); reads trust the database, which only ever received
validated values, and build the values without a second validation (see
:func:`construct`: the hot read path). Content parts and tool calls, the only
nested models, are rebuilt through their type adapters.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy.dialects import sqlite

from .._exceptions import StoredDataError, StoreInputError
from .._messages import ROLES, ContentPart, Message, ToolCall
from .._records import (
    Conversation,
    ReplyInfo,
    StoredMessage,
    Summary,
    WireText,
    _new,
    _set_dict,
    _set_extra,
    _set_fields,
    _set_private,
    construct,
)
from .driver import json_value
from .inputs import (
    SHORT_TEXT_MAX,
    bad_index,
    check_json,
    check_short,
    check_text,
    check_values,
)
from .schema import ConversationRow, MessageRow, UTCDateTime
from .sql import RARE_COLUMNS

__all__ = [
    "SHORT_TEXT_MAX",
    "VALUE_COLUMNS",
    "check_short",
    "compact_messages",
    "construct",
    "conversation_from_row",
    "decode_cursor",
    "encode_cursor",
    "lean_messages",
    "message_from_row",
    "message_params",
    "message_values",
    "new_conversation_id",
    "summary_from_row",
    "tokens_from_row",
    "validate_json_dict",
]

_PARTS: TypeAdapter[list[ContentPart]] = TypeAdapter(list[ContentPart])
_TOOL_CALLS: TypeAdapter[list[ToolCall]] = TypeAdapter(list[ToolCall])


for _cls in (Conversation, ReplyInfo, StoredMessage, Summary):
    assert not _cls.__private_attributes__ and not _cls.__pydantic_post_init__, _cls
    assert _cls.model_config.get("extra") != "allow", _cls


#: The length of the ``messages.finish_reason`` column (shorter than the other short
#: texts): a longer one is refused before any write, as PostgreSQL would mid-write.
FINISH_REASON_MAX: int = getattr(MessageRow.__table__.c.finish_reason.type, "length", 0)


def check_short_text(value: str, field: str) -> str:
    """``value`` (a short text column's) if it is storable and at most 255 characters."""
    return check_text(value, field, max_len=SHORT_TEXT_MAX)


def new_conversation_id() -> str:
    """A 32-hex-digit id that sorts by creation time (like UUIDv7): 48-bit ms clock + 80 random bits."""
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"


def validate_json_dict(value: Mapping[str, Any] | None, what: str) -> dict[str, Any] | None:
    """``value`` as a JSON object (None when empty); raises :class:`StoreInputError` if it is
    not storable JSON (see :func:`convo._store.inputs.check_json`)."""
    if value is not None and not isinstance(value, Mapping):
        raise StoreInputError(f"{what} must be a JSON object (a dict), not {type(value).__name__}")
    if not value:
        return None
    return check_json(dict(value), what)  # type: ignore[no-any-return]


# --- conversations -------------------------------------------------------------


# The column order of the conversations table: rows are read by position (the
# cursor-level path gives plain tuples; SQLAlchemy rows of ``select(C)`` match).
CONVERSATION_COLUMNS = (
    "id", "title", "owner", "metadata", "created_at", "updated_at", "parent_id", "fork_seq",
    "last_seq", "branch_kind", "branch_of", "current_branch_id", "lineage",
)
assert tuple(c.name for c in ConversationRow.__table__.c) == CONVERSATION_COLUMNS


def conversation_from_row(row: Any) -> Conversation:
    """A conversation row as the public value (its stored lineage, the last column,
    is the store's own: see :mod:`convo._store.lineage`)."""
    values = dict(zip(CONVERSATION_COLUMNS, row, strict=True))
    del values["lineage"]
    metadata = values["metadata"]
    if metadata is not None and type(metadata) is not dict:
        raise damaged("conversations", "metadata", metadata, "not a JSON object",
                      conversation_id=values["id"])
    values["metadata"] = metadata or {}
    return construct(Conversation, values)


# --- messages --------------------------------------------------------------------


def check_pinnable(role: str, has_tool_calls: bool, seq: int | None = None) -> None:
    """Only whole-turn-safe messages may be pinned.

    A pinned message is kept when the rest of its turn is dropped; a pinned tool
    call or tool result would then be sent without its partner, which OpenAI
    rejects. Pin the user message of that turn instead (or let a summary carry it).
    """
    if role == "tool" or has_tool_calls:
        what = "a tool result" if role == "tool" else "an assistant message with tool calls"
        where = f" (seq {seq})" if seq is not None else ""
        raise StoreInputError(
            f"cannot pin {what}{where}: it would be kept without the other half of its "
            "tool-call pair when its turn is dropped; pin the turn's user message instead"
        )


def message_values(
    message: Message,
    *,
    pinned: bool | None,
    idempotency_key: str | None,
    reply: ReplyInfo | None,
) -> dict[str, Any]:
    """The column values of ``message`` that are not NULL, checked (every other column
    but conversation_id, seq and created_at is NULL): what an INSERT lists.

    A plain message has three (role, content, pinned), so building and checking
    only those, instead of all fifteen columns, is most of the write path's
    Python cost saved; :func:`message_params` gives the full row. A text-only
    message (no name, tool calls, refusal, tool call id or metadata) with neither
    key nor reply, what most appends write, takes a shorter route to the same
    values and the same errors (see :func:`_text_only_values`).
    """
    if idempotency_key is None and reply is None:
        values = _text_only_values(message, pinned)
        if values is not None:
            return values
    return _message_values(message, pinned=pinned, idempotency_key=idempotency_key, reply=reply)


def _text_only_values(message: Message, pinned: bool | None) -> dict[str, Any] | None:
    """:func:`message_values` of a text-only message (role, text content, pinned: its
    only non-NULL columns), checked as :func:`check_values` checks them; None for
    any other message."""
    fields = message.__dict__
    content = fields["content"]
    if (
        type(content) is not str
        or fields["metadata"]
        or fields["name"] is not None
        or fields["tool_calls"] is not None
        or fields["refusal"] is not None
        or fields["tool_call_id"] is not None
    ):
        return None
    role = fields["role"]
    if pinned:
        check_pinnable(role, False)
    if (
        type(role) is not str
        or (role not in _KNOWN_ROLES and bad_index(role) >= 0)
        or bad_index(content) >= 0
    ):
        return None  # (not a valid message: the general route says what is wrong)
    # the same dict, in the same order, as the general route builds
    return {
        "role": role,
        "pinned": pinned if pinned is not None else role in ("system", "developer"),
        "content": content,
    }


#: roles a valid message has (plain ASCII: nothing for bad_index to find)
_KNOWN_ROLES = frozenset(ROLES)


def _message_values(
    message: Message,
    *,
    pinned: bool | None,
    idempotency_key: str | None,
    reply: ReplyInfo | None,
) -> dict[str, Any]:
    """:func:`message_values` of any message (the general route)."""
    role = message.role
    if pinned:
        check_pinnable(role, bool(message.tool_calls))
    # System and developer messages are the instructions: always kept.
    values: dict[str, Any] = {
        "role": role,
        "pinned": pinned if pinned is not None else role in ("system", "developer"),
    }
    content = message.content
    if isinstance(content, str):
        values["content"] = content
    elif content is not None:
        values["parts"] = [p.model_dump(mode="json", exclude_none=True) for p in content]
        values["content"] = message.text  # what search reads; parts stay the source of truth
    if message.name is not None:
        values["name"] = check_short_text(message.name, "name")
    if message.tool_calls is not None:
        values["tool_calls"] = [c.model_dump(mode="json") for c in message.tool_calls]
    if message.refusal is not None:
        values["refusal"] = message.refusal
    if message.tool_call_id is not None:
        values["tool_call_id"] = check_short_text(message.tool_call_id, "tool_call_id")
    if message.metadata:
        values["metadata"] = message.metadata
    if idempotency_key is not None:
        values["idempotency_key"] = check_short_text(idempotency_key, "idempotency_key")
    if reply is not None:
        if reply.model is not None:
            values["model"] = check_short_text(reply.model, "reply model")
        if reply.finish_reason is not None:
            values["finish_reason"] = check_text(
                reply.finish_reason, "reply finish_reason", max_len=FINISH_REASON_MAX
            )
        if reply.system_fingerprint is not None:
            values["system_fingerprint"] = check_short_text(
                reply.system_fingerprint, "reply system_fingerprint"
            )
        if reply.seed is not None:
            values["seed"] = reply.seed
    # Every text, number and JSON value of the row, whatever field it came from.
    check_values(values, "message")
    if reply is not None and reply.usage is not None:
        # (after check_values: check_json checks it, and its copy needs no second walk)
        values["usage"] = check_json(reply.usage, "reply usage")
    return values


#: The message columns :func:`message_values` fills (all NULL unless given).
VALUE_COLUMNS = (
    "role", "content", "parts", "name", "tool_calls", "refusal", "tool_call_id", "metadata",
    "pinned", "idempotency_key", "model", "finish_reason", "usage", "system_fingerprint", "seed",
)
_NULL_ROW = dict.fromkeys(VALUE_COLUMNS)


def message_params(
    message: Message,
    *,
    pinned: bool | None,
    idempotency_key: str | None,
    reply: ReplyInfo | None,
) -> dict[str, Any]:
    """Column values for ``message`` (everything but conversation_id, seq, created_at;
    NULL ones as None, in :data:`VALUE_COLUMNS` order)."""
    values = message_values(message, pinned=pinned, idempotency_key=idempotency_key, reply=reply)
    return {**_NULL_ROW, **values}


# The column order of the messages table: reads select ``messages.*`` (plus
# the token count last) and unpack rows by position, which is several times
# cheaper than 19 lookups by name on the hot read path.
MESSAGE_COLUMNS = (
    "id", "conversation_id", "seq", "role", "content", "parts", "name", "tool_calls",
    "refusal", "tool_call_id", "metadata", "pinned", "idempotency_key", "model",
    "finish_reason", "usage", "system_fingerprint", "seed", "created_at",
)
assert tuple(c.name for c in MessageRow.__table__.c) == MESSAGE_COLUMNS


def message_from_row(row: Any, conversation_id: str | None = None) -> StoredMessage:
    """The message of a row of ``messages.*`` (more columns after them are ignored);
    ``conversation_id``: the conversation every row read belongs to, when the
    statement did not select it (see :func:`convo._store.sql.open_query`).

    A row no message can have (a role outside the known ones, parts or tool calls
    that are not theirs, metadata that is not a JSON object: a row changed outside
    convo) raises :class:`~convo.StoredDataError` (see :func:`message_problem`;
    the try costs nothing when nothing is raised)."""
    (
        id_, cid, seq, role, content, parts, name, tool_calls, refusal,
        tool_call_id, metadata, pinned, idempotency_key, model, finish_reason, usage,
        fingerprint, seed, created_at,
    ) = row if len(row) == 19 else row[:19]
    try:
        if metadata is not None and type(metadata) is not dict:
            raise TypeError("metadata")
        reply = None
        if (
            model is not None
            or finish_reason is not None
            or usage is not None
            or fingerprint is not None
            or seed is not None
        ):
            if usage is not None and type(usage) is not dict:
                raise TypeError("usage")
            reply = construct(ReplyInfo, {
                "model": model,
                "finish_reason": finish_reason,
                "usage": usage,
                "system_fingerprint": fingerprint,
                "seed": seed,
            }, _REPLY_FIELDS)
        return construct(StoredMessage, {
            "role": _ROLES[role],  # (a KeyError for a role no message has)
            "content": _PARTS.validate_python(parts) if parts is not None else content,
            "name": name,
            "tool_calls": _TOOL_CALLS.validate_python(tool_calls) if tool_calls is not None else None,
            "refusal": refusal,
            "tool_call_id": tool_call_id,
            "metadata": metadata or {},
            "id": id_,
            "conversation_id": cid if conversation_id is None else conversation_id,
            "seq": seq,
            "created_at": created_at,
            "pinned": bool(pinned),
            "idempotency_key": idempotency_key,
            "reply": reply,
        }, _STORED_FIELDS)
    except (ValueError, TypeError, KeyError, AttributeError):
        values = dict(zip(MESSAGE_COLUMNS, row, strict=False))
        if conversation_id is not None:
            values["conversation_id"] = conversation_id
        error = message_error(values)
        if error is None:
            raise
    raise error from None  # (the error may quote the value: not chained)


#: the roles a stored message may have, each mapped to itself (a lookup that
#: raises KeyError for any other: see message_from_row)
_ROLES = {role: role for role in ROLES}


def damaged(
    table: str, column: str, value: Any, problem: str, *, conversation_id: Any = None,
    seq: Any = None, row_id: Any = None,
) -> StoredDataError:
    """The :class:`~convo.StoredDataError` of ``value``, stored in ``column`` of a row of
    ``table``: it names the value's type, never the value."""
    return StoredDataError(
        table, column,
        conversation_id=conversation_id if type(conversation_id) is str else None,
        seq=seq if type(seq) is int else None,
        row_id=row_id if type(row_id) in (int, str) else None,
        value_type=type(value).__name__, problem=problem,
    )


def _not_int(value: Any) -> bool:
    return type(value) is not int


def _not_text(value: Any) -> bool:
    return value is not None and type(value) is not str


def _not_object(value: Any) -> bool:
    return value is not None and type(value) is not dict


def _not_valid(adapter: TypeAdapter[Any]) -> Any:
    def check(value: Any) -> bool:
        if value is None:
            return False
        try:
            adapter.validate_python(value)
        except ValueError:
            return True
        return False
    return check


def _not_stamp(value: Any) -> bool:
    # (None: a turn's lean read, which has no timestamp; the column is NOT NULL)
    return value is not None and (type(value) is not datetime or value.tzinfo is None)


#: What each column of a message row must hold: a test of a value that it cannot,
#: and what to call such a value (see :func:`message_problem`)
_MESSAGE_CHECKS: dict[str, tuple[Any, str]] = {
    "id": (_not_int, "not an integer"),
    "conversation_id": (lambda v: type(v) is not str, "not a conversation id"),
    "seq": (_not_int, "not an integer"),
    "role": (lambda v: type(v) is not str or v not in _ROLES, "not a role"),
    "content": (_not_text, "not text"),
    "parts": (_not_valid(_PARTS), "not content parts"),
    "name": (_not_text, "not text"),
    "tool_calls": (_not_valid(_TOOL_CALLS), "not tool calls"),
    "refusal": (_not_text, "not text"),
    "tool_call_id": (_not_text, "not text"),
    "metadata": (_not_object, "not a JSON object"),
    "idempotency_key": (_not_text, "not text"),
    "model": (_not_text, "not text"),
    "finish_reason": (_not_text, "not text"),
    "usage": (_not_object, "not a JSON object"),
    "system_fingerprint": (_not_text, "not text"),
    "seed": (lambda v: v is not None and type(v) is not int, "not an integer"),
    "created_at": (_not_stamp, "not a timestamp"),
}


def message_problem(values: Mapping[str, Any]) -> tuple[str, str] | None:
    """The first column of a message row (``values``: by column name, decoded) that
    holds what no stored message can, and what is wrong with it; None if none does.
    The slow path of the converters, after one failed: they check nothing themselves."""
    for column, value in values.items():
        check = _MESSAGE_CHECKS.get(column)
        if check is not None and check[0](value):
            return column, check[1]
    return None


def message_error(values: Mapping[str, Any]) -> StoredDataError | None:
    """The :class:`~convo.StoredDataError` of a message row that no message can have
    (see :func:`message_problem`), None if it is a message's."""
    found = message_problem(values)
    if found is None:
        return None
    column, problem = found
    return damaged("messages", column, values[column], problem,
                   conversation_id=values.get("conversation_id"), seq=values.get("seq"),
                   row_id=values.get("id"))


def seq_error(rows: Any) -> StoredDataError | None:
    """The :class:`~convo.StoredDataError` of the first message row of ``rows`` whose
    seq is not an integer (SQLite keeps a real number or text in the column, and a seq
    range reads a real one), None if every seq is one. One sum in C over the seqs finds
    it (a real makes the sum one, text raises TypeError); only then are the rows looked at."""
    try:
        if type(sum(map(itemgetter(2), rows))) is int:  # (2: MESSAGE_COLUMNS' seq)
            return None
    except TypeError:
        pass
    for row in rows:
        if type(row[2]) is not int:
            return damaged("messages", "seq", row[2], "not an integer",
                           conversation_id=row[1], row_id=row[0])
    return None


# the fields sets of the values message_from_row builds (see construct)
_STORED_FIELDS = {
    "role", "content", "name", "tool_calls", "refusal", "tool_call_id", "metadata", "id",
    "conversation_id", "seq", "created_at", "pinned", "idempotency_key", "reply",
}
_REPLY_FIELDS = {"model", "finish_reason", "usage", "system_fingerprint", "seed"}
assert _STORED_FIELDS == set(StoredMessage.model_fields)
assert _REPLY_FIELDS == set(ReplyInfo.model_fields)


def stored_message(
    message: Message,
    params: Mapping[str, Any],
    *,
    id: int,
    conversation_id: str,
    seq: int,
    created_at: datetime,
) -> StoredMessage:
    """The value of a message just written (no read back needed); ``params`` are its
    column values, NULL ones as None or left out (see :func:`message_values`)."""
    get = params.get
    if type(message) is Message and params.keys() <= _PLAIN_KEYS:
        # no key, no reply (given as compact values, see message_values): the
        # message's fields as they are, and the identity (~3x cheaper)
        values = {
            **message.__dict__, "id": id, "conversation_id": conversation_id, "seq": seq,
            "created_at": created_at, "pinned": params["pinned"], "idempotency_key": None,
            "reply": None,
        }
        # every field given: the fields set is the one every stored message shares
        return construct(StoredMessage, values, _STORED_FIELDS)
    reply = None
    if (
        get("model") is not None
        or get("finish_reason") is not None
        or get("usage") is not None
        or get("system_fingerprint") is not None
        or get("seed") is not None
    ):
        reply = construct(ReplyInfo, {
            "model": get("model"),
            "finish_reason": get("finish_reason"),
            "usage": get("usage"),
            "system_fingerprint": get("system_fingerprint"),
            "seed": get("seed"),
        })
    return construct(StoredMessage, {
        "role": message.role,
        "content": message.content,
        "name": message.name,
        "tool_calls": message.tool_calls,
        "refusal": message.refusal,
        "tool_call_id": message.tool_call_id,
        "metadata": get("metadata") or {},
        "id": id,
        "conversation_id": conversation_id,
        "seq": seq,
        "created_at": created_at,
        "pinned": params["pinned"],
        "idempotency_key": get("idempotency_key"),
        "reply": reply,
    })


#: The values of a message without key or reply (see :func:`stored_message`).
_PLAIN_KEYS = frozenset((
    "role", "pinned", "content", "parts", "name", "tool_calls", "refusal", "tool_call_id",
    "metadata", "conversation_id", "seq", "created_at", "id",
))


def tokens_from_row(
    row: Any, conversation_id: str | None = None
) -> tuple[StoredMessage, int | None]:
    return message_from_row(row, conversation_id), row[19]


# the rare columns are the message columns compact_query does not select, in order
assert RARE_COLUMNS == tuple(c for c in MESSAGE_COLUMNS if c not in (
    "id", "conversation_id", "seq", "role", "content", "pinned", "created_at"))
#: Where :data:`convo._store.sql.RARE_COLUMNS` has its JSON columns (stored as JSON text).
_RARE_JSON = tuple(i for i, name in enumerate(RARE_COLUMNS)
                   if name in ("parts", "tool_calls", "metadata", "usage"))


def compact_messages(rows: Any, conversation_id: str) -> list[tuple[StoredMessage, int | None]]:
    """The messages and stored counts of message rows of
    :func:`convo._store.sql.compact_query` (``id, seq, role, content, flag,
    created_at, tokens, rare``; a flag other than 0 means pinned).

    ``created_at`` comes as the stored text, parsed here as the column's type
    parses it on SQLite (:class:`convo._store.schema.UTCDateTime`).
    A plain text message (``rare`` NULL: the rows a build reads by the dozen) is
    built here, in one loop (what :func:`construct` does, inline); any other row
    is unpacked into the full column layout and built by :func:`message_from_row`,
    its JSON columns decoded as the driver path decodes them
    (:func:`convo._store.driver.json_value`).
    """
    out: list[tuple[StoredMessage, int | None]] = []
    append, new, cls, fields = out.append, _new, StoredMessage, _STORED_FIELDS
    set_dict, set_fields, set_extra, set_private = _set_dict, _set_fields, _set_extra, _set_private
    parse, stamp = datetime.fromisoformat, _SQLITE_STAMP
    plain = _plain_values(conversation_id)
    copy = dict.copy
    roles = _ROLES
    try:  # (free in Python 3.11 when nothing is raised: a damaged row is found after)
        for id_, seq, role, content, flag, text, tokens, rare in rows:
            try:
                created_at = parse(text + "+00:00")  # what the column's type makes of UTC text
            except (TypeError, ValueError):
                created_at = stamp(text)  # anything else: the type's own route
            if rare is not None:
                append((_rare_message(id_, conversation_id, seq, role, content, flag, created_at,
                                      rare), tokens))
                continue
            msg = new(cls)
            values = copy(plain)  # (copying a dict of the same keys beats building one)
            values["role"] = roles[role]  # (a KeyError for a role no message has)
            values["content"] = content
            values["metadata"] = {}
            values["id"] = id_
            values["seq"] = seq
            values["created_at"] = created_at
            values["pinned"] = flag != 0
            set_dict(msg, values)
            set_fields(msg, fields)
            set_extra(msg, None)
            set_private(msg, None)
            append((msg, tokens))
    except (ValueError, TypeError, KeyError, AttributeError):
        error = compact_error(rows, conversation_id, lean=False)
        if error is None:
            raise
        raise error from None  # (the error may quote the value: not chained)
    return out


def _plain_values(conversation_id: str) -> dict[str, Any]:
    """A plain message's values in the fields' order, the per-row ones left None: the
    template :func:`compact_messages` and :func:`lean_messages` copy for each row."""
    return {
        "role": None, "content": None, "name": None, "tool_calls": None, "refusal": None,
        "tool_call_id": None, "metadata": None, "id": None,
        "conversation_id": conversation_id, "seq": None, "created_at": None, "pinned": None,
        "idempotency_key": None, "reply": None,
    }


def lean_messages(
    rows: Any, conversation_id: str
) -> list[tuple[StoredMessage | WireText, int | None]]:
    """The messages of rows of ``compact_query(..., lean=True)``, for a turn's build only.

    A turn's build reads its messages' wire fields (role, content, name, tool
    calls, refusal, tool call id), their identity (id, conversation, seq) and
    ``pinned``, and hands none of the messages out: a turn returns the context's
    report and sends the rendered body. So these values leave out what no build
    reads. A row whose only rare columns are its metadata, idempotency key or
    reply info (a stored reply: most of a chat's rows) counts as plain, its JSON
    not decoded. A plain ``system``, ``user`` or ``assistant`` row with a stored
    count (nearly every row of a chat) is a :class:`~convo._records.WireText`
    (role, text, seq, id: all the build reads of it; pinned or not is told by
    the part of the read it comes in). Any other plain row (a ``developer``
    message, or one without a count, which the build tokenizes and whose count
    it stores) is a :class:`StoredMessage` without timestamp, metadata, key or
    reply; rows with a wire rare column are built whole, as
    :func:`compact_messages` builds them (``created_at`` aside).
    ``tests/test_turn_build.py`` checks that a turn's build gives the public
    build's report and request.
    """
    out: list[tuple[StoredMessage | WireText, int | None]] = []
    append, new, cls, fields, wire = out.append, _new, StoredMessage, _STORED_FIELDS, WireText
    set_dict, set_fields, set_extra, set_private = _set_dict, _set_fields, _set_extra, _set_private
    plain = _plain_values(conversation_id)
    copy = dict.copy
    wire_text = _WIRE_TEXT_ROLES
    try:  # (free in Python 3.11 when nothing is raised: a damaged row is found after)
        for id_, seq, role, content, flag, tokens, rare in rows:
            if rare is not None:
                append((_rare_message(id_, conversation_id, seq, role, content, flag, None,  # type: ignore[arg-type]
                                      rare), tokens))
                continue
            # (the role's lookup raises KeyError for a role no message has)
            if wire_text[role] and tokens is not None and type(content) is str:
                text = new(wire)
                text.role = role
                text.content = content
                text.seq = seq
                text.id = id_
                append((text, tokens))
                continue
            msg = new(cls)
            values = copy(plain)
            values["role"] = role
            values["content"] = content
            values["metadata"] = {}
            values["id"] = id_
            values["seq"] = seq
            values["pinned"] = flag != 0
            set_dict(msg, values)
            set_fields(msg, fields)
            set_extra(msg, None)
            set_private(msg, None)
            append((msg, tokens))
    except (ValueError, TypeError, KeyError, AttributeError):
        error = compact_error(rows, conversation_id, lean=True)
        if error is None:
            raise
        raise error from None  # (the error may quote the value: not chained)
    return out


def compact_error(rows: Any, conversation_id: str, *, lean: bool) -> StoredDataError | None:
    """The :class:`~convo.StoredDataError` of the first row of ``rows`` (of
    :func:`compact_messages`, or with ``lean`` :func:`lean_messages`) that no
    message can have, None if there is none: their slow path, after one failed."""
    for row in rows:
        if lean:
            id_, seq, role, content, _, _, rare = row
            created_at = None
        else:
            id_, seq, role, content, _, created_at, _, rare = row
        where = {"conversation_id": conversation_id, "seq": seq, "row_id": id_}
        if created_at is not None:
            try:
                created_at = _SQLITE_STAMP(created_at)
            except (ValueError, TypeError, AttributeError):
                return damaged("messages", "created_at", created_at, "not a timestamp", **where)
        values = {"id": id_, "conversation_id": conversation_id, "seq": seq, "role": role,
                  "content": content}
        if rare is not None:
            packed = json_value(rare)
            for i, column in enumerate(RARE_COLUMNS):
                value = packed[i]
                if i in _RARE_JSON and type(value) is str:
                    try:
                        value = json_value(value)
                    except ValueError:
                        return damaged("messages", column, value, "not JSON", **where)
                values[column] = value
        values["created_at"] = created_at
        error = message_error(values)
        if error is not None:
            return error
    return None


#: The roles a plain text row renders the same under every chat profile (see
#: :func:`convo._render.chat.render_chat`): the rows :func:`lean_messages` makes
#: :class:`~convo._records.WireText` of
#: (by role: True for those; a KeyError for a role no message has)
_WIRE_TEXT_ROLES = {"system": True, "user": True, "assistant": True, "developer": False,
                    "tool": False}
assert _WIRE_TEXT_ROLES.keys() == _ROLES.keys()


#: What the created_at column's type makes of its stored text on SQLite.
_SQLITE_STAMP = UTCDateTime().result_processor(sqlite.dialect(), None)


def _rare_message(
    id_: int, conversation_id: str, seq: int, role: str, content: str | None, flag: int,
    created_at: datetime, rare: str,
) -> StoredMessage:
    values = json_value(rare)  # SQLite's json_array of the columns: text as JSON strings
    for i in _RARE_JSON:
        if type(values[i]) is str:
            values[i] = json_value(values[i])
    (parts, name, tool_calls, refusal, tool_call_id, metadata, key, model, finish_reason,
     usage, fingerprint, seed) = values
    return message_from_row((
        id_, conversation_id, seq, role, content, parts, name, tool_calls, refusal,
        tool_call_id, metadata, flag != 0, key, model, finish_reason, usage, fingerprint, seed,
        created_at,
    ))


# --- summaries ---------------------------------------------------------------------


def summary_from_row(row: Any) -> Summary:
    metadata = row.metadata
    if metadata is not None and type(metadata) is not dict:
        raise damaged("summaries", "metadata", metadata, "not a JSON object",
                      conversation_id=row.conversation_id, row_id=row.id)
    return construct(Summary, {
        "id": row.id,
        "conversation_id": row.conversation_id,
        "start_seq": row.start_seq,
        "end_seq": row.end_seq,
        "content": row.content,
        "created_at": row.created_at,
        "metadata": row.metadata or {},
    })


# --- list cursors --------------------------------------------------------------------


def encode_cursor(updated_at: datetime, conversation_id: str) -> str:
    """An opaque keyset cursor: the (updated_at, id) of the last item of a page."""
    raw = json.dumps([updated_at.isoformat(), conversation_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


_CURSOR_MAX = 200  # an encoded cursor is ~90 characters
_CONVERSATION_ID = re.compile(r"[0-9a-f]{32}")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (updated_at, id) of a cursor from :func:`encode_cursor`.

    A cursor comes back from the caller, so anything can arrive: every field is
    checked to be what :func:`encode_cursor` writes (an aware timestamp that
    converts to UTC, a conversation id) before it reaches a statement.
    """
    try:
        if not isinstance(cursor, str) or len(cursor) > _CURSOR_MAX:
            raise ValueError("not a cursor")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, conversation_id = json.loads(raw)
        if not isinstance(stamp, str) or not isinstance(conversation_id, str):
            raise TypeError("bad cursor fields")
        if not _CONVERSATION_ID.fullmatch(conversation_id):
            raise ValueError("bad conversation id")
        when = datetime.fromisoformat(stamp)
        if when.tzinfo is None:
            raise ValueError("naive timestamp")
        when = when.astimezone(UTC)
    except (ValueError, TypeError, OverflowError, binascii.Error) as exc:
        raise StoreInputError(
            "invalid cursor: pass a next_cursor returned by list_conversations"
        ) from exc
    return when, conversation_id
