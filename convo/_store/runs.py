"""Store plans for run records (the ``runs`` table), shared by both store shells.

Same contract as :mod:`convo._store.core`: each function is a plan that
yields statements and never touches a connection.

A run is written twice: :func:`start_run` inserts it as ``pending`` before
the request is sent (its own short transaction, so a crash mid-request
leaves a trace), and :func:`finish_run` records the outcome, together with
the reply message when there is one, in one transaction: a reply is never
stored without its run saying ``ok``, nor the other way round.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, NoReturn, cast

import pydantic_core
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict

from .._client.types import SerializedRequest
from .._exceptions import ConversationNotFound, MessageNotFound, RunNotFound, StoreInputError
from .._messages import Message, parse_message
from .._records import ReplyInfo, Run, RunPage, StoredMessage
from . import sql
from .context import TokenCounts, token_rows, token_rows_plan
from .core import (
    ROLLBACK,
    Op,
    Plan,
    _lineage,
    get_conversation,
    insert_message,
    newest_first,
    now,
)
from .inputs import (
    INT32_MAX,
    INT_MAX,
    INT_MIN,
    CheckedJSON,
    check_json,
    check_text,
    check_values,
    contains,
    json_text,
)
from .rows import (
    check_short,
    construct,
    damaged,
    message_from_row,
    message_params,
    stored_message,
    validate_json_dict,
)
from .schema import RunRow

__all__ = [
    "FinishedRun", "SerializedRequest", "finish_run", "get_run", "list_runs", "new_run_id",
    "runs_for_replies", "start_run", "turn_runs",
]

R = cast(sa.Table, RunRow.__table__)
C = sql.C
_B = sa.bindparam

ENDPOINTS: Final = ("chat.completions", "completions")
MODES: Final = ("chat", "completion")
FINAL_STATUSES: Final = ("ok", "failed", "cancelled", "incomplete")

_last_ms = 0
_counter = 0
_lock = threading.Lock()


def new_run_id() -> str:
    """32 hex digits that sort by creation: 48-bit ms clock, a 16-bit counter, 64 random bits.

    The counter keeps runs created in the same millisecond by one process in
    order (a turn's tool rounds), which a random tail alone would not.
    """
    global _last_ms, _counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            ms = _last_ms
            _counter += 1
            if _counter > 0xFFFF:  # 65,536 runs in one ms: borrow the next ms
                ms, _counter = ms + 1, 0
        else:
            _counter = 0
        _last_ms = ms
        return f"{ms:012x}{_counter:04x}{os.urandom(8).hex()}"


class FinishedRun(BaseModel):
    """What :meth:`~convo.Store.finish_run` wrote.

    ``reply`` is the stored reply (when one was given); ``duplicate`` is True
    when a reply with the same idempotency key was already stored (a
    concurrent send of the same turn won): ``reply`` is that stored message
    then, and the run is recorded as ``cancelled``.
    """

    model_config = ConfigDict(frozen=True)

    run: Run
    reply: StoredMessage | None = None
    duplicate: bool = False


_RUN_COLUMNS = tuple(c.name for c in R.c)
#: JSON columns: on SQLite the plans bind them as the JSON text they write themselves
#: (``to_json`` of checked values, or :class:`CheckedJSON` text as it is), instead of
#: SQLAlchemy's ``json.dumps`` of the value; PostgreSQL binds the values (JSONB).
_JSON_COLUMNS = frozenset(c.name for c in R.c if isinstance(c.type, sa.JSON))
#: JSON values the run plans check in full themselves (check_values needs not walk them again)
#: and values start_run checked as it took them (check_text / check_short, one of a
#: few constants, _int) or made itself (the id, the clock): check_values takes the rest
#: (base_url, the request text, the run links) and any column added later
_CHECKED_START = frozenset({
    "settings", "kept_seqs", "metadata", "id", "conversation_id", "endpoint", "mode",
    "model", "idempotency_key", "summary_id", "input_seq", "round",
    "estimated_prompt_tokens", "status", "attempts", "created_at",
})
#: (an outcome's numbers pass _int / _ms in _outcome, its status the FINAL_STATUSES
#: test, finished_at is the store's clock; its texts go through check_values)
_CHECKED_OUTCOME = frozenset({
    "usage", "response", "reported_prompt_tokens", "completion_tokens", "attempts", "seed",
    "ttfb_ms", "latency_ms", "reply_message_id", "status", "finished_at",
})
_STATUS = _RUN_COLUMNS.index("status")
_CONVERSATION = _RUN_COLUMNS.index("conversation_id")
#: the largest value of each integer column: PostgreSQL's INTEGER holds 32 bits, BIGINT 64
#: (SQLite stores either; both databases refuse alike, before anything is written)
_INT_MAX = {c.name: INT_MAX if isinstance(c.type, sa.BigInteger) else INT32_MAX
            for c in R.c if isinstance(c.type, sa.Integer)}
_NOT_NULL = frozenset(c.name for c in R.c if not c.nullable)
#: the length of each short text column an outcome writes (finish_reason's is 64)
_TEXT_MAX = {c: cast(sa.String, R.c[c].type).length
             for c in ("error_type", "finish_reason", "system_fingerprint")}
#: the bind names of the columns (``r_``: start_run's INSERT, ``v_``: finish_run's
#: UPDATE), made once: interned, they are the very keys the generated binders look up
_BIND_NAMES = {
    prefix: {c: sys.intern(prefix + c) for c in _RUN_COLUMNS} for prefix in ("r_", "v_")
}


def run_from_row(row: Any) -> Run:
    values = dict(zip(_RUN_COLUMNS, row, strict=True))
    bad = _run_problem(values)
    if bad is not None:  # (a row changed outside convo: StoredDataError, the value not told)
        column, problem = bad
        raise damaged("runs", column, values[column], problem,
                      conversation_id=values["conversation_id"], row_id=values["id"])
    values["settings"] = values["settings"] or {}
    values["metadata"] = values["metadata"] or {}
    values["kept_seqs"] = values["kept_seqs"] or []
    values["stream"] = bool(values["stream"])
    return construct(Run, values)


def _run_problem(values: Mapping[str, Any]) -> tuple[str, str] | None:
    """The first column of a run row that holds what no run can (JSON of another
    shape than convo writes, an unknown status), and what is wrong; None if none."""
    for column in ("settings", "metadata", "usage", "response"):
        value = values[column]
        if value is not None and type(value) is not dict:
            return column, "not a JSON object"
    kept = values["kept_seqs"]
    if kept is not None and (
        type(kept) is not list or any(type(seq) is not int for seq in kept)
    ):
        return "kept_seqs", "not a list of seqs"
    if values["status"] not in _STATUSES:
        return "status", "not a run status"
    return None


_STATUSES = frozenset(("pending", *FINAL_STATUSES))
assert not Run.__private_attributes__ and not Run.__pydantic_post_init__
assert tuple(Run.model_fields) == _RUN_COLUMNS, set(_RUN_COLUMNS) ^ set(Run.model_fields)
assert not FinishedRun.__private_attributes__ and not FinishedRun.__pydantic_post_init__


def _int(
    value: Any, what: str, *, minimum: int, maximum: int = INT_MAX, optional: bool
) -> int | None:
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
        # a number is shown, anything else by its type only (a misplaced secret stays out)
        shown = repr(value) if value is None or isinstance(value, (int, float)) else (
            f"a {type(value).__name__}")
        raise StoreInputError(f"{what} must be an integer in {minimum}..{maximum}, got {shown}")
    return value


def _column_int(value: Any, column: str, minimum: int = 0) -> int | None:
    """``value`` for the integer ``column``: within its range, None only where it may be."""
    if type(value) is int and minimum <= value <= _INT_MAX[column]:
        return value  # (the common answer of _int, without the call)
    return _int(value, column, minimum=minimum, maximum=_INT_MAX[column],
                optional=column not in _NOT_NULL)


def _ms(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value < 0
    ):
        raise StoreInputError(f"{what} must be a finite number of milliseconds >= 0")
    return float(value)


def _json_object(value: Mapping[str, Any] | None, what: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, dict):
        try:
            # Plain JSON (the common case) comes back as the same plain copy the
            # round trip below would make, without serializing it.
            checked: dict[str, Any] = check_json(value, what)
            return checked
        except StoreInputError:
            pass  # e.g. tuples or int keys, which the round trip turns into JSON
    try:
        # Round trip through strict JSON: NaN/Infinity and non-JSON values are refused.
        out: dict[str, Any] = json.loads(json.dumps(dict(value), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise StoreInputError(f"{what} must be a JSON object: {exc}") from None
    checked = check_json(out, what)  # what JSON allows but the store does not (NUL...)
    return checked


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def request_text(request: str | bytes | Mapping[str, Any]) -> str:
    """The body as JSON text: given text is kept byte for byte (it is what was sent)."""
    if type(request) is SerializedRequest:
        text = str.__str__(request)
        if not contains(text, "NaN") and not contains(text, "Infinity"):
            return text
        request = text
    if isinstance(request, Mapping):
        try:
            request = pydantic_core.to_json(dict(request)).decode()
        except pydantic_core.PydanticSerializationError as exc:
            raise StoreInputError(f"run request is not JSON-serializable: {exc}") from None
    if isinstance(request, bytes):
        try:
            request = request.decode()
        except UnicodeDecodeError:
            raise StoreInputError("run request is not UTF-8 JSON text") from None
    if not isinstance(request, str):
        raise StoreInputError("run request must be JSON text, bytes or a mapping")
    try:
        parsed = json.loads(request, parse_constant=_no_constant)
    except ValueError:
        raise StoreInputError("run request is not valid JSON text") from None
    if not isinstance(parsed, dict):
        raise StoreInputError("run request must be a JSON object")
    return request


@functools.cache
def _bind_types(json_text: bool) -> dict[str, Any]:
    """The bind type of each runs column: its own, or text for JSON written as text."""
    return {c.name: sa.Text() if json_text and c.name in _JSON_COLUMNS else c.type for c in R.c}


def _json_binds(params: dict[str, Any], prefix: str, values: Mapping[str, Any],
                texts: Mapping[str, str]) -> None:
    """On SQLite: the JSON columns among ``params`` as their JSON text (``texts`` holds the
    text of :class:`CheckedJSON` values; the others are checked values)."""
    names = _BIND_NAMES[prefix]
    for column in _JSON_COLUMNS:
        key = names[column]
        if params.get(key) is not None:
            params[key] = texts[column] if column in texts else json_text(values[column])


@functools.lru_cache(maxsize=64)
def _insert_run(scoped: bool, columns: tuple[str, ...]) -> sa.Insert:
    """PostgreSQL: ``INSERT INTO runs (columns..., owner) SELECT :values..., owner FROM
    conversations WHERE id = :cid RETURNING owner``: the run takes its conversation's
    owner, and the conversation's existence (and owner scope) is checked by the same
    statement (no row: not found), in one round trip. Only the columns that have a
    value are listed. (SQLite: :func:`_run_owner`, then :func:`_insert_run_values`.)"""
    types = _bind_types(False)
    select = sa.select(*(_B(f"r_{c}", type_=types[c]) for c in columns), C.c.owner).where(
        C.c.id == _B("cid")
    )
    if scoped:
        select = select.where(C.c.owner == _B("b_owner"))
    return sa.insert(R).from_select([*columns, "owner"], select).returning(R.c.owner)


@functools.cache
def _run_owner(scoped: bool) -> sa.Select[Any]:
    """SQLite: the conversation's owner (no row: not found), read before the run's
    INSERT in the same ``BEGIN IMMEDIATE`` transaction, which no other writer can
    enter until it ends."""
    select = sa.select(C.c.owner).where(C.c.id == _B("cid"))
    return select.where(C.c.owner == _B("b_owner")) if scoped else select


@functools.lru_cache(maxsize=64)
def _insert_run_values(columns: tuple[str, ...]) -> sa.Insert:
    """SQLite: ``INSERT INTO runs (columns..., owner) VALUES (...)``, the owner read by
    :func:`_run_owner` just before. SQLite runs ``INSERT ... SELECT ... RETURNING``
    (:func:`_insert_run`) at about 1.5 times the cost of the two statements (its
    RETURNING clause alone is a third of it)."""
    types = _bind_types(True)
    return sa.insert(R).values(
        {c: _B(f"r_{c}", type_=types[c]) for c in columns} | {"owner": _B("r_owner")}
    )


def start_run(
    conversation_id: str,
    *,
    endpoint: str,
    mode: str,
    model: str,
    request: str | bytes | Mapping[str, Any],
    base_url: str | None,
    stream: bool,
    settings: Mapping[str, Any] | CheckedJSON | None,
    kept_seqs: Sequence[int],
    summary_id: int | None,
    input_seq: int | None,
    idempotency_key: str | None,
    round: int,
    estimated_prompt_tokens: int | None,
    reproduces_id: str | None,
    replays_id: str | None,
    metadata: Mapping[str, Any] | None,
    owner: str | None,
    token_counts: tuple[str, TokenCounts] | None,
    dialect: str,
) -> Plan[Run]:
    check_text(conversation_id, "conversation_id")
    check_short(owner, "owner")
    if endpoint not in ENDPOINTS:
        raise StoreInputError(f"run endpoint must be one of {ENDPOINTS}, got {endpoint!r}")
    if mode not in MODES:
        raise StoreInputError(f"run mode must be one of {MODES}, got {mode!r}")
    if not isinstance(model, str) or not model:
        raise StoreInputError("run model must be a non-empty string")
    check_short(model, "run model")
    check_short(idempotency_key, "run idempotency_key")
    for link, what in ((reproduces_id, "reproduces_id"), (replays_id, "replays_id")):
        if link is not None and (not isinstance(link, str) or len(link) > 32):
            raise StoreInputError(f"{what} must be a run id")
    if base_url is not None and not isinstance(base_url, str):
        raise StoreInputError(f"run base_url must be a string, not {type(base_url).__name__}")
    seqs = _kept_seqs(kept_seqs)
    texts: dict[str, str] = {}  # JSON text already written (CheckedJSON)
    if isinstance(settings, CheckedJSON):
        settings_value = settings.value() or None
        texts["settings"] = settings.text
    else:
        settings_value = _json_object(settings, "run settings") or None
    rows: list[dict[str, Any]] | None = None
    if token_counts is not None:
        if not isinstance(token_counts, tuple) or len(token_counts) != 2:
            raise StoreInputError("token_counts must be (encoding, {message id: tokens})")
        # checked before anything is read or written; counts given by message id
        # alone (not a build's) have their conversations looked up below
        rows, bare = token_rows(*token_counts)
        if bare:
            rows = None
    # (in the column order: the dict becomes the Run's own, see below)
    values: dict[str, Any] = {
        "id": new_run_id(),
        "conversation_id": conversation_id,
        "owner": None,  # the conversation's, from the INSERT's SELECT
        "endpoint": endpoint,
        "mode": mode,
        "model": model,
        "base_url": base_url,
        "stream": bool(stream),
        "request": request_text(request),
        "settings": settings_value,
        "kept_seqs": seqs,
        "summary_id": _column_int(summary_id, "summary_id", minimum=1),
        "input_seq": _column_int(input_seq, "input_seq"),
        "idempotency_key": idempotency_key,
        "round": _column_int(round, "round"),
        "estimated_prompt_tokens": _column_int(estimated_prompt_tokens, "estimated_prompt_tokens"),
        "reported_prompt_tokens": None,
        "completion_tokens": None,
        "usage": None,
        "reply_message_id": None,
        "status": "pending",
        "error_type": None,
        "error_message": None,
        "attempts": 0,
        "ttfb_ms": None,
        "latency_ms": None,
        "finish_reason": None,
        "system_fingerprint": None,
        "seed": None,
        "response": None,
        "reproduces_id": reproduces_id,
        "replays_id": replays_id,
        "metadata": validate_json_dict(metadata, "run metadata"),
        "created_at": now(),
        "finished_at": None,
    }
    columns = tuple([k for k, v in values.items() if v is not None])  # (a list: no generator)
    # (settings and metadata passed check_json above, kept_seqs the int check, the
    # other _CHECKED_START columns their own; a None is never refused)
    check_values({k: values[k] for k in columns if k not in _CHECKED_START}, "run")
    names = _BIND_NAMES["r_"]
    params = {names[k]: values[k] for k in columns}
    json_text = dialect == "sqlite"
    scope = {"cid": conversation_id}
    if owner is not None:
        scope["b_owner"] = owner
    counts = rows
    if token_counts is not None and rows is None:
        counts = yield from token_rows_plan(*token_counts)
    if json_text:
        # SQLite: the owner, then the INSERT (see _insert_run_values), the JSON bound as text
        _json_binds(params, "r_", values, texts)
        row = yield Op(_run_owner(owner is not None), scope, "first", driver=True)
        if row is None:
            raise ConversationNotFound(conversation_id, owner=owner)
        params["r_owner"] = row[0]
        yield Op(_insert_run_values(columns), params, "none", driver=True)
    else:
        row = yield Op(
            _insert_run(owner is not None, columns), params | scope, "first", driver=True
        )
        if row is None:
            raise ConversationNotFound(conversation_id, owner=owner)
    if counts:
        # the build's new token counts, in this transaction rather than one of their own
        try:
            yield Op(sql.insert_token_counts(dialect), counts, "none", driver=True)
        except sa.exc.IntegrityError:  # (the store rolls the run back)
            raise MessageNotFound(
                "token counts given for a message id its conversation does not hold"
            ) from None
    values["owner"] = row[0]
    values["settings"] = values["settings"] or {}
    values["metadata"] = values["metadata"] or {}
    return construct(Run, values)  # (what run_from_row makes of the row just written)


def _kept_seqs(kept_seqs: Sequence[int]) -> list[int]:
    """The kept seqs, each an int >= 1 within 64 bits (exact ints checked in bulk)."""
    try:
        seqs = list(kept_seqs)
    except TypeError:
        raise StoreInputError(
            f"run kept_seqs must be a sequence of seqs, not {type(kept_seqs).__name__}"
        ) from None
    if not seqs or (set(map(type, seqs)) == {int} and min(seqs) >= 1 and max(seqs) < 2**63):
        return seqs
    return [cast(int, _int(s, "kept seq", minimum=1, optional=False)) for s in seqs]


@functools.cache
def _select_run_stmt(scoped: bool) -> sa.Select[Any]:
    stmt = sa.select(R).where(R.c.id == _B("run_id"))
    return stmt.where(R.c.owner == _B("b_owner")) if scoped else stmt


def _select_run(run_id: str, owner: str | None) -> Plan[Any]:
    check_text(run_id, "run id")
    params = {"run_id": run_id}
    if owner is not None:
        params["b_owner"] = owner
    row = yield Op(_select_run_stmt(owner is not None), params, "first", driver=True)
    if row is None:
        scope = f" for owner {owner!r}" if owner is not None else ""
        raise RunNotFound(f"run {run_id!r} not found{scope}")
    return row


def get_run(run_id: str, *, owner: str | None) -> Plan[Run]:
    check_short(owner, "owner")
    row = yield from _select_run(run_id, owner)
    return run_from_row(row)


def list_runs(
    conversation_id: str, *, owner: str | None, limit: int, cursor: str | None
) -> Plan[RunPage]:
    _int(limit, "limit", minimum=1, optional=False)
    yield from get_conversation(conversation_id, owner=owner)
    stmt = sa.select(R).where(R.c.conversation_id == conversation_id)
    items, next_cursor = yield from newest_first(
        stmt, R.c.created_at, R.c.id, cursor, limit, run_from_row, "created_at"
    )
    return RunPage(items=items, next_cursor=next_cursor)


def turn_runs(conversation_id: str, idempotency_key: str, *, owner: str | None) -> Plan[list[Run]]:
    """The runs of one turn (its idempotency key), oldest first."""
    check_short(idempotency_key, "idempotency_key")
    yield from get_conversation(conversation_id, owner=owner)
    rows = yield Op(
        sa.select(R)
        .where(R.c.conversation_id == conversation_id, R.c.idempotency_key == idempotency_key)
        .order_by(R.c.created_at, R.c.id)
    )
    return [run_from_row(r) for r in rows]


def runs_for_replies(
    conversation_id: str, message_ids: Sequence[int], *, owner: str | None
) -> Plan[dict[int, Run]]:
    """The run that produced each of these reply messages (those that have one), among
    the runs of the conversation and of the conversations it was forked from (whose
    replies it shares); ids that are no message ids have none."""
    if isinstance(message_ids, (str, bytes)) or not isinstance(message_ids, Iterable):
        raise StoreInputError("message_ids must be a sequence of message ids")
    check_text(conversation_id, "conversation_id")
    check_short(owner, "owner")
    lineage = yield from _lineage(conversation_id, owner)
    ids = [i for i in message_ids
           if isinstance(i, int) and not isinstance(i, bool) and 1 <= i <= INT_MAX]
    if not ids:
        return {}
    rows = yield Op(sa.select(R).where(
        R.c.reply_message_id.in_(ids), R.c.status == "ok",
        R.c.conversation_id.in_([cid for cid, _lo, _hi in lineage.segments]),
    ))
    return {row.reply_message_id: run_from_row(row) for row in rows}


@functools.cache
def _claim_reply_seq(scoped: bool, known: bool) -> sa.Update:
    """The reply's seq, taken from the conversation of a *pending* run: the counter
    update is the conversation's write lock, as in an append (no row: the run is
    missing, finished, or not this owner's). ``known``: the run's conversation is
    given (``run_cid``), so both tables are read by it (one shard when sharded)."""
    run = sa.select(R.c.conversation_id).where(R.c.id == _B("run_id"), R.c.status == "pending")
    if scoped:
        run = run.where(R.c.owner == _B("b_owner"))
    if known:
        run = run.where(R.c.conversation_id == _B("run_cid"))
        where: Any = (C.c.id == _B("run_cid")) & run.exists()
    else:
        where = C.c.id == run.scalar_subquery()
    return (
        sa.update(C)
        .where(where)
        .values(last_seq=C.c.last_seq + 1, updated_at=_B("now"))
        .returning(C.c.id, C.c.last_seq)
    )


@functools.lru_cache(maxsize=64)
def _update_run(
    columns: tuple[str, ...], scoped: bool, known: bool, json_text: bool
) -> sa.Update:
    """Record an outcome, only on a pending run (the guard against a second finish).

    Returns the columns it does not write (what it writes is known and needs no
    decoding); nothing when the caller knows the started run (``known``), whose
    conversation (``run_cid``) then narrows the update to its key.
    """
    stmt = sa.update(R).where(R.c.id == _B("run_id"), R.c.status == "pending")
    if known:
        stmt = stmt.where(R.c.conversation_id == _B("run_cid"))
    if scoped:
        stmt = stmt.where(R.c.owner == _B("b_owner"))
    types = _bind_types(json_text)
    stmt = stmt.values({R.c[c]: _B(f"v_{c}", type_=types[c]) for c in columns})
    return stmt if known else stmt.returning(*(c for c in R.c if c.name not in columns))


def finish_run(
    run_id: str,
    *,
    status: str,
    reply: Message | Mapping[str, Any] | None,
    reply_info: ReplyInfo | None,
    reply_key: str | None,
    outcome: Mapping[str, Any],
    owner: str | None,
    started: Run | None,
    dialect: str,
) -> Plan[FinishedRun]:
    """Record a run's outcome; with ``reply``, append it in the same transaction.

    No read first: the statements themselves only touch a pending run (of this
    owner); when one finds none, the transaction is rolled back and the run is
    read to say why. ``started``: the run as :func:`start_run` returned it; the
    finished run is then that and the outcome (a pending run changes only here),
    and nothing is read back.
    """
    check_text(run_id, "run id")
    if started is not None and (not isinstance(started, Run) or started.id != run_id):
        raise StoreInputError("started must be the Run that start_run returned for this run")
    check_short(owner, "owner")
    if status not in FINAL_STATUSES:
        raise StoreInputError(f"a finished run's status must be one of {FINAL_STATUSES}")
    msg = params = None
    checked: dict[str, CheckedJSON] = {}
    if reply is not None:
        if not isinstance(reply, (Message, Mapping)):
            raise StoreInputError(f"a run's reply must be a message, not {type(reply).__name__}")
        if reply_info is not None and not isinstance(reply_info, ReplyInfo):
            raise StoreInputError(f"reply_info must be a ReplyInfo, not {type(reply_info).__name__}")
        msg = parse_message(reply if isinstance(reply, Message) else dict(reply))
        params = message_params(msg, pinned=None, idempotency_key=reply_key, reply=reply_info)
        if (
            reply_info is not None
            and reply_info.usage is not None
            and outcome.get("usage") is reply_info.usage
        ):
            # the run's usage is the reply's (a turn passes the same object): checked
            # once, by message_params; the run gets a copy of its own from the text
            checked["usage"] = CheckedJSON(json_text(params["usage"]))
    values, texts = _outcome(outcome, checked)
    values.update(status=status, finished_at=now())
    # (usage and response passed check_json in _outcome, the numbers its range checks)
    check_values({k: v for k, v in values.items() if k not in _CHECKED_OUTCOME}, "run")
    scope: dict[str, Any] = {"run_id": run_id}
    if started is not None:
        scope["run_cid"] = started.conversation_id
    if owner is not None:
        scope["b_owner"] = owner
    stored: StoredMessage | None = None
    duplicate = False
    if msg is not None and params is not None:
        stamp = now()
        claimed = yield Op(
            _claim_reply_seq(owner is not None, started is not None), {**scope, "now": stamp},
            "first", driver=True,
        )
        if claimed is None:
            yield ROLLBACK
            yield from _unfinishable(run_id, owner, started)
        cid, seq = claimed
        existing = None
        if reply_key is not None:
            existing = yield Op(sql.BY_KEY, {"cid": cid, "key": reply_key}, "first", driver=True)
        if existing is not None:
            # A concurrent send of the same turn stored its reply first: keep
            # that one, and say so on this run.
            yield ROLLBACK
            stored, duplicate = message_from_row(existing), True
            values.update(
                status="cancelled",
                error_type="DuplicateTurn",
                error_message=(
                    f"a reply with idempotency key {reply_key!r} was already stored "
                    f"(message {existing[0]}); this reply was not stored"
                ),
                reply_message_id=stored.id,
            )
        else:
            params.update(conversation_id=cid, seq=seq, created_at=stamp)
            message_id = yield insert_message(params, dialect)
            stored = stored_message(msg, params, id=message_id, conversation_id=cid,
                                    seq=seq, created_at=stamp)
            values["reply_message_id"] = message_id
    columns = tuple(sorted(values))
    names = _BIND_NAMES["v_"]
    scope.update({names[c]: values[c] for c in columns})
    as_text = dialect == "sqlite"
    if as_text:
        _json_binds(scope, "v_", values, texts)
    known = started is not None
    updated = yield Op(
        _update_run(columns, owner is not None, known, as_text), scope,
        "rowcount" if known else "first", driver=True,
    )
    if not updated:  # no row (None), or none updated (0)
        yield ROLLBACK
        yield from _unfinishable(run_id, owner, started)
    if started is not None:
        row = dict(started.__dict__)  # a Run's fields, in order
        row.update(values)
        run = construct(Run, row)
    else:
        row = dict(zip((c for c in _RUN_COLUMNS if c not in values), updated, strict=True))
        row.update(values)
        run = run_from_row(tuple(row[c] for c in _RUN_COLUMNS))
    return construct(FinishedRun, {"run": run, "reply": stored, "duplicate": duplicate})


def _unfinishable(run_id: str, owner: str | None, started: Run | None) -> Plan[NoReturn]:
    """Why a run could not be finished (read after the rollback): it does not exist
    (for this owner), it is finished already, or ``started`` names another
    conversation than the run's (the statements are narrowed to it: a retry
    would fail the same way)."""
    row = yield from _select_run(run_id, owner)
    status = row[_STATUS]
    if status not in _STATUSES:  # (a row changed outside convo: its status is not told)
        raise damaged("runs", "status", status, "not a run status",
                      conversation_id=row[_CONVERSATION], row_id=run_id)
    if status != "pending":
        raise StoreInputError(f"run {run_id!r} is already finished ({status})")
    if started is not None and started.conversation_id != row[_CONVERSATION]:
        raise StoreInputError(
            f"started is not the Run that start_run returned for run {run_id!r}: its "
            f"conversation is {started.conversation_id!r}, the run's is {row[_CONVERSATION]!r}; "
            "pass the Run start_run returned (or started=None)"
        )
    # (a race between our statements; nothing was written)
    raise StoreInputError(f"run {run_id!r} could not be finished; try again")


_OUTCOME_INTS = (
    "reported_prompt_tokens", "completion_tokens", "attempts", "seed",
)
_OUTCOME_FIELDS = frozenset({
    *_OUTCOME_INTS, "usage", "error_type", "error_message", "ttfb_ms", "latency_ms",
    "finish_reason", "system_fingerprint", "response", "reply_message_id",
})


def _outcome(
    outcome: Mapping[str, Any], checked: Mapping[str, CheckedJSON]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The outcome's column values, checked; and the JSON text of those given as
    :class:`CheckedJSON` (``usage``, ``response``). ``checked``: fields whose value
    the caller checked already, as :class:`CheckedJSON` (used instead)."""
    unknown = outcome.keys() - _OUTCOME_FIELDS
    if unknown:
        raise StoreInputError(f"unknown run fields: {sorted(unknown)}")
    values: dict[str, Any] = {}
    texts: dict[str, str] = {}
    for key, value in outcome.items():
        if key in _OUTCOME_INTS:
            values[key] = _column_int(value, key, minimum=INT_MIN if key == "seed" else 0)
        elif key in ("ttfb_ms", "latency_ms"):
            values[key] = _ms(value, key)
        elif key in ("usage", "response"):
            if key in checked:
                value = checked[key]
            if isinstance(value, CheckedJSON):
                values[key], texts[key] = value.value(), value.text
            else:
                values[key] = _json_object(value, f"run {key}")
        elif key == "reply_message_id":
            values[key] = _column_int(value, key, minimum=1)
        else:
            if value is not None and not isinstance(value, str):
                raise StoreInputError(f"run {key} must be a string")
            if key in _TEXT_MAX and value:
                check_text(value, f"run {key}", max_len=_TEXT_MAX[key])
            values[key] = value
    return values, texts
