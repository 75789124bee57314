"""The pure core of the HTTP client, shared by the sync and async shells.

It resolves the configuration (checked in ``_client/config.py``), builds
requests (body, headers, query, timeout, deadlines and size limits; the
parameters are typed in ``_client/params.py``), parses answers into the typed
results (``_client/types.py``), maps error statuses and transport failures to
convo's exceptions (``_client/errors.py``), and decides retries
(``_client/retry.py``). It never sends, sleeps or iterates: the shells in
``_client/client.py`` and ``_client/async_client.py`` do, and nothing else.

Secrets: the API key only ever lives in this object's private fields and in
the ``Authorization`` header of outgoing requests. Headers are never logged,
error messages never include them, and everything a server sends back passes
through a :class:`~convo._client.redact.Redactor` before it reaches an
exception or a log line.

Deadlines: ``timeout`` is a wall-clock deadline per attempt (connect, headers
and the whole body); a stream has an idle timeout (the longest wait for the
next data event; comments and pings do not count) and an optional total
deadline. :class:`Limits` holds them with the size limits; the shells turn
them into :class:`Deadline` values and enforce them.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, TypeAlias, TypeVar

import httpx
import pydantic_core
from pydantic import BaseModel, ValidationError

from .._exceptions import (
    APIError,
    APIResponseTooLargeError,
    APIResponseValidationError,
    APIStatusError,
    APIStreamError,
    APITimeoutError,
    ConfigurationError,
    InvalidMessageError,
)
from .._messages import Message
from . import errors as _errors
from . import retry as _retry
from .config import (
    check_api_key,
    check_bytes,
    check_header_value,
    check_headers,
    check_max_retries,
    check_query,
    check_seconds,
    check_timeout,
    parse_base_url,
)
from .constants import (
    DEFAULT_BASE_URL,
    ENV_API_KEY,
    ENV_BASE_URL,
    ENV_ORG_ID,
    ENV_PROJECT_ID,
    MAX_ERROR_BODY_BYTES,
)
from .errors import safe_url
from .params import CHAT_KEYS, COMPLETION_KEYS, TimeoutTypes, check_params
from .redact import Redactor, is_secret_name, watch_library_logs
from .types import SerializedRequest

__all__ = [
    "BodyBuffer", "ClientCore", "Deadline", "Endpoint", "Limits", "RequestSpec", "RequestStats",
]

log = logging.getLogger("convo.client")

_ModelT = TypeVar("_ModelT", bound=BaseModel)

# A socket timeout never fires early, but the clock read after it may be a hair
# behind the deadline it was set from.
_SLACK = 0.01


@functools.cache
def _user_agent() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        mine = version("convo")
    except PackageNotFoundError:  # running from a source tree that is not installed
        mine = "unknown"
    return f"convo/{mine} httpx/{httpx.__version__}"


class Limits(NamedTuple):
    """Deadlines (seconds) and size limits (bytes) of one request; None: no limit."""

    total: float | None  # one attempt: connect, headers and the whole body
    idle: float | None  # streams: the longest wait for the next data event
    stream_total: float | None  # streams: the whole stream, from the attempt's start
    max_body: int | None  # a body, or the sum of a stream's bytes
    max_event: int | None  # one server-sent event or line


class Deadline(NamedTuple):
    """A point in ``time.monotonic()`` time, and which limit it is."""

    at: float
    kind: str  # "attempt", "headers", "idle" or "stream"
    seconds: float

    @property
    def why(self) -> str:
        """What passing it means, for the error message."""
        s = f"{self.seconds:g} s"
        if self.kind == "attempt":
            return f"no complete answer within the {s} deadline of an attempt (connect, headers, body)"
        if self.kind == "headers":
            return f"no answer headers within the {s} deadline of an attempt"
        if self.kind == "idle":
            return (
                f"no data event for {s} (stream idle timeout; keep-alive comments and pings "
                "do not count)"
            )
        return f"the stream did not end within its {s} deadline (stream_timeout)"

    def expired(self) -> bool:
        return time.monotonic() >= self.at - _SLACK


def earliest(a: Deadline | None, b: Deadline | None) -> Deadline | None:
    """The deadline that comes first (None is no deadline)."""
    if a is None:
        return b
    if b is None or a.at <= b.at:
        return a
    return b


@dataclass(slots=True)
class RequestSpec:
    """A request ready to send: what the shells need, nothing they must compute."""

    method: str
    url: str
    content: bytes = field(repr=False)
    headers: dict[str, str] = field(repr=False)  # holds the key: never in a repr
    params: dict[str, Any] | None
    timeout: httpx.Timeout | None
    max_retries: int
    stream: bool
    limits: Limits
    #: requests sent so far (retries included), counted by the shells' ``_attempts``
    attempts: int = 0

    def attempt_deadline(self, start: float) -> Deadline | None:
        """Until when an attempt started at ``start`` may wait (for a stream: its headers)."""
        total = self.limits.total
        deadline = None
        if total is not None:
            deadline = Deadline(start + total, "headers" if self.stream else "attempt", total)
        if self.stream:
            deadline = earliest(deadline, self.stream_deadline(start))
        return deadline

    def stream_deadline(self, start: float) -> Deadline | None:
        """The total deadline of a stream whose attempt started at ``start``."""
        total = self.limits.stream_total
        return None if total is None else Deadline(start + total, "stream", total)

    def idle_deadline(self, since: float) -> Deadline | None:
        """When waiting for the next data event of a stream, from ``since``, must stop."""
        idle = self.limits.idle
        return None if idle is None else Deadline(since + idle, "idle", idle)


#: The two generation endpoints, named as OpenAI's API reference names them.
Endpoint: TypeAlias = Literal["chat.completions", "completions"]


@dataclass(slots=True)
class RequestStats:
    """Filled in by :meth:`~convo.OpenAIClient.send`: what it took to get an answer.

    ``attempts``: requests sent, retries included (also when the call
    finally failed). ``headers_ms``: milliseconds from the first attempt to
    the response headers of the last one (retries and their waits included).
    ``content``: the body of a non-streamed answer, as received (what the
    result was parsed from; a turn records it in its run).
    """

    attempts: int = 0
    headers_ms: float | None = None
    content: bytes | None = None


class BodyBuffer:
    """The bytes of a body, read chunk by chunk, within a size limit.

    Args:
        core: for the error past the limit.
        response: the response whose body this is.
        limit: the largest body accepted, None for none.
        truncate: keep what fits and report "full" instead of raising (error
            bodies: only their message is wanted).
    """

    __slots__ = ("_chunks", "_core", "_limit", "_response", "_size", "_truncate")

    def __init__(
        self, core: ClientCore, response: httpx.Response, limit: int | None, *, truncate: bool
    ) -> None:
        self._core = core
        self._response = response
        self._limit = limit
        self._truncate = truncate
        self._chunks: list[bytes] = []
        self._size = 0
        declared = response.headers.get("content-length", "")
        if limit is not None and not truncate and declared.isdigit() and int(declared) > limit:
            raise core.too_large("the body", limit, response)  # no need to read it to know

    def add(self, data: bytes) -> bool:
        """Keep ``data``; False when the buffer is full (truncating) and reading should stop."""
        limit = self._limit
        self._size += len(data)
        if limit is not None and self._size > limit:
            if not self._truncate:
                raise self._core.too_large("the body", limit, self._response)
            self._chunks.append(data[: len(data) - (self._size - limit)])
            return False
        self._chunks.append(data)
        return True

    def content(self) -> bytes:
        chunks = self._chunks
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


class _Cookies(httpx.Cookies):
    """The cookie jar of convo's own httpx client: httpx hands every response to
    ``extract_cookies``, which builds urllib compatibility objects of the request and
    the response (about 15 us) even when the response sets no cookie. Here that is
    skipped when it sets none (an API's usual answer); cookies a response does set
    are kept as before. (The client sends none back either way: see ``own_client``.)"""

    def extract_cookies(self, response: httpx.Response) -> None:
        if "set-cookie" in response.headers:
            super().extract_cookies(response)


class ClientCore:
    """Configuration and every pure step of a request; one instance per client."""

    __slots__ = (
        "_api_key",
        "_chat_url",
        "_completions_url",
        "_headers",
        "_idle",
        "_limits",
        "_owned_headers",
        "_query",
        "_redact",
        "_timeout",
        "_timeout_ext",
        "_urls",
        "base_url",
        "max_retries",
        "organization",
        "project",
        "timeout",
    )

    def __init__(
        self,
        *,
        api_key: str | None,
        base_url: str | httpx.URL | None,
        organization: str | None,
        project: str | None,
        timeout: TimeoutTypes,
        max_retries: int,
        default_headers: Mapping[str, str] | None,
        default_query: Mapping[str, str] | None,
        stream_idle_timeout: float | None = None,
        stream_timeout: float | None = None,
        max_response_bytes: int | None = None,
        max_event_bytes: int | None = None,
    ) -> None:
        if api_key is not None:
            self._api_key = check_api_key(api_key, "api_key")
        else:
            self._api_key = check_api_key(_env(ENV_API_KEY), f"${ENV_API_KEY}")
        # No key is fine: local servers (vLLM, llama.cpp, Ollama) need none, and
        # Azure-style deployments put theirs in default_headers ("api-key").
        base = parse_base_url(
            base_url if base_url is not None else _env(ENV_BASE_URL) or DEFAULT_BASE_URL
        )
        self.base_url = base.url
        self.organization = organization if organization is not None else _env(ENV_ORG_ID)
        self.project = project if project is not None else _env(ENV_PROJECT_ID)
        self.max_retries = check_max_retries(max_retries)
        self.timeout = timeout
        timeouts = check_timeout(timeout)
        self._timeout = timeouts.httpx
        self._idle = check_seconds(stream_idle_timeout, "stream_idle_timeout")
        self._limits = Limits(
            timeouts.total,
            self._idle if self._idle is not None else timeouts.read,
            check_seconds(stream_timeout, "stream_timeout"),
            check_bytes(max_response_bytes, "max_response_bytes"),
            check_bytes(max_event_bytes, "max_event_bytes"),
        )
        headers = {
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": _user_agent(),
        }
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        for setting, name, value in (
            ("organization", "OpenAI-Organization", self.organization),
            ("project", "OpenAI-Project", self.project),
        ):
            if value:
                headers[name] = check_header_value(name, value, setting)
        defaults = (
            check_headers(default_headers, "default_headers", allow_none=True)
            if default_headers
            else {}
        )
        self._headers = _merge_headers(headers, defaults) if defaults else headers
        query = base.query
        if default_query:
            query = {**query, **check_query(default_query, "default_query")}
        # Values to scrub from error texts: the key, keys passed as headers
        # (Azure's api-key) or in the URL (a password, an api-key parameter).
        secrets = {self._api_key} if self._api_key else set()
        secrets.update(_secret_values(defaults.items()))
        secrets.update(_secret_values(query.items()))
        secrets.update(base.secrets)
        self._redact = Redactor(secrets)
        watch_library_logs()
        self._query = query or None
        self._chat_url = self.base_url + "/chat/completions"
        self._completions_url = self.base_url + "/completions"
        self._owned_headers: httpx.Headers | None = None  # set by own_client()
        self._urls: dict[str, httpx.URL] = {}
        self._timeout_ext: dict[str, float | None] = {}

    def __repr__(self) -> str:
        return f"ClientCore(base_url={self.base_url!r})"

    # -- building requests ------------------------------------------------------

    def chat_request(
        self,
        model: str,
        messages: Sequence[Message | Mapping[str, Any]],
        params: Mapping[str, Any],
        *,
        stream: bool,
    ) -> RequestSpec:
        """The request of ``POST {base_url}/chat/completions``."""
        check_params(params, "chat")
        body: dict[str, Any] = {"model": _check_model(model), "messages": _wire_messages(messages)}
        name = "chat_stream" if stream else "chat"
        return self._spec(self._chat_url, body, params, CHAT_KEYS, stream, name)

    def completion_request(
        self, model: str, prompt: str | Sequence[str], params: Mapping[str, Any], *, stream: bool
    ) -> RequestSpec:
        """The request of ``POST {base_url}/completions``."""
        check_params(params, "completion")
        if isinstance(prompt, str):
            pass
        elif isinstance(prompt, Sequence) and not isinstance(prompt, bytes) and prompt:
            if not all(isinstance(p, str) for p in prompt):
                raise InvalidMessageError("prompt must be a string or a list of strings")
            prompt = list(prompt)
        else:
            raise InvalidMessageError(
                f"prompt must be a string or a non-empty list of strings, got {type(prompt).__name__}"
            )
        body: dict[str, Any] = {"model": _check_model(model), "prompt": prompt}
        name = "complete_stream" if stream else "complete"
        return self._spec(self._completions_url, body, params, COMPLETION_KEYS, stream, name)

    def body_request(
        self,
        endpoint: Endpoint,
        body: bytes | str | Mapping[str, Any],
        options: Mapping[str, Any],
        *,
        stream: bool,
    ) -> RequestSpec:
        """A request whose body is given, sent byte for byte (a run's recorded body).

        A mapping is serialized the way :meth:`chat_request` serializes. The
        body's own ``"stream"`` must agree with ``stream``. ``options`` are the
        per-call options (``timeout``, ``max_retries``, ``extra_headers``...),
        not body parameters.
        """
        if endpoint == "chat.completions":
            url = self._chat_url
        elif endpoint == "completions":
            url = self._completions_url
        else:
            raise ConfigurationError(
                f"endpoint must be 'chat.completions' or 'completions', not {endpoint!r}"
            )
        if isinstance(body, Mapping):
            content = _to_json(dict(body))
        elif isinstance(body, str):
            content = body.encode()
        elif isinstance(body, bytes):
            content = body
        else:
            raise InvalidMessageError("body must be bytes, str or a mapping")
        if not (
            # A dict convo serialized itself (a turn's body), with a string model first
            # and no "stream" anywhere, is what the checks below look for: a JSON object
            # with a model that asks for no stream. (A string "stream" inside it only
            # costs the parse.)
            type(body) is SerializedRequest
            and not stream
            and content.startswith(b'{"model":"')
            and b'"stream"' not in content
        ):
            try:
                parsed = pydantic_core.from_json(content)
            except ValueError:
                raise InvalidMessageError("the request body is not JSON") from None
            if not isinstance(parsed, dict) or not isinstance(parsed.get("model"), str):
                raise InvalidMessageError("the request body must be a JSON object with a model")
            if bool(parsed.get("stream")) != stream:
                raise InvalidMessageError(
                    f"the body says stream={bool(parsed.get('stream'))} but stream={stream} "
                    "was asked"
                )
        if "extra_body" in options:
            raise ConfigurationError("send() takes the body as is: no extra_body")
        spec = self._spec(url, None, options, frozenset(), stream, "send")
        spec.content = content
        return spec

    def _spec(
        self,
        url: str,
        body: dict[str, Any] | None,
        params: Mapping[str, Any],
        allowed: frozenset[str],
        stream: bool,
        method: str,
    ) -> RequestSpec:
        """The request of ``method`` with ``body`` and the per-call ``params`` (the
        body's parameters, when ``allowed``, and client options). ``body`` None: the
        caller sets the content (:meth:`body_request`, which takes no body parameters)."""
        headers = self._headers
        query = self._query
        timeout = self._timeout
        max_retries = self.max_retries
        limits = self._limits
        fields = body if body is not None else {}
        for key, value in params.items():
            if key in allowed:
                if value is not None:
                    fields[key] = value
            elif key == "extra_body":
                if value is not None and not isinstance(value, Mapping):
                    raise InvalidMessageError(
                        f"extra_body must be a mapping, got {type(value).__name__}"
                    )
                if value:
                    fields.update(value)
            elif key == "extra_headers":
                if value:
                    extra = check_headers(value, "extra_headers", allow_none=True)
                    headers = _merge_headers(headers, extra)
                elif value is not None and not isinstance(value, Mapping):
                    check_headers(value, "extra_headers", allow_none=True)
            elif key == "extra_query":
                if value:
                    query = {**(query or {}), **check_query(value, "extra_query")}
                elif value is not None and not isinstance(value, Mapping):
                    check_query(value, "extra_query")
            elif key == "timeout":
                timeouts = check_timeout(value)
                timeout = timeouts.httpx
                idle = self._idle if self._idle is not None else timeouts.read
                limits = limits._replace(total=timeouts.total, idle=idle)
            elif key == "max_retries":
                max_retries = check_max_retries(value)
            elif key in _LIMIT_OPTIONS:
                limits = _LIMIT_OPTIONS[key](limits, value)
            else:
                raise TypeError(f"{method}() got an unexpected keyword argument {key!r}")
        if body is None:
            content = b""
        else:
            if stream:
                fields["stream"] = True
            content = _to_json(fields)
        return RequestSpec(
            "POST", url, content, headers, query, timeout, max_retries, stream, limits
        )

    def own_client(self, http: httpx.Client | httpx.AsyncClient) -> None:
        """Build requests for ``http`` (a client convo created) without ``build_request``.

        ``build_request`` re-parses the URL and merges headers, cookies and
        query on every call (about 30 us); here all of that is done once. The
        difference: convo's own client does not send cookies back, which an
        API client has no use for.
        """
        headers = httpx.Headers(http.headers)
        headers.update(self._headers)
        self._owned_headers = headers
        self._urls = {
            url: httpx.URL(url, params=self._query) if self._query else httpx.URL(url)
            for url in (self._chat_url, self._completions_url)
        }
        self._timeout_ext = httpx.Timeout(self._timeout).as_dict()
        if type(getattr(http, "_cookies", None)) is httpx.Cookies:
            http._cookies = _Cookies(http._cookies)

    def build(self, http: httpx.Client | httpx.AsyncClient, spec: RequestSpec) -> httpx.Request:
        """The ``httpx.Request`` of a spec (building needs the client, not I/O)."""
        base = self._owned_headers
        if base is None:  # a client passed in: honour its own headers, cookies, params
            return http.build_request(
                spec.method,
                spec.url,
                content=spec.content,
                headers=spec.headers,
                params=spec.params,
                timeout=spec.timeout,
            )
        if spec.params is self._query:
            url = self._urls[spec.url]
        else:
            url = httpx.URL(spec.url, params=spec.params)
        if spec.headers is self._headers:
            headers = base
        else:
            headers = httpx.Headers(http.headers)
            headers.update(spec.headers)
        timeout = (
            self._timeout_ext
            if spec.timeout is self._timeout
            else httpx.Timeout(spec.timeout).as_dict()
        )
        return httpx.Request(
            spec.method, url, content=spec.content, headers=headers, extensions={"timeout": timeout}
        )

    # -- answers --------------------------------------------------------------------

    def parse(self, cls: type[_ModelT], content: bytes, response: httpx.Response) -> _ModelT:
        """A successful body as ``cls``; anything else is APIResponseValidationError."""
        try:
            return cls.model_validate_json(content)
        except ValidationError as exc:
            problems = _errors.describe(exc)
        # Raised here, not in the except block: the pydantic error quotes the raw body.
        raw = content[: 16 * 1024].decode("utf-8", "replace")
        raise self.validation_error(cls.__name__, problems, raw, response)

    def body(self, response: httpx.Response, spec: RequestSpec) -> BodyBuffer:
        """A buffer for the body of ``response`` (an error body is cut, not refused)."""
        limit = spec.limits.max_body
        if response.status_code < 300:
            return BodyBuffer(self, response, limit, truncate=False)
        cap = MAX_ERROR_BODY_BYTES if limit is None else min(limit, MAX_ERROR_BODY_BYTES)
        return BodyBuffer(self, response, cap, truncate=True)

    def validation_error(
        self, what: str, problems: str, raw: str, response: httpx.Response
    ) -> APIResponseValidationError:
        """The error for a body (or stream event ``raw``) that is not a valid ``what``."""
        return _errors.validation_error(what, problems, raw, response, self.redactor(response.request))

    def status_error(self, response: httpx.Response, content: bytes) -> APIStatusError:
        """The exception for an error status; ``content`` is what was read of its body."""
        return _errors.status_error(response, content, self.redactor(response.request))

    def transport_error(
        self, exc: httpx.RequestError, request: httpx.Request, deadline: Deadline | None = None
    ) -> APIError:
        """Translate an httpx failure (a deadline's timeout when ``deadline`` had passed)."""
        expired = deadline.why if deadline is not None and deadline.expired() else None
        return _errors.transport_error(exc, request, self.redactor(request), expired)

    def timeout_error(self, request: httpx.Request, deadline: Deadline) -> APITimeoutError:
        """A deadline noticed between two reads."""
        return _errors.timeout_error(request, deadline.why)

    def stream_error(self, data: str, response: httpx.Response) -> APIStreamError:
        """The exception for an error event (``data`` is its text) inside a stream."""
        return _errors.stream_error(data, response, self.redactor(response.request))

    def stream_cut_error(self, response: httpx.Response) -> APIStreamError:
        return _errors.stream_cut_error(response, self.redactor(response.request))

    def decode_error(self, exc: UnicodeDecodeError, response: httpx.Response) -> APIError:
        return _errors.decode_error(exc, response, self.redactor(response.request))

    def too_large(
        self, what: str, limit: int, response: httpx.Response
    ) -> APIResponseTooLargeError:
        return _errors.too_large_error(what, limit, response, self.redactor(response.request))

    def redactor(self, request: httpx.Request) -> Redactor:
        """The client's redactor, plus the secrets this very request carried: per-call
        ``extra_headers`` (a per-tenant key), a passed-in client's own headers, key-like
        query parameters."""
        return self._redact.with_secrets(
            (
                *_secret_values(request.headers.items()),
                *_secret_values(request.url.params.multi_items()),
            )
        )

    def redact(self, text: str) -> str:
        """``text`` without the API key or secret default headers (servers echo keys in errors)."""
        return self._redact(text)

    # -- retries and logging ------------------------------------------------------

    def settle(
        self,
        request: httpx.Request,
        spec: RequestSpec,
        retries_done: int,
        deadline: Deadline | None,
        failure: httpx.RequestError | None,
        response: httpx.Response | None,
        body: BodyBuffer | None,
    ) -> float:
        """After a failed attempt: how long to wait before the next, or the error is raised.

        The shells call this outside their ``except`` blocks, so the error raised
        has no ``__context__`` (``failure`` holds the request and its headers).
        """
        if failure is not None:
            delay = self.retry_after_error(failure, retries_done, spec)
            if delay is None:
                raise self.transport_error(failure, request, deadline)
            why = type(failure).__name__
        else:
            assert response is not None
            delay = self.retry_after_status(response, retries_done, spec)
            if delay is None:
                raise self.status_error(response, b"" if body is None else body.content())
            why = f"status {response.status_code}"
        self.log_retry(request, why, retries_done, delay)
        return delay

    @staticmethod
    def retry_after_error(
        exc: httpx.RequestError, retries_done: int, spec: RequestSpec
    ) -> float | None:
        """Seconds to wait after a transport failure, or None to give up."""
        if not isinstance(exc, httpx.TransportError) or isinstance(
            exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError
        ):
            return None
        return _retry.retry_delay(retries_done, spec.max_retries)

    @staticmethod
    def retry_after_status(
        response: httpx.Response, retries_done: int, spec: RequestSpec
    ) -> float | None:
        """Seconds to wait after an error status, or None to give up."""
        return _retry.retry_delay(
            retries_done,
            spec.max_retries,
            status_code=response.status_code,
            headers=response.headers,
        )

    def log_response(
        self, request: httpx.Request, response: httpx.Response, retries_done: int
    ) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s %s -> %d (attempt %d, request id %s)",
                request.method,
                safe_url(request.url),
                response.status_code,
                retries_done + 1,
                _errors.request_id(response, self.redactor(request)),
            )

    @staticmethod
    def log_retry(request: httpx.Request, why: str, retries_done: int, delay: float) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "retrying %s %s in %.3f s after %s (retry %d)",
                request.method,
                safe_url(request.url),
                delay,
                why,
                retries_done + 1,
            )


def _limit_option(name: str, check: Any, field_name: str) -> Any:
    def apply(limits: Limits, value: Any) -> Limits:
        return limits._replace(**{field_name: check(value, name)})

    return apply


# Per-call options that replace one field of the request's Limits.
_LIMIT_OPTIONS = {
    "stream_idle_timeout": _limit_option("stream_idle_timeout", check_seconds, "idle"),
    "stream_timeout": _limit_option("stream_timeout", check_seconds, "stream_total"),
    "max_response_bytes": _limit_option("max_response_bytes", check_bytes, "max_body"),
    "max_event_bytes": _limit_option("max_event_bytes", check_bytes, "max_event"),
}


def _secret_values(items: Any) -> list[str]:
    """The credentials among header or query ``(name, value)`` pairs.

    An ``Authorization: Bearer <key>`` value counts as ``<key>``: masking
    "Bearer" too would mangle messages that mention the scheme.
    """
    out = []
    for name, value in items:
        if isinstance(value, str) and value and is_secret_name(name):
            out.append(value.split(" ", 1)[1] if " " in value.strip() else value)
    return out


def _to_json(body: dict[str, Any]) -> bytes:
    try:
        content = pydantic_core.to_json(body)
    except pydantic_core.PydanticSerializationError as exc:
        # The message names the type that failed; the value is the caller's own.
        raise InvalidMessageError(f"the request body is not JSON-serializable: {exc}") from None
    # pydantic writes NaN and Infinity as bare words, which is not JSON: a server
    # would reject the request or misread it. The check costs a scan of the bytes;
    # a second serialization happens only when the words appear (in text, usually).
    # (find, not ``in``: bytes' ``in`` formats a TypeError before it searches)
    if (
        content.find(b"NaN") >= 0 or content.find(b"Infinity") >= 0
    ) and content != pydantic_core.to_json(
        body, inf_nan_mode="null"
    ):
        raise InvalidMessageError("the request body holds a NaN or infinite number (not JSON)")
    return content
def _merge_headers(base: dict[str, str], extra: Mapping[str, str | None]) -> dict[str, str]:
    """``base`` updated with ``extra``; names compare case-insensitively, None removes one."""
    replaced = {name.lower() for name in extra}
    merged = {k: v for k, v in base.items() if k.lower() not in replaced}
    merged.update({k: v for k, v in extra.items() if v is not None})
    return merged


def _check_model(model: object) -> str:
    if not isinstance(model, str) or not model:
        raise ConfigurationError(f"model must be a non-empty string, got {_errors.excerpt(repr(model), 80)}")
    if not model.isprintable() or model.strip() != model:
        raise ConfigurationError(
            f"model must not contain control characters or start or end with whitespace, "
            f"got {_errors.excerpt(repr(model), 80)}"
        )
    return model


def _wire_messages(messages: Sequence[Message | Mapping[str, Any]]) -> list[Any]:
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise InvalidMessageError(
            f"messages must be a list of Message values or dicts, got {type(messages).__name__}"
        )
    out: list[Any] = []
    for i, m in enumerate(messages):
        if isinstance(m, Message):
            out.append(m.to_openai())
        elif isinstance(m, dict):
            out.append(m)  # dicts go out as given: the server is the judge of extensions
        elif isinstance(m, Mapping):
            out.append(dict(m))
        else:
            raise InvalidMessageError(
                f"messages[{i}] must be a Message or a dict, got {type(m).__name__}"
            )
    if not out:
        raise InvalidMessageError("messages must not be empty")
    return out
