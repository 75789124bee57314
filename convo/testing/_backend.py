"""The fake OpenAI-compatible backend: script, record, route.

:class:`FakeBackend` holds a FIFO script of replies and failures and a record
of every request. ``_dispatch`` turns one HTTP request into an
:class:`~convo.testing._core.Outcome`; the httpx transport and the loopback
server only carry it out.

Consumption rule: each scripted item answers exactly one request to
``/chat/completions`` or ``/completions``, in order. Failures (``fail``,
``timeout``, ``malformed``) answer the next such request whatever it holds;
replies (``reply*``, ``cut_stream``) answer the next *valid* one: a request
OpenAI would reject gets its 400 and leaves the reply queued.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from .._exceptions import ConfigurationError
from .._messages import ToolCall
from ._core import (
    JSON_TYPE,
    Cut,
    Fail,
    Headers,
    Item,
    Malformed,
    Outcome,
    Stall,
    answer_chat,
    answer_completion,
    apply_cut,
    failure,
)
from ._errors import ErrorReply, error_body, invalid_url
from ._replies import Reply
from ._validation import ChatRequest, validate_chat, validate_completion
from ._wire import Meta, encode_json

if TYPE_CHECKING:
    import httpx

    from .._models import ModelRegistry
    from ._server import FakeServer

__all__ = ["FakeBackend", "FinishReason", "RecordedRequest", "ToolCallSpec"]

FinishReason: TypeAlias = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]
#: A tool call to script: ``(name, arguments)`` or a :class:`~convo.ToolCall`.
ToolCallSpec: TypeAlias = "ToolCall | tuple[str, Mapping[str, Any] | str]"

_SECRET_HEADERS = frozenset({"authorization", "api-key", "x-api-key", "proxy-authorization"})
_PARSE_ERROR = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
    "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not "
    "valid JSON. If you have trouble figuring out how to fix this, please contact us through our "
    "help center at help.openai.com.)"
)
_NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY). You can obtain an API key from "
    "https://platform.openai.com/account/api-keys."
)
_MODEL_CREATED = 1686935002  # the spec's example timestamp: stable listings
_ENDPOINTS = {
    "/chat/completions": ("POST", "chat"),
    "/completions": ("POST", "completions"),
    "/models": ("GET", "models"),
}


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request the fake received.

    Attributes:
        method: ``"POST"``, ``"GET"``...
        path: the URL path as sent (``"/v1/chat/completions"``), without the query.
        query: the query string (``"api-version=2024-06-01"``), or ``""``.
        headers: the request headers, names in lower case. Secrets stay here
            for assertions but never appear in the repr.
        body: the raw body.
        json: the decoded JSON body, or None when the body is not JSON.
    """

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes
    json: Any

    def __repr__(self) -> str:
        shown = {k: ("<redacted>" if k in _SECRET_HEADERS else v) for k, v in self.headers.items()}
        return (
            f"RecordedRequest(method={self.method!r}, path={self.path!r}, query={self.query!r}, "
            f"headers={shown!r}, json={self.json!r})"
        )


def _usage_arg(usage: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    return dict(usage) if usage is not None else None


def _tool_calls(calls: Iterable[ToolCallSpec]) -> tuple[tuple[str | None, str, str], ...]:
    out: list[tuple[str | None, str, str]] = []
    for call in calls:
        if isinstance(call, ToolCall):
            out.append((call.id, call.function.name, call.function.arguments))
            continue
        name, args = call
        out.append((None, name, args if isinstance(args, str) else json.dumps(args)))
    return tuple(out)


@dataclass
class _State:
    script: deque[Item] = field(default_factory=deque)
    requests: list[RecordedRequest] = field(default_factory=list)
    ids: dict[str, int] = field(default_factory=dict)


class FakeBackend:
    """A fake OpenAI-compatible backend, in process or on a loopback port.

    It speaks OpenAI's wire format (``POST /v1/chat/completions``,
    ``POST /v1/completions``, ``GET /v1/models``), validates requests the way
    OpenAI does, answers with deterministic default replies or scripted ones,
    streams, computes usage with convo's token counting, and fails on demand.
    Thread-safe. Example::

        fake = FakeBackend()
        fake.reply("Hi there!")
        fake.fail(429, headers={"retry-after": "0.05"})
        client = httpx.Client(transport=fake.transport(), base_url="http://fake/v1")
        client.post("/chat/completions", json={"model": "gpt-4o", "messages": [...]})
        assert fake.requests[0].json["model"] == "gpt-4o"

    Usage is counted with the tokenizer of the requested model, found as
    :class:`~convo.ContextBuilder` finds it, so ``usage.prompt_tokens`` equals the
    builder's ``report.prompt_tokens`` (chat: OpenAI's billing rules, tools
    included; completions: the prompt string as sent).

    Args:
        encoding: the tokenizer encoding for models neither the registry nor
            tiktoken knows (local models, made-up names in tests).
        registry: the model registry whose encodings count usage (default
            :data:`convo.models`); pass the one your builder uses for models
            you registered.
        models: the model ids ``GET /v1/models`` lists; None lists convo's
            registry. Requests may name any model.
        api_key: when set, requests must carry ``Authorization: Bearer <api_key>``
            (or ``api-key: <api_key>``); others get OpenAI's 401.
        strict: reject parameters OpenAI does not know, as OpenAI does; False
            accepts the extras local servers take (``top_k``, ...).
        created: a fixed ``created`` timestamp for every answer (None: the clock).
        system_fingerprint: the ``system_fingerprint`` of every answer. Answers
            are deterministic whatever the request's ``seed``.
    """

    def __init__(
        self,
        *,
        encoding: str = "o200k_base",
        models: Sequence[str] | None = None,
        api_key: str | None = None,
        strict: bool = True,
        created: int | None = None,
        system_fingerprint: str = "fp_convofake",
        registry: ModelRegistry | None = None,
    ) -> None:
        self.encoding = encoding
        self.registry = registry
        self.strict = strict
        self.created = created
        self.system_fingerprint = system_fingerprint
        self._models = tuple(models) if models is not None else None
        self._api_key = api_key
        self._lock = threading.Lock()
        self._state = _State()

    def __repr__(self) -> str:  # never shows the api_key
        return f"<FakeBackend pending={self.pending} requests={len(self._state.requests)}>"

    # --- scripting ---------------------------------------------------------------------------

    def reply(
        self,
        text: str,
        *,
        finish_reason: FinishReason = "stop",
        usage: Mapping[str, Any] | None = None,
    ) -> None:
        """Queue the next reply: the assistant message (or completion text) ``text``.

        Args:
            text: the content. Like a model's output, it is cut at the request's
                stop sequences and at its ``max_tokens`` (``finish_reason``
                then becomes ``"stop"`` / ``"length"``).
            finish_reason: the choice's ``finish_reason``.
            usage: the usage object to send (a missing ``total_tokens`` is the
                sum, missing counts are computed); None computes it all with
                convo's token counting.
        """
        self._push(Reply(content=text, finish_reason=finish_reason, usage=_usage_arg(usage)))

    def reply_tool_calls(
        self,
        calls: Iterable[ToolCallSpec],
        *,
        content: str | None = None,
        finish_reason: FinishReason = "tool_calls",
        usage: Mapping[str, Any] | None = None,
    ) -> None:
        """Queue an assistant message that calls tools (chat requests only).

        Args:
            calls: ``(name, arguments)`` pairs, arguments a dict (sent as
                ``json.dumps``) or a raw string (sent as is, even if not JSON);
                or :class:`~convo.ToolCall` values (their ids are kept). Other
                ids are generated: ``call_fake_1``, ``call_fake_2``...
            content: text sent along with the calls, if any.
            finish_reason: ``"tool_calls"`` unless told otherwise.
            usage: as for :meth:`reply`.
        """
        self._push(
            Reply(
                content=content,
                tool_calls=_tool_calls(calls),
                finish_reason=finish_reason,
                usage=_usage_arg(usage),
            )
        )

    def reply_json(
        self,
        obj: Any,
        *,
        finish_reason: FinishReason = "stop",
        usage: Mapping[str, Any] | None = None,
    ) -> None:
        """Queue a reply whose content is ``json.dumps(obj)``."""
        self.reply(json.dumps(obj), finish_reason=finish_reason, usage=usage)

    def reply_refusal(self, text: str, *, usage: Mapping[str, Any] | None = None) -> None:
        """Queue a refusal: ``content`` null and ``refusal`` set (chat requests only)."""
        self._push(Reply(refusal=text, usage=_usage_arg(usage)))

    def fail(
        self,
        status: int,
        *,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
        message: str | None = None,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        """Make the next request fail with HTTP ``status``.

        Args:
            status: 400, 401, 404, 429, 500, 503...
            headers: extra response headers (``{"retry-after": "0.05"}``,
                ``{"x-should-retry": "false"}``).
            body: None sends OpenAI's error object for the status (its fields
                overridable with ``message``, ``type``, ``code``, ``param``); a
                dict or list is sent as JSON; str or bytes are sent as is.

        Raises:
            ConfigurationError: ``status`` is not a 4xx or 5xx code.
        """
        if not 400 <= status <= 599:
            raise ConfigurationError(f"fail() takes a 4xx or 5xx status, not {status}")
        raw: bytes | None
        if body is None or isinstance(body, bytes):
            raw = body
        elif isinstance(body, str):
            raw = body.encode()
        else:
            raw = encode_json(body)
        self._push(Fail(status, tuple((headers or {}).items()), raw, message, type, code, param))

    def timeout(self, *, seconds: float = 30.0) -> None:
        """Make the next request time out.

        Through the transport it raises ``httpx.ReadTimeout`` at once; the
        server answers nothing for ``seconds`` (or until the client gives up
        or the server closes), then drops the connection.
        """
        self._push(Stall(seconds))

    def cut_stream(
        self, after_chunks: int = 2, *, text: str | None = None, abort: bool = True
    ) -> None:
        """Make the next reply stop midway: no finish reason, no ``data: [DONE]``.

        Args:
            after_chunks: SSE events sent before the cut (at most all events
                before the first finish reason). A request that is not streamed
                gets the first half of its JSON body instead.
            text: the reply being cut; None for the default reply.
            abort: True drops the connection (clients see an incomplete body:
                ``httpx.RemoteProtocolError``); False ends the body cleanly.

        Raises:
            ConfigurationError: ``after_chunks`` is negative.
        """
        if after_chunks < 0:
            raise ConfigurationError("cut_stream(after_chunks=...) must be >= 0")
        reply = Reply(content=text) if text is not None else None
        self._push(Cut(after_chunks, reply, abort))

    def malformed(
        self,
        body: bytes | str,
        *,
        status: int = 200,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Make the next request get ``body`` as is (not JSON, truncated, an HTML page...)."""
        raw = body.encode() if isinstance(body, str) else body
        self._push(
            Malformed(raw, status, (("content-type", content_type), *(headers or {}).items()))
        )

    def _push(self, item: Item) -> None:
        with self._lock:
            self._state.script.append(item)

    # --- inspection --------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first (a copy)."""
        with self._lock:
            return list(self._state.requests)

    @property
    def last_request(self) -> RecordedRequest:
        """The newest request; raises ``IndexError`` when there is none."""
        with self._lock:
            return self._state.requests[-1]

    @property
    def pending(self) -> int:
        """Scripted items not consumed yet."""
        with self._lock:
            return len(self._state.script)

    def reset(self) -> None:
        """Forget the script, the recorded requests and the id counters."""
        with self._lock:
            self._state = _State()

    # --- shells ------------------------------------------------------------------------------

    def transport(self) -> httpx.MockTransport:
        """An ``httpx.MockTransport`` for ``httpx.Client`` and ``httpx.AsyncClient``.

        Use a base URL such as ``"http://fake/v1"``; paths without the ``/v1``
        prefix are served too.
        """
        from ._transport import make_transport

        return make_transport(self)

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> FakeServer:
        """Start a real HTTP server (a background thread) serving this backend under ``/v1``.

        Use it as a context manager, or call ``close()``::

            with fake.serve() as server:
                client = openai.OpenAI(base_url=server.base_url, api_key="test")

        Args:
            host: the interface to bind.
            port: the port; 0 picks a free one.
        """
        from ._server import FakeServer

        return FakeServer(self, host=host, port=port)

    # --- the core ----------------------------------------------------------------------------

    def _next_id(self, kind: str) -> int:
        with self._lock:
            n = self._state.ids.get(kind, 0) + 1
            self._state.ids[kind] = n
            return n

    def _dispatch(
        self,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        bare_paths: bool = False,
        raise_errors: bool = True,
    ) -> Outcome:
        """Answer one request (header names in lower case).

        ``bare_paths`` also serves paths without ``/v1``. An error of the script
        or the setup (a tool-call reply for ``/completions``, a tokenizer that
        cannot load) is raised, or with ``raise_errors=False`` answered as a 500
        that names it.
        """
        try:
            data = json.loads(body) if body else None
            parsed = True
        except ValueError:
            data, parsed = None, False
        record = RecordedRequest(method, path, query, dict(headers), body, data)
        with self._lock:
            self._state.requests.append(record)
            number = len(self._state.requests)
        base: Headers = [
            ("x-request-id", f"req_fake_{number}"),
            ("openai-version", "2020-10-01"),
            ("openai-processing-ms", "0"),
        ]
        try:
            endpoint = _route(method, path, bare_paths)
            self._check_key(headers)
            if endpoint in ("models", "model"):
                return self._models_answer(path, endpoint, base)
            return self._generate(endpoint, data, parsed, base)
        except ErrorReply as err:
            return Outcome(err.status, [*base, JSON_TYPE, *err.headers], err.body())
        except Exception as exc:
            if raise_errors:
                raise
            message = f"convo.testing: {type(exc).__name__}: {exc}"
            return Outcome(500, [*base, JSON_TYPE], error_body(message, type="server_error"))

    def _check_key(self, headers: Mapping[str, str]) -> None:
        if self._api_key is None:
            return
        auth = headers.get("authorization")
        given = auth[7:] if auth and auth.lower().startswith("bearer ") else headers.get("api-key")
        if not given:
            raise ErrorReply(401, _NO_KEY)
        if given != self._api_key:
            shown = "*" * 8 + given[-4:] if len(given) >= 12 else "*" * 8
            raise ErrorReply(
                401,
                f"Incorrect API key provided: {shown}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )

    def _model_ids(self) -> tuple[str, ...]:
        if self._models is not None:
            return self._models
        from .._models import models

        return tuple(info.name for info in models)

    def _models_answer(self, path: str, endpoint: str, base: Headers) -> Outcome:
        def obj(name: str) -> dict[str, Any]:
            return {"id": name, "object": "model", "created": _MODEL_CREATED, "owned_by": "openai"}

        ids = self._model_ids()
        if endpoint == "models":
            payload: Any = {"object": "list", "data": [obj(m) for m in ids]}
        else:
            name = path.split("/models/", 1)[1]
            if name not in ids:
                raise ErrorReply(
                    404, f"The model '{name}' does not exist", param="model", code="model_not_found"
                )
            payload = obj(name)
        return Outcome(200, [*base, JSON_TYPE], encode_json(payload))

    def _generate(self, endpoint: str, data: Any, parsed: bool, base: Headers) -> Outcome:
        problem: ErrorReply | None = None
        try:
            if not parsed:
                raise ErrorReply(400, _PARSE_ERROR)
            if endpoint == "chat":
                request: Any = validate_chat(data, strict=self.strict)
            else:
                request = validate_completion(data, strict=self.strict)
        except ErrorReply as err:
            problem = err
        # Take the script item atomically: failures answer any request, replies valid ones.
        with self._lock:
            script = self._state.script
            item = script[0] if script else None
            if isinstance(item, (Fail, Stall, Malformed)) or (item is not None and problem is None):
                script.popleft()
            else:
                item = None
        if isinstance(item, Fail):
            model = data.get("model") if isinstance(data, dict) else None
            return failure(item, base, model if isinstance(model, str) else None)
        if isinstance(item, Stall):
            return Outcome(0, base, stall=item.seconds)
        if isinstance(item, Malformed):
            return Outcome(item.status, [*base, *item.headers], item.body)
        if problem is not None:
            raise problem
        reply = item.reply if isinstance(item, Cut) else item
        assert reply is None or isinstance(reply, Reply)
        created = self.created if self.created is not None else int(time.time())
        if isinstance(request, ChatRequest):
            meta = Meta(
                f"chatcmpl-fake-{self._next_id('chatcmpl')}",
                created,
                request.model,
                self.system_fingerprint,
            )
            outcome = answer_chat(
                request,
                reply,
                meta,
                base,
                encoding=self.encoding,
                new_call_id=lambda: f"call_fake_{self._next_id('call')}",
                registry=self.registry,
            )
        else:
            meta = Meta(
                f"cmpl-fake-{self._next_id('cmpl')}",
                created,
                request.model,
                self.system_fingerprint,
            )
            outcome = answer_completion(
                request, reply, meta, base, encoding=self.encoding, registry=self.registry
            )
        if isinstance(item, Cut):
            apply_cut(outcome, item)
        return outcome


def _route(method: str, path: str, bare: bool) -> str:
    """The endpoint of ``method path``; OpenAI's 404 ``Invalid URL`` when there is none."""
    if path.startswith("/v1/"):
        rest = path[3:]
    elif bare:
        rest = path
    else:
        raise invalid_url(method, path)
    known = _ENDPOINTS.get(rest)
    if known is None and rest.startswith("/models/") and len(rest) > len("/models/"):
        known = ("GET", "model")
    if known is None or known[0] != method:
        raise invalid_url(method, path)
    return known[1]
