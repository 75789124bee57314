"""The pure core of a turn, shared by :class:`~convo.Chat` and :class:`~convo.AsyncChat`.

A turn is a small state machine; each step is persisted in its own short
transaction, so any step can be the last one before a crash::

    user message stored ─► run pending ─► request sent ─► reply stored + run ok
                                                     └──► run failed / cancelled / incomplete
    (tool calls: results stored, next round: run pending ─► ...)

:func:`plan_turn` is a generator that yields *effects* (a store call, a
context build, a request to send, a tool to run, an event for a streaming
caller) and receives their results. It never does I/O, so the sync and async
shells run the same logic and only differ in ``await``; no database
transaction is open while a request is in flight.

Idempotency: with a key, the user message is stored under the key, each
reply under ``key#r<round>`` and each tool result under
``key#t<round>:<call id>``. A send that finds them stored continues from
there (or returns the stored reply without calling the model), so a turn
yields one user message and one reply whatever happens. Two concurrent sends
of one key may both call the model; only the first reply is stored, and the
other caller gets it back with ``duplicate=True`` (its run says
``cancelled``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Generator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field

from .._client.params import CHAT_KEYS, COMPLETION_KEYS, check_params
from .._client.types import (
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    CompletionChoice,
    CompletionChunk,
)
from .._context.report import Context, ContextReport
from .._exceptions import (
    APIResponseValidationError,
    APIStreamError,
    ConfigurationError,
    InvalidMessageError,
    StoreInputError,
    TurnCancelled,
)
from .._messages import Message, ToolCall
from .._records import ReplyInfo, Run, StoredMessage, construct
from .._store.inputs import (
    INT32_MAX,
    SHORT_TEXT_MAX,
    CheckedJSON,
    bad_index,
    check_json,
    checked_json,
    checked_json_text,
)
from .._store.rows import FINISH_REASON_MAX
from .._store.runs import SerializedRequest
from .tools import Tool, ToolArgumentsError

if TYPE_CHECKING:
    from .._context.builder import _BuilderBase

__all__ = [
    "Build",
    "CallTool",
    "Emit",
    "Send",
    "Sent",
    "StoreCall",
    "TextDelta",
    "ToolCallDelta",
    "ToolResultEvent",
    "TurnCancelled",
    "TurnEvent",
    "TurnResult",
    "TurnSpec",
    "plan_turn",
]


# --- what a streaming caller sees --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A fragment of the reply's text (completion text in completion mode)."""

    text: str
    round: int = 0
    type: Literal["text"] = "text"


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A fragment of a tool call: its id and name arrive first, then argument pieces."""

    index: int
    id: str | None
    name: str | None
    arguments: str
    round: int = 0
    type: Literal["tool_call"] = "tool_call"


@dataclass(frozen=True, slots=True)
class ToolResultEvent:
    """A tool the turn ran for the model, and the stored result message."""

    message: StoredMessage
    round: int = 0
    type: Literal["tool_result"] = "tool_result"


TurnEvent: TypeAlias = TextDelta | ToolCallDelta | ToolResultEvent


class TurnResult(BaseModel):
    """What a turn stored and sent.

    ``reply`` is the final assistant message; ``messages`` everything the
    turn stored after the user message (tool calls, tool results, the
    reply); ``run`` the last request's record and ``runs`` all of the turn's
    requests in order; ``report`` the last context build's report.
    ``from_store``: an earlier send with the same idempotency key had
    finished the turn, so nothing was sent. ``duplicate``: a concurrent send
    with the same key stored its reply first; ``reply`` is that one.
    ``pending_tool_calls``: tool calls waiting for results from the caller
    (no registered tool for them, or the round limit was reached); append
    them with :meth:`~convo.Chat.continue_turn`.
    """

    model_config = ConfigDict(frozen=True)

    conversation_id: str = Field(description="the conversation (branch) the turn ran on")
    user: StoredMessage | None = None
    reply: StoredMessage
    messages: list[StoredMessage] = Field(default_factory=list)
    run: Run | None = None
    runs: list[Run] = Field(default_factory=list)
    report: ContextReport | None = None
    from_store: bool = False
    duplicate: bool = False
    pending_tool_calls: list[ToolCall] = Field(default_factory=list)

    @property
    def text(self) -> str:
        """The reply's text."""
        return self.reply.text


assert tuple(TurnResult.model_fields) == (
    "conversation_id", "user", "reply", "messages", "run", "runs", "report", "from_store",
    "duplicate", "pending_tool_calls",
)  # (every field given to construct() in _result)
assert not TurnResult.__private_attributes__ and not TurnResult.__pydantic_post_init__


# --- effects -----------------------------------------------------------------------------
# (plain slotted dataclasses, as the store's Op: a frozen one's __init__ costs three
# times as much, and a turn makes several; the shells only read them)


@dataclass(slots=True)
class StoreCall:
    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass(slots=True)
class Build:
    """-> (Context, token counts the build left to the turn, or None)."""

    conversation_id: str
    tools: list[dict[str, Any]] | None
    response_format: dict[str, Any] | None
    owner: str | None


@dataclass(slots=True)
class Send:
    endpoint: Literal["chat.completions", "completions"]
    body: str
    stream: bool
    round: int
    #: per-call client options (timeout, max_retries, extra_headers...): not in the body
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Sent:
    """What a shell reports back for a :class:`Send`."""

    response: ChatCompletion | Completion | None = None
    #: the body ``response`` was parsed from (not streamed): recorded as it came
    body: bytes | None = None
    error: BaseException | None = None
    cancelled: bool = False
    partial: dict[str, Any] | None = None
    attempts: int = 0
    ttfb_ms: float | None = None
    latency_ms: float | None = None


@dataclass(slots=True)
class CallTool:
    call: ToolCall
    tool: Tool | None


@dataclass(slots=True)
class Emit:
    event: TurnEvent


Effect: TypeAlias = StoreCall | Build | Send | CallTool | Emit


# --- the turn ----------------------------------------------------------------------------


@dataclass(slots=True)
class TurnSpec:
    conversation_id: str
    user: Message | None
    tool_results: Sequence[Message]
    key: str | None
    owner: str | None
    params: dict[str, Any]
    response_format: dict[str, Any] | None
    stream: bool
    tools: Mapping[str, Tool]
    tool_definitions: list[dict[str, Any]] | None
    max_tool_rounds: int
    builder: _BuilderBase
    base_url: str | None
    resolve_branch: bool = True
    replays_id: str | None = None
    metadata: dict[str, Any] | None = field(default=None)


def reply_key(key: str | None, round: int) -> str | None:
    return None if key is None else f"{key}#r{round}"


def tool_key(key: str | None, round: int, call_id: str) -> str | None:
    return None if key is None else f"{key}#t{round}:{call_id}"


def _round_of(message: StoredMessage, key: str) -> int | None:
    k = message.idempotency_key or ""
    if k.startswith(f"{key}#r"):
        try:
            return int(k[len(key) + 2:])
        except ValueError:
            return None
    return None


def plan_turn(spec: TurnSpec) -> Generator[Effect, Any, TurnResult]:
    # A bad parameter (unknown, or not JSON: NaN, a set...) fails before anything is stored.
    wire = params, extra = wire_params(spec)
    check_params(params, spec.builder.mode)  # the client's own type rules (seed=1.5...)
    for part in (params, extra):
        if part:  # (most turns pass none)
            check_json(part, "request parameters")
    if spec.response_format is not None:  # (the build checks it too: after the append)
        if not isinstance(spec.response_format, dict):
            raise ConfigurationError(
                f"response_format must be a dict, not {type(spec.response_format).__name__}"
            )
        check_json(spec.response_format, "response_format")
    owner = spec.owner
    cid = spec.conversation_id
    user: StoredMessage | None = None
    if spec.user is not None and spec.resolve_branch:
        # The thread's current branch, and the user message stored there (or the
        # one an earlier send of this turn stored, inherited ones included: a
        # retry after a regenerate), in one transaction.
        cid, user = yield StoreCall(
            "_append_current", (cid, spec.user), {"idempotency_key": spec.key, "owner": owner}
        )
    elif spec.resolve_branch:
        conversation = yield StoreCall("get_conversation", (cid,), {"owner": owner})
        cid = conversation.current_branch_id or cid

    for result in spec.tool_results:
        if result.role != "tool" or not result.tool_call_id:
            raise InvalidMessageError("tool_results must be tool messages with a tool_call_id")
    stored: list[StoredMessage] = []
    runs: list[Run] = []
    round = 0
    anchor = 0
    if spec.user is not None:
        if user is None:
            user = yield StoreCall(
                "append", (cid, spec.user), {"idempotency_key": spec.key, "owner": owner}
            )
        anchor = user.seq
    elif spec.tool_results:
        # A continuation: the results answer a reply of this turn; the next
        # request is the round after it. (A retried continuation finds what it
        # stored after that reply, below.)
        calling_round, anchor = yield from _calling_reply(
            cid, owner, {r.tool_call_id for r in spec.tool_results}
        )
        round = calling_round + 1
    results_round = max(round - 1, 0)  # the round of the reply the caller's results answer

    if spec.key is not None and (spec.user is not None or spec.tool_results):
        # Resume: what did earlier sends of this turn store?
        later: list[StoredMessage] = yield StoreCall(
            "messages", (cid,), {"after": anchor, "owner": owner}
        )
        prefix = spec.key + "#"
        stored = [m for m in later if (m.idempotency_key or "").startswith(prefix)]
        # An answer without this turn's keys counts only on a branch made after the user
        # message was stored (a regenerate: the message is inherited). On the message's
        # own conversation such a reply is another turn's (turns interleaved on one
        # conversation: B's user message, A's, then B's reply).
        inherited = user is not None and user.conversation_id != cid
        answer = _answered_elsewhere(later, prefix) if inherited else None
        if not stored and answer is not None:
            # Answered on this branch without this turn's keys (a regenerate
            # made after the first send): that answer is the turn's reply.
            return _result(cid, user, [answer], [], None, answer, from_store=True)
        if stored:
            runs = yield StoreCall("turn_runs", (cid, spec.key), {"owner": owner})
            replies = [m for m in stored if m.role == "assistant"]
            last_reply = replies[-1] if replies else None
            if last_reply is not None:
                round = (_round_of(last_reply, spec.key) or 0) + 1
                done = yield from _after_reply(spec, cid, last_reply, round - 1, stored)
                if done is not None:
                    return _result(cid, user, stored, runs, None, done, from_store=True)

    for result in spec.tool_results:
        call_id = str(result.tool_call_id)  # checked above
        message = yield StoreCall(
            "append", (cid, result),
            {"idempotency_key": tool_key(spec.key, results_round, call_id), "owner": owner},
        )
        if all(m.id != message.id for m in stored):  # a retry gets the stored one back
            stored.append(message)

    report: ContextReport | None = None
    options = client_options(spec)
    while True:
        built: tuple[Context, Any] = yield Build(
            cid, spec.tool_definitions, spec.response_format, owner
        )
        ctx, token_counts = built
        report = ctx.report
        body = request_body(ctx, spec, wire)
        endpoint: Literal["chat.completions", "completions"] = (
            "chat.completions" if ctx.mode == "chat" else "completions"
        )
        kept = report.kept_seqs
        # to_json's text of convo's own dict: the store checks it only for what to_json
        # may write (NaN, Infinity), and the client sends it without parsing it again
        request = SerializedRequest(body)
        run: Run = yield StoreCall("start_run", (cid,), {
            "endpoint": endpoint,
            "mode": ctx.mode,
            "model": ctx.model,
            "request": request,
            "base_url": spec.base_url,
            "stream": spec.stream,
            "settings": checked_settings(spec.builder),
            "kept_seqs": kept,
            "summary_id": report.summary.id if report.summary else None,
            "input_seq": max(kept) if kept else None,
            "idempotency_key": spec.key,
            "round": round,
            "estimated_prompt_tokens": report.prompt_tokens,
            "replays_id": spec.replays_id,
            "metadata": spec.metadata,
            "owner": owner,
            # the build's new token counts: written with the run, not on their own
            "token_counts": token_counts,
        })
        sent: Sent = yield Send(endpoint, request, spec.stream, round, dict(options))
        timing = {"attempts": sent.attempts, "ttfb_ms": sent.ttfb_ms,
                  "latency_ms": sent.latency_ms}
        if sent.response is None:
            error = sent.error
            if sent.cancelled:
                status = "cancelled"
            elif isinstance(error, APIStreamError) and sent.partial is not None:
                status = "incomplete"  # the server stopped without finishing the reply
            else:
                status = "failed"
            failure = {
                "started": run,
                "status": status,
                "error_type": type(error).__name__ if error is not None else None,
                "error_message": str(error)[:4000] if error is not None else None,
                "response": sent.partial,
                "owner": owner,
                **timing,
            }
            try:
                finished = yield StoreCall("finish_run", (run.id,), failure)
            except StoreInputError:
                # the partial answer holds what no column can (a NUL, a lone
                # surrogate...): the run is recorded without it
                finished = yield StoreCall("finish_run", (run.id,), {**failure, "response": None})
            runs.append(finished.run)
            if sent.cancelled or error is None:
                raise TurnCancelled("the turn was cancelled")
            raise error
        response = sent.response
        reply_message = response.to_message()
        seed = spec.params.get("seed")
        info = _storable(response.reply_info(seed=seed if isinstance(seed, int) else None))
        usage = response.usage
        tokens = {
            "reported_prompt_tokens": _count(usage.prompt_tokens) if usage else None,
            "completion_tokens": _count(usage.completion_tokens) if usage else None,
        }
        try:
            finished = yield StoreCall("finish_run", (run.id,), {
                "started": run,
                "status": "ok",
                "reply": reply_message,
                "reply_info": info,
                "reply_key": reply_key(spec.key, round),
                **tokens,
                "usage": info.usage,
                "finish_reason": info.finish_reason,
                "system_fingerprint": info.system_fingerprint,
                "seed": info.seed,
                "response": _answer_json(sent, response),
                "owner": owner,
                **timing,
            })
        except StoreInputError as exc:
            # The server's reply holds what the store refuses (a NUL or a lone
            # surrogate in its text): nothing of it was written. The run says so,
            # with the tokens paid for, and the turn fails as for a malformed
            # answer; the user message stays, and a retry continues the turn.
            unstorable = APIResponseValidationError(f"the server's reply cannot be stored: {exc}")
            failed = yield StoreCall("finish_run", (run.id,), {
                "started": run,
                "status": "failed",
                "error_type": type(unstorable).__name__,
                "error_message": unstorable.message[:4000],
                **tokens,
                "owner": owner,
                **timing,
            })
            runs.append(failed.run)
            raise unstorable from None
        runs.append(finished.run)
        reply: StoredMessage = finished.reply
        stored.append(reply)
        if finished.duplicate:
            return _result(cid, user, stored, runs, report, reply, duplicate=True)
        done = yield from _after_reply(spec, cid, reply, round, stored)
        if done is not None:
            return _result(cid, user, stored, runs, report, done)
        round += 1


def _cut(text: str | None, limit: int) -> str | None:
    return text if text is None or len(text) <= limit else text[:limit]


def _storable(info: ReplyInfo) -> ReplyInfo:
    """The server's reply info cut to the columns that hold it (a local server may name
    its model by a long file path): the run's ``response`` keeps the answer whole, so a
    reply is never refused for its metadata after the model was paid for."""
    model = _cut(info.model, SHORT_TEXT_MAX)
    finish = _cut(info.finish_reason, FINISH_REASON_MAX)
    fingerprint = _cut(info.system_fingerprint, SHORT_TEXT_MAX)
    if (model, finish, fingerprint) == (info.model, info.finish_reason, info.system_fingerprint):
        return info
    return info.model_copy(
        update={"model": model, "finish_reason": finish, "system_fingerprint": fingerprint}
    )


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _storable_text(text: str) -> str:
    """A registered tool's result (or error) as the store can hold it: NUL characters
    and lone surrogates (a tool that returns raw bytes decoded loosely) become U+FFFD.
    Refusing it would fail the turn after the tool ran, and again on every retry."""
    return text if bad_index(text) < 0 else _UNSTORABLE.sub("\ufffd", text)


def _count(tokens: int) -> int | None:
    """A reported token count as the run's INTEGER column holds it: one out of its range
    (negative, or past 32 bits: a broken server) is unknown; ``usage`` keeps it."""
    return tokens if 0 <= tokens <= INT32_MAX else None


def _answer_json(sent: Sent, response: ChatCompletion | Completion) -> CheckedJSON | dict[str, Any]:
    """The answer for the run: the body as the server sent it, when it is storable as it
    is; else (a stream, or NaN, integers beyond 64 bits... in the body) the answer as
    its model dumps it (NaN becomes null), checked by the store as before."""
    if sent.body is not None:
        try:
            return checked_json_text(sent.body, "run response")
        except StoreInputError:
            pass
    return response.model_dump(mode="json", exclude_none=True)


def _after_reply(
    spec: TurnSpec,
    cid: str,
    reply: StoredMessage,
    round: int,
    stored: list[StoredMessage],
) -> Generator[Effect, Any, StoredMessage | None]:
    """Run the tools a reply calls; the reply itself when the turn is done (None: go on)."""
    calls = reply.tool_calls or []
    if not calls or not spec.tools or reply.role != "assistant":
        return reply
    if round >= spec.max_tool_rounds:
        return reply  # the caller sees pending_tool_calls
    answered = _answered(reply, stored)
    for call in calls:
        if call.id in answered:
            continue  # stored by an earlier send of this turn
        text = _storable_text((yield CallTool(call, spec.tools.get(call.function.name))))
        message = yield StoreCall(
            "append", (cid, Message.tool(text, tool_call_id=call.id)),
            {"idempotency_key": tool_key(spec.key, round, call.id), "owner": spec.owner},
        )
        stored.append(message)
        yield Emit(ToolResultEvent(message, round))
    return None


def _answered(reply: StoredMessage, stored: list[StoredMessage]) -> set[str | None]:
    """The call ids of ``reply`` answered by stored tool results.

    Only results stored after the reply count: servers that number call ids
    per reply (``call_0``...) repeat them from one round to the next.
    """
    return {m.tool_call_id for m in stored if m.role == "tool" and m.seq > reply.seq}


def _answered_elsewhere(later: list[StoredMessage], prefix: str) -> StoredMessage | None:
    """The final assistant reply that follows the user message, when none of the
    turn's own keys are there (else None)."""
    reply = None
    for message in later:
        if message.role == "user":
            break
        if (message.idempotency_key or "").startswith(prefix):
            return None
        if message.role == "assistant" and not message.tool_calls:
            reply = message
    return reply


def _calling_reply(
    cid: str, owner: str | None, call_ids: set[str | None]
) -> Generator[Effect, Any, tuple[int, int]]:
    """The round and seq of the newest reply (since the last user message) making these calls.

    Rounds count the assistant messages since the last user message; without
    a matching reply, the newest one stands for it.
    """
    recent: list[StoredMessage] = yield StoreCall(
        "messages", (cid,), {"limit": 200, "newest_first": True, "owner": owner}
    )
    replies: list[StoredMessage] = []
    for message in recent:
        if message.role == "user":
            break
        if message.role == "assistant":
            replies.append(message)
    replies.reverse()  # oldest first: index = round
    for round in range(len(replies) - 1, -1, -1):
        if call_ids & {c.id for c in replies[round].tool_calls or []}:
            return round, replies[round].seq
    return len(replies) - 1, replies[-1].seq if replies else 0


def _result(
    cid: str,
    user: StoredMessage | None,
    stored: list[StoredMessage],
    runs: list[Run],
    report: ContextReport | None,
    reply: StoredMessage,
    *,
    from_store: bool = False,
    duplicate: bool = False,
) -> TurnResult:
    calls = reply.tool_calls
    pending = []
    if calls:
        answered = _answered(reply, stored)
        pending = [c for c in calls if c.id not in answered]
    # (values the turn built from the store's and the client's own: no re-validation)
    return construct(TurnResult, {
        "conversation_id": cid,
        "user": user,
        "reply": reply,
        "messages": stored,
        "run": runs[-1] if runs else None,
        "runs": runs,
        "report": report,
        "from_store": from_store,
        "duplicate": duplicate,
        "pending_tool_calls": pending,
    })


def chunk_events(chunk: ChatCompletionChunk | CompletionChunk, round: int) -> list[TurnEvent]:
    """The caller's events in one streamed chunk (the first choice; turns ask for one)."""
    if not chunk.choices:
        return []
    choice = chunk.choices[0]
    if isinstance(choice, CompletionChoice):
        return [TextDelta(choice.text, round)] if choice.text else []
    events: list[TurnEvent] = []
    delta = choice.delta
    if delta.content:
        events.append(TextDelta(delta.content, round))
    for call in delta.tool_calls or ():
        fn = call.function
        events.append(ToolCallDelta(
            call.index, call.id, fn.name if fn else None, (fn.arguments or "") if fn else "", round
        ))
    return events


def partial_response(snapshot: Any) -> dict[str, Any] | None:
    """What a broken or stopped stream delivered, for the run record."""
    try:
        value: dict[str, Any] = snapshot().model_dump(mode="json", exclude_none=True)
    except Exception:  # noqa: BLE001 - nothing usable arrived
        return None
    return value


def run_tool_sync(effect: CallTool) -> tuple[str, Any]:
    """Validate a call's arguments: ``("ok", kwargs)`` or ``("error", message text)``."""
    if effect.tool is None:
        return "error", f"error: no tool named {effect.call.function.name!r}"
    try:
        return "ok", effect.tool.parse_arguments(effect.call.function.arguments)
    except ToolArgumentsError as exc:
        return "error", f"error: invalid arguments for {effect.tool.name}: {exc}"


def tool_error_text(name: str, exc: Exception) -> str:
    """What the model reads when a tool raised (it may retry or answer without it)."""
    return f"error: {name} raised {type(exc).__name__}: {exc}"


# --- the request body --------------------------------------------------------------------

_MAX_TOKEN_NAMES = ("max_tokens", "max_completion_tokens")
#: Per-call options of the client: they shape how a request is sent, not what
#: it says, so they go to the client and are not part of the body or the run.
CLIENT_OPTIONS = frozenset({
    "timeout", "max_retries", "extra_headers", "extra_query", "stream_idle_timeout",
    "stream_timeout", "max_response_bytes", "max_event_bytes",
})


def client_options(spec: TurnSpec) -> dict[str, Any]:
    """The per-call client options among the turn's parameters."""
    params = spec.params
    if not params:  # (most turns pass none)
        return {}
    return {k: v for k, v in params.items() if k in CLIENT_OPTIONS and v is not None}


def wire_params(spec: TurnSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """The turn's parameters under their wire names, and ``extra_body``.

    Raises:
        ConfigurationError: an unknown parameter, or one the turn sets itself.
            :func:`plan_turn` checks this before it stores anything.
    """
    mode = spec.builder.mode
    allowed = CHAT_KEYS if mode == "chat" else COMPLETION_KEYS
    params: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in spec.params.items():
        if value is None or key in CLIENT_OPTIONS:
            continue
        if key in _MAX_TOKEN_NAMES:
            # One name for callers; the wire name the server takes.
            params[spec.builder.profile.max_tokens_param if mode == "chat" else "max_tokens"] = (
                value
            )
        elif key == "extra_body":
            extra.update(value)
        elif key in ("stream", "messages", "prompt", "model"):
            raise ConfigurationError(f"{key!r} is set by the turn, not a parameter")
        elif key not in allowed:
            raise ConfigurationError(
                f"unknown {mode} parameter {key!r} (pass server extras in extra_body=)"
            )
        else:
            params[key] = value
    return params, extra


def request_body(
    ctx: Context, spec: TurnSpec, wire: tuple[dict[str, Any], dict[str, Any]] | None = None
) -> str:
    """The exact JSON text sent (and stored in the run). ``wire``: what
    :func:`wire_params` gave for ``spec`` (computed once a turn)."""
    profile = spec.builder.profile
    body = ctx.request()  # in completion mode without tools: the template renders them
    params, extra = wire if wire is not None else wire_params(spec)
    body.update(params)
    if spec.response_format is not None and ctx.mode == "chat":
        body["response_format"] = spec.response_format
    if spec.stream:
        body["stream"] = True
        if profile.supports_stream_usage and "stream_options" not in body:
            body["stream_options"] = {"include_usage": True}
    body.update(extra)
    try:
        return pydantic_core.to_json(body).decode()
    except pydantic_core.PydanticSerializationError as exc:
        raise InvalidMessageError(f"the request body is not JSON-serializable: {exc}") from None


def builder_settings(builder: _BuilderBase) -> dict[str, Any]:
    """What a run records of the builder: enough to rebuild the same context.

    Kept on the builder for as long as the settings it is made of stay the same;
    the caller must not change it (``start_run`` stores a copy).
    """
    key = (
        builder.model, builder.mode, builder._counter.encoding_name, builder.budget,
        builder.reply_reserve, id(builder._template), builder.profile, builder.max_messages,
        builder.max_history_tokens, builder.truncate, builder.summary_max_tokens,
        builder.summary_role, builder.low_water,
    )
    cached = builder.__dict__.get("_settings_cache")
    if cached is None or cached[0] != key or cached[1] is not builder._template:
        settings = _builder_settings(builder)
        cached = (key, builder._template, settings, checked_json(settings, "run settings"))
        builder.__dict__["_settings_cache"] = cached
    value: dict[str, Any] = cached[2]
    return value


def checked_settings(builder: _BuilderBase) -> CheckedJSON:
    """:func:`builder_settings` checked and serialized once, for every run it goes into."""
    builder_settings(builder)
    checked: CheckedJSON = builder.__dict__["_settings_cache"][3]
    return checked


def _builder_settings(builder: _BuilderBase) -> dict[str, Any]:
    template = builder._template
    template_name = None
    template_hash = None
    if template is not None:
        template_name = getattr(template, "name", type(template).__name__)
        source = getattr(template, "source", None)
        if not isinstance(source, str):
            source = f"builtin:{template_name}"
        template_hash = hashlib.sha256(source.encode()).hexdigest()
    settings: dict[str, Any] = json.loads(json.dumps({
        "model": builder.model,
        "mode": builder.mode,
        "encoding": builder._counter.encoding_name,
        "budget": builder.budget,
        "reply_reserve": builder.reply_reserve,
        "template": template_name,
        "template_sha256": template_hash,
        "profile": asdict(builder.profile),
        "max_messages": builder.max_messages,
        "max_history_tokens": builder.max_history_tokens,
        "truncate": builder.truncate,
        "summary_max_tokens": builder.summary_max_tokens,
        "summary_role": builder.summary_role,
        "low_water": builder.low_water,
    }, default=str))
    return settings
