"""convo's native export format: one JSON line per conversation, every column kept.

This module is the format alone (pure, no I/O): rows -> JSON values for the
exporter, and JSON values -> checked column values for the importer. Both
directions live side by side so they cannot drift.

A file is JSON Lines. Each conversation is one ``conversation`` record::

    {"format": "convo.native", "version": 1, "type": "conversation",
     "conversation": {"id", "title", "owner", "metadata", "created_at", "updated_at",
                      "parent_id", "fork_seq", "last_seq",
                      "branch_kind", "branch_of", "current_branch_id"},
     "counts": {"messages": 4, "summaries": 0, "runs": 2},
     "messages": [...], "summaries": [...], "runs": [...]}

``messages`` are the conversation's *own* rows (a fork's inherited history
stays with its parent, which comes earlier in the file), oldest first, with
every column but ``conversation_id`` plus optional ``tokens``
(``{encoding: count}``). ``runs`` carry every column but ``conversation_id``
plus ``reply_seq``: the seq of the reply message in this conversation, which
lets an import that gives rows new ids find the new id of the reply.

A conversation too large for one line (over ``CHUNK_ITEMS`` items or about
``CHUNK_BYTES`` of JSON) continues on ``part`` records that follow it
directly: ``{"format", "version", "type": "part", "conversation_id",
"messages", "summaries", "runs"}``. Within a conversation, all messages come
first, then its summaries, then its runs; ``counts`` says how many of each
there are in total, so a cut file is detected.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from pydantic import ValidationError

from .._exceptions import InvalidMessageError, StoreInputError
from .._messages import parse_message
from .._records import ReplyInfo
from .._store.branches import BRANCH_KINDS
from .._store.inputs import INT32_MAX
from .._store.rows import FINISH_REASON_MAX, MESSAGE_COLUMNS, SHORT_TEXT_MAX, message_params
from .._store.runs import _RUN_COLUMNS, ENDPOINTS, FINAL_STATUSES, MODES, request_text

__all__ = [
    "CHUNK_BYTES",
    "CHUNK_ITEMS",
    "CONVERSATION_FIELDS",
    "FORMAT",
    "VERSION",
    "RecordError",
    "conversation_columns",
    "dumps",
    "message_columns",
    "message_json",
    "message_row",
    "run_columns",
    "run_json",
    "summary_columns",
    "summary_json",
    "timestamp",
]

FORMAT: Final = "convo.native"
VERSION: Final = 1

#: A record is closed after this many items (messages + summaries + runs) ...
CHUNK_ITEMS: Final = 1000
#: ... or once its JSON passes this many characters (one item may exceed it).
CHUNK_BYTES: Final = 1 << 20

CONVERSATION_FIELDS: Final = (
    "id", "title", "owner", "metadata", "created_at", "updated_at", "parent_id", "fork_seq",
    "last_seq", "branch_kind", "branch_of", "current_branch_id",
)
MESSAGE_FIELDS: Final = tuple(c for c in MESSAGE_COLUMNS if c != "conversation_id")
SUMMARY_FIELDS: Final = ("id", "start_seq", "end_seq", "content", "metadata", "created_at")
RUN_FIELDS: Final = tuple(c for c in _RUN_COLUMNS if c != "conversation_id")

_MESSAGE_KEYS = frozenset(MESSAGE_FIELDS) | {"tokens"}
_RUN_KEYS = frozenset(RUN_FIELDS) | {"reply_seq"}
_RUN_STATUSES = ("pending", *FINAL_STATUSES)
_MAX_ID = 2**63 - 1


class RecordError(Exception):
    """One thing wrong with one record (the importer adds the line number)."""


def dumps(value: Any) -> str:
    """Compact JSON text, non-ASCII kept, NaN refused (the format is strict JSON)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def timestamp(value: datetime | None) -> str | None:
    """A stored timestamp as ISO 8601 text with its UTC offset (microseconds kept)."""
    return None if value is None else value.isoformat()


# --- rows -> JSON -------------------------------------------------------------------------

_MSG_INDEX = {name: i for i, name in enumerate(MESSAGE_COLUMNS)}
_CREATED = _MSG_INDEX["created_at"]


def message_json(row: Sequence[Any], tokens: Mapping[str, int] | None) -> dict[str, Any]:
    """A ``messages`` row (all columns, in table order) as a native message."""
    out = {name: row[i] for name, i in _MSG_INDEX.items() if name != "conversation_id"}
    out["pinned"] = bool(out["pinned"])
    out["created_at"] = timestamp(row[_CREATED])
    if tokens:
        out["tokens"] = dict(tokens)
    return out


def summary_json(row: Any) -> dict[str, Any]:
    return {
        "id": row.id, "start_seq": row.start_seq, "end_seq": row.end_seq,
        "content": row.content, "metadata": row.metadata,
        "created_at": timestamp(row.created_at),
    }


def run_json(row: Any, reply_seq: int | None) -> dict[str, Any]:
    out = {name: getattr(row, name) for name in RUN_FIELDS}
    out["stream"] = bool(out["stream"])
    out["created_at"] = timestamp(row.created_at)
    out["finished_at"] = timestamp(row.finished_at)
    out["reply_seq"] = reply_seq
    return out


def conversation_json(row: Any) -> dict[str, Any]:
    out = {name: getattr(row, name) for name in CONVERSATION_FIELDS}
    out["created_at"] = timestamp(row.created_at)
    out["updated_at"] = timestamp(row.updated_at)
    return out


# --- JSON -> checked column values ---------------------------------------------------------


def _keys(obj: Any, allowed: frozenset[str], required: frozenset[str], what: str) -> None:
    if not isinstance(obj, dict):
        raise RecordError(f"{what} must be a JSON object")
    unknown = obj.keys() - allowed
    if unknown:
        raise RecordError(f"{what} has unknown fields: {', '.join(sorted(unknown))}")
    missing = required - obj.keys()
    if missing:
        raise RecordError(f"{what} lacks fields: {', '.join(sorted(missing))}")


def _str(obj: Mapping[str, Any], key: str, what: str, *, limit: int | None = SHORT_TEXT_MAX,
         optional: bool = True) -> str | None:
    value = obj.get(key)
    if value is None:
        if optional:
            return None
        raise RecordError(f"{what}: {key} is required")
    if not isinstance(value, str):
        raise RecordError(f"{what}: {key} must be a string")
    if limit is not None and len(value) > limit:
        raise RecordError(f"{what}: {key} is longer than {limit} characters")
    return value


def _int(obj: Mapping[str, Any], key: str, what: str, *, minimum: int = 0,
         maximum: int = _MAX_ID, optional: bool = True) -> int | None:
    value = obj.get(key)
    if value is None:
        if optional:
            return None
        raise RecordError(f"{what}: {key} is required")
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
        raise RecordError(f"{what}: {key} must be an integer in {minimum}..{maximum}")
    return value


def _bool(obj: Mapping[str, Any], key: str, what: str) -> bool:
    value = obj.get(key)
    if not isinstance(value, bool):
        raise RecordError(f"{what}: {key} must be true or false")
    return value


def _ms(obj: Mapping[str, Any], key: str, what: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if (not isinstance(value, (int, float)) or isinstance(value, bool)
            or not math.isfinite(value) or value < 0):
        raise RecordError(f"{what}: {key} must be a number >= 0")
    return float(value)


def _object(obj: Mapping[str, Any], key: str, what: str) -> dict[str, Any] | None:
    """A JSON object column, kept as given (an empty object stays one)."""
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise RecordError(f"{what}: {key} must be a JSON object or null")
    return value


def _time(obj: Mapping[str, Any], key: str, what: str, *, optional: bool = False) -> datetime | None:
    value = obj.get(key)
    if value is None:
        if optional:
            return None
        raise RecordError(f"{what}: {key} is required")
    if not isinstance(value, str):
        raise RecordError(f"{what}: {key} must be an ISO 8601 timestamp")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise RecordError(f"{what}: {key} is not an ISO 8601 timestamp: {value!r}") from None
    if parsed.tzinfo is None:
        raise RecordError(f"{what}: {key} needs a UTC offset (e.g. +00:00): {value!r}")
    return parsed.astimezone(UTC)


_CONVERSATION_KEYS = frozenset(CONVERSATION_FIELDS)
_CONVERSATION_REQUIRED = frozenset({"id", "created_at", "updated_at", "last_seq"})


def conversation_columns(obj: Any) -> dict[str, Any]:
    """A native conversation as ``conversations`` column values (checked)."""
    what = "conversation"
    _keys(obj, _CONVERSATION_KEYS, _CONVERSATION_REQUIRED, what)
    cid = _str(obj, "id", what, limit=32, optional=False)
    assert cid is not None
    if not cid:
        raise RecordError("conversation: id must not be empty")
    what = f"conversation {cid!r}"
    parent = _str(obj, "parent_id", what, limit=32)
    fork_seq = _int(obj, "fork_seq", what)
    if (parent is None) != (fork_seq is None):
        raise RecordError(f"{what}: parent_id and fork_seq go together (a fork has both)")
    last_seq = _int(obj, "last_seq", what, optional=False)
    assert last_seq is not None
    if fork_seq is not None and last_seq < fork_seq:
        raise RecordError(f"{what}: last_seq {last_seq} is below its fork_seq {fork_seq}")
    if parent == cid:
        raise RecordError(f"{what}: a conversation cannot be its own parent")
    kind = _str(obj, "branch_kind", what, limit=16)
    branch_of = _str(obj, "branch_of", what, limit=32)
    if kind is not None and kind not in BRANCH_KINDS:
        raise RecordError(f"{what}: branch_kind must be one of {', '.join(BRANCH_KINDS)}")
    title = obj.get("title")
    if title is not None and not isinstance(title, str):
        raise RecordError(f"{what}: title must be a string")
    return {
        "id": cid,
        "title": title,
        "owner": _str(obj, "owner", what),
        "metadata": _object(obj, "metadata", what),
        "created_at": _time(obj, "created_at", what),
        "updated_at": _time(obj, "updated_at", what),
        "parent_id": parent,
        "fork_seq": fork_seq,
        "last_seq": last_seq,
        "branch_kind": kind,
        "branch_of": branch_of,
        "current_branch_id": _str(obj, "current_branch_id", what, limit=32),
    }


_MESSAGE_REQUIRED = frozenset({"id", "seq", "role", "created_at"})


def message_columns(obj: Any) -> tuple[dict[str, Any], dict[str, int]]:
    """A native message as ``messages`` column values (all but conversation_id) and its
    token counts. The message itself goes through :func:`convo.parse_message` (OpenAI's
    rules: roles, tool calls, content parts) and the store's own column mapping."""
    what = "message"
    _keys(obj, _MESSAGE_KEYS, _MESSAGE_REQUIRED, what)
    seq = _int(obj, "seq", what, minimum=1, optional=False)
    what = f"message {seq}"
    message_id = _int(obj, "id", what, minimum=1, optional=False)
    parts = obj.get("parts")
    if parts is not None and not isinstance(parts, list):
        raise RecordError(f"{what}: parts must be a list or null")
    metadata = obj.get("metadata")
    try:
        msg = parse_message({
            "role": obj["role"],
            "content": parts if parts is not None else obj.get("content"),
            "name": obj.get("name"),
            "tool_calls": obj.get("tool_calls"),
            "refusal": obj.get("refusal"),
            "tool_call_id": obj.get("tool_call_id"),
            "metadata": metadata if metadata is not None else {},
        })
    except InvalidMessageError as exc:
        raise RecordError(f"{what}: {exc}") from None
    if parts is None and isinstance(obj.get("content"), list):
        raise RecordError(f"{what}: list content goes in parts")
    reply = None
    reply_fields = {k: obj.get(k) for k in ("model", "finish_reason", "usage",
                                            "system_fingerprint", "seed")}
    if any(v is not None for v in reply_fields.values()):
        _str(obj, "finish_reason", what, limit=FINISH_REASON_MAX)
        _int(obj, "seed", what, minimum=-(2**63))
        _object(obj, "usage", what)
        try:
            reply = ReplyInfo.model_validate(reply_fields)
        except ValidationError as exc:
            raise RecordError(f"{what}: bad reply info: {exc.errors()[0]['msg']}") from None
    try:
        columns = message_params(
            msg,
            # absent: the store's default (system / developer messages are pinned)
            pinned=_bool(obj, "pinned", what) if "pinned" in obj else None,
            idempotency_key=_str(obj, "idempotency_key", what),
            reply=reply,
        )
    except (StoreInputError, InvalidMessageError) as exc:
        raise RecordError(f"{what}: {exc}") from None
    columns["id"] = message_id
    columns["seq"] = seq
    columns["created_at"] = _time(obj, "created_at", what)
    tokens = obj.get("tokens") or {}
    if not isinstance(tokens, dict) or not all(
        isinstance(k, str) and 0 < len(k) <= 64
        and isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= INT32_MAX
        for k, v in tokens.items()
    ):
        raise RecordError(
            f"{what}: tokens must map encoding names to counts in 0..{INT32_MAX}"
        )
    return columns, tokens


def message_row(obj: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
    """:func:`message_columns` for a message that already passed it (the import's
    write pass, over bytes it checked): plain messages skip the validation, the
    rest (content parts, tool calls: canonicalized by their models) take it again.
    A test keeps both paths equal."""
    if obj.get("parts") is not None or obj.get("tool_calls") is not None:
        return message_columns(obj)
    role = obj["role"]
    pinned = obj.get("pinned")
    return {
        "role": role,
        "content": obj.get("content"),
        "parts": None,
        "name": obj.get("name"),
        "tool_calls": None,
        "refusal": obj.get("refusal"),
        "tool_call_id": obj.get("tool_call_id"),
        "metadata": obj.get("metadata") or None,
        "pinned": pinned if pinned is not None else role in ("system", "developer"),
        "idempotency_key": obj.get("idempotency_key"),
        "model": obj.get("model"),
        "finish_reason": obj.get("finish_reason"),
        "usage": obj.get("usage"),
        "system_fingerprint": obj.get("system_fingerprint"),
        "seed": obj.get("seed"),
        "id": obj["id"],
        "seq": obj["seq"],
        "created_at": datetime.fromisoformat(obj["created_at"]).astimezone(UTC),
    }, obj.get("tokens") or {}


_SUMMARY_KEYS = frozenset(SUMMARY_FIELDS)
_SUMMARY_REQUIRED = frozenset({"id", "start_seq", "end_seq", "content", "created_at"})


def summary_columns(obj: Any) -> dict[str, Any]:
    """A native summary as ``summaries`` column values (all but conversation_id)."""
    what = "summary"
    _keys(obj, _SUMMARY_KEYS, _SUMMARY_REQUIRED, what)
    summary_id = _int(obj, "id", what, minimum=1, optional=False)
    what = f"summary {summary_id}"
    start = _int(obj, "start_seq", what, minimum=1, optional=False)
    end = _int(obj, "end_seq", what, minimum=1, optional=False)
    assert start is not None and end is not None
    if end < start:
        raise RecordError(f"{what}: end_seq {end} is before start_seq {start}")
    content = obj.get("content")
    if not isinstance(content, str):
        raise RecordError(f"{what}: content must be a string")
    return {
        "id": summary_id, "start_seq": start, "end_seq": end, "content": content,
        "metadata": _object(obj, "metadata", what), "created_at": _time(obj, "created_at", what),
    }


_RUN_REQUIRED = frozenset({"id", "endpoint", "mode", "model", "request", "status", "created_at"})


def run_columns(obj: Any) -> tuple[dict[str, Any], int | None]:
    """A native run as ``runs`` column values (all but conversation_id) and its ``reply_seq``."""
    what = "run"
    _keys(obj, _RUN_KEYS, _RUN_REQUIRED, what)
    run_id = _str(obj, "id", what, limit=32, optional=False)
    what = f"run {run_id!r}"
    for key, allowed in (("endpoint", ENDPOINTS), ("mode", MODES), ("status", _RUN_STATUSES)):
        if obj.get(key) not in allowed:
            raise RecordError(f"{what}: {key} must be one of {', '.join(allowed)}")
    model = _str(obj, "model", what, optional=False)
    if not model:
        raise RecordError(f"{what}: model must not be empty")
    request = obj.get("request")
    if not isinstance(request, str):
        raise RecordError(f"{what}: request must be the body as JSON text")
    try:
        request_text(request)
    except StoreInputError as exc:
        raise RecordError(f"{what}: {exc}") from None
    kept = obj.get("kept_seqs")
    if kept is not None and (not isinstance(kept, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= _MAX_ID for s in kept
    )):
        raise RecordError(f"{what}: kept_seqs must be a list of seqs (integers >= 1)")
    base_url = obj.get("base_url")
    if base_url is not None and not isinstance(base_url, str):
        raise RecordError(f"{what}: base_url must be a string")
    error_message = obj.get("error_message")
    if error_message is not None and not isinstance(error_message, str):
        raise RecordError(f"{what}: error_message must be a string")
    columns = {
        "id": run_id,
        "owner": _str(obj, "owner", what),
        "endpoint": obj["endpoint"],
        "mode": obj["mode"],
        "model": model,
        "base_url": base_url,
        "stream": _bool(obj, "stream", what) if "stream" in obj else False,
        "request": request,
        "settings": _object(obj, "settings", what),
        "kept_seqs": kept,
        "summary_id": _int(obj, "summary_id", what, minimum=1),
        "input_seq": _int(obj, "input_seq", what, maximum=INT32_MAX),
        "idempotency_key": _str(obj, "idempotency_key", what),
        "round": _int(obj, "round", what, maximum=INT32_MAX) or 0,
        "estimated_prompt_tokens": _int(obj, "estimated_prompt_tokens", what, maximum=INT32_MAX),
        "reported_prompt_tokens": _int(obj, "reported_prompt_tokens", what, maximum=INT32_MAX),
        "completion_tokens": _int(obj, "completion_tokens", what, maximum=INT32_MAX),
        "usage": _object(obj, "usage", what),
        "reply_message_id": _int(obj, "reply_message_id", what, minimum=1),
        "status": obj["status"],
        "error_type": _str(obj, "error_type", what),
        "error_message": error_message,
        "attempts": _int(obj, "attempts", what, maximum=INT32_MAX) or 0,
        "ttfb_ms": _ms(obj, "ttfb_ms", what),
        "latency_ms": _ms(obj, "latency_ms", what),
        "finish_reason": _str(obj, "finish_reason", what, limit=FINISH_REASON_MAX),
        "system_fingerprint": _str(obj, "system_fingerprint", what),
        "seed": _int(obj, "seed", what, minimum=-(2**63)),
        "response": _object(obj, "response", what),
        "reproduces_id": _str(obj, "reproduces_id", what, limit=32),
        "replays_id": _str(obj, "replays_id", what, limit=32),
        "metadata": _object(obj, "metadata", what),
        "created_at": _time(obj, "created_at", what),
        "finished_at": _time(obj, "finished_at", what, optional=True),
    }
    return columns, _int(obj, "reply_seq", what, minimum=1)
