"""The pure core of the HTTP client, shared by the sync and async shells.

It resolves the configuration, builds requests (body, headers, query,
timeout), parses answers into the typed results, maps error statuses and
transport failures to convo's exceptions, and decides retries (through
:mod:`convo._retry`). It never sends, sleeps or iterates: the shells in
``_client.py`` and ``_async_client.py`` do, and nothing else.

Secrets: the API key only ever lives in this object's private fields and in
the ``Authorization`` header of outgoing requests. Headers are never logged,
error messages never include them, and an error body that echoes the key is
redacted before it reaches an exception.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict, TypeVar

import httpx
import pydantic_core
from pydantic import BaseModel, ValidationError

from . import _retry
from ._constants import (
    DEFAULT_BASE_URL,
    ENV_API_KEY,
    ENV_BASE_URL,
    ENV_ORG_ID,
    ENV_PROJECT_ID,
    ERROR_EXCERPT_CHARS,
)
from ._exceptions import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    APIStreamError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ConflictError,
    InternalServerError,
    InvalidMessageError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    UnprocessableEntityError,
)
from ._messages import Message

__all__ = [
    "ChatParams",
    "ClientCore",
    "CompletionParams",
    "RequestOptions",
    "RequestSpec",
    "TimeoutTypes",
    "status_error_class",
]

log = logging.getLogger("convo.client")

TimeoutTypes = float | httpx.Timeout | None
_ModelT = TypeVar("_ModelT", bound=BaseModel)


class RequestOptions(TypedDict, total=False):
    """Per-call options, accepted by every client method."""

    extra_body: Mapping[str, Any]  # merged into the JSON body (server-specific fields)
    extra_headers: Mapping[str, str | None]  # None removes a header
    extra_query: Mapping[str, str]
    timeout: TimeoutTypes  # None: no timeout
    max_retries: int


class _SamplingParams(RequestOptions, total=False):
    temperature: float
    top_p: float
    n: int
    stop: str | Sequence[str]
    max_tokens: int
    frequency_penalty: float
    presence_penalty: float
    logit_bias: Mapping[str, int]
    seed: int
    user: str
    stream_options: Mapping[str, Any]


class ChatParams(_SamplingParams, total=False):
    """Keyword parameters of ``chat`` / ``chat_stream``; unset or None means "not sent"."""

    max_completion_tokens: int
    logprobs: bool
    top_logprobs: int
    response_format: Mapping[str, Any]  # {"type": "text" | "json_object" | "json_schema", ...}
    tools: Sequence[Mapping[str, Any]]
    tool_choice: str | Mapping[str, Any]
    parallel_tool_calls: bool
    metadata: Mapping[str, str]
    service_tier: str
    reasoning_effort: str
    store: bool


class CompletionParams(_SamplingParams, total=False):
    """Keyword parameters of ``complete`` / ``complete_stream``; unset or None means "not sent"."""

    logprobs: int
    suffix: str
    echo: bool
    best_of: int


_SECRET_HEADERS = frozenset(
    {"authorization", "api-key", "x-api-key", "proxy-authorization", "ocp-apim-subscription-key"}
)
_OPTIONS = frozenset(RequestOptions.__annotations__)
_CHAT_KEYS = frozenset(ChatParams.__annotations__) - _OPTIONS
_COMPLETION_KEYS = frozenset(CompletionParams.__annotations__) - _OPTIONS

_STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def status_error_class(status_code: int) -> type[APIStatusError]:
    """The exception class for an error status (the one place statuses map to classes)."""
    cls = _STATUS_ERRORS.get(status_code)
    if cls is not None:
        return cls
    return InternalServerError if status_code >= 500 else APIStatusError


@functools.cache
def _user_agent() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        mine = version("convo")
    except PackageNotFoundError:  # running from a source tree that is not installed
        mine = "unknown"
    return f"convo/{mine} httpx/{httpx.__version__}"


@dataclass(slots=True)
class RequestSpec:
    """A request ready to send: what the shells need, nothing they must compute."""

    method: str
    url: str
    content: bytes
    headers: dict[str, str]
    params: dict[str, str] | None
    timeout: TimeoutTypes
    max_retries: int
    stream: bool


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def _safe_url(url: httpx.URL) -> str:
    # No query (it may carry keys on some proxies) and no userinfo.
    return f"{url.scheme}://{url.netloc.decode('ascii', 'replace')}{url.path}"


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    if len(text) > ERROR_EXCERPT_CHARS:
        return text[: ERROR_EXCERPT_CHARS - 3] + "..."
    return text


class ClientCore:
    """Configuration and every pure step of a request; one instance per client."""

    __slots__ = (
        "_api_key",
        "_chat_url",
        "_completions_url",
        "_headers",
        "_owned_headers",
        "_query",
        "_secrets",
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
    ) -> None:
        api_key = api_key if api_key is not None else _env(ENV_API_KEY)
        # No key is fine: local servers (vLLM, llama.cpp, Ollama) need none, and
        # Azure-style deployments put theirs in default_headers ("api-key").
        self._api_key = api_key or None
        url = str(base_url if base_url is not None else _env(ENV_BASE_URL) or DEFAULT_BASE_URL)
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ConfigurationError(
                f"base_url must be an http:// or https:// URL, got {_excerpt(url)!r}"
            )
        self.base_url = url.rstrip("/")
        self.organization = organization if organization is not None else _env(ENV_ORG_ID)
        self.project = project if project is not None else _env(ENV_PROJECT_ID)
        if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
            raise ConfigurationError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        self.max_retries = max_retries
        self.timeout = timeout
        headers = {
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": _user_agent(),
        }
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        if self.organization:
            headers["OpenAI-Organization"] = self.organization
        if self.project:
            headers["OpenAI-Project"] = self.project
        self._headers = _merge_headers(headers, default_headers) if default_headers else headers
        # Values to scrub from error texts: the key, and keys passed as headers (Azure's api-key).
        secrets = {self._api_key} if self._api_key else set()
        for name, value in (default_headers or {}).items():
            if name.lower() in _SECRET_HEADERS and value:
                secrets.add(value)
                secrets.add(value.split(" ", 1)[-1])  # "Bearer <key>" -> "<key>" as well
        # Longest first, so a value containing another is scrubbed whole.
        self._secrets = tuple(sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True))
        self._query = dict(default_query) if default_query else None
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
        body: dict[str, Any] = {"model": _check_model(model), "messages": _wire_messages(messages)}
        name = "chat_stream" if stream else "chat"
        return self._spec(self._chat_url, body, params, _CHAT_KEYS, stream, name)

    def completion_request(
        self, model: str, prompt: str | Sequence[str], params: Mapping[str, Any], *, stream: bool
    ) -> RequestSpec:
        """The request of ``POST {base_url}/completions``."""
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
        return self._spec(self._completions_url, body, params, _COMPLETION_KEYS, stream, name)

    def _spec(
        self,
        url: str,
        body: dict[str, Any],
        params: Mapping[str, Any],
        allowed: frozenset[str],
        stream: bool,
        method: str,
    ) -> RequestSpec:
        headers = self._headers
        query = self._query
        timeout = self.timeout
        max_retries = self.max_retries
        for key, value in params.items():
            if key in allowed:
                if value is not None:
                    body[key] = value
            elif key == "extra_body":
                if value:
                    body.update(value)
            elif key == "extra_headers":
                if value:
                    headers = _merge_headers(headers, value)
            elif key == "extra_query":
                if value:
                    query = {**(query or {}), **value}
            elif key == "timeout":
                timeout = value
            elif key == "max_retries":
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise ConfigurationError(f"max_retries must be an integer >= 0, got {value!r}")
                max_retries = value
            else:
                raise TypeError(f"{method}() got an unexpected keyword argument {key!r}")
        if stream:
            body["stream"] = True
        try:
            content = pydantic_core.to_json(body)
        except pydantic_core.PydanticSerializationError as exc:
            raise InvalidMessageError(f"the request body is not JSON-serializable: {exc}") from exc
        return RequestSpec("POST", url, content, headers, query, timeout, max_retries, stream)

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
        self._timeout_ext = httpx.Timeout(self.timeout).as_dict()

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
            if spec.timeout is self.timeout
            else httpx.Timeout(spec.timeout).as_dict()
        )
        return httpx.Request(
            spec.method, url, content=spec.content, headers=headers, extensions={"timeout": timeout}
        )

    # -- answers --------------------------------------------------------------------

    def parse(self, cls: type[_ModelT], response: httpx.Response) -> _ModelT:
        """A successful body as ``cls``; anything else is APIResponseValidationError."""
        try:
            return cls.model_validate_json(response.content)
        except ValidationError as exc:
            raise self.validation_error(cls.__name__, exc, response) from exc

    def validation_error(
        self, what: str, exc: ValidationError, response: httpx.Response, data: str | None = None
    ) -> APIResponseValidationError:
        """The error for a body (or stream event ``data``) that is not a valid ``what``."""
        problems = []
        for err in exc.errors(include_url=False)[:3]:
            loc = ".".join(str(x) for x in err["loc"])
            problems.append(f"{loc}: {err['msg']}" if loc else err["msg"])
        raw = data if data is not None else response.content.decode("utf-8", "replace")
        message = (
            f"{response.status_code} answer from {_safe_url(response.request.url)} is not a valid "
            f"{what} ({'; '.join(problems)}); body: {self.redact(_excerpt(raw))!r}"
        )
        return APIResponseValidationError(
            message,
            status_code=response.status_code,
            request_id=response.headers.get("x-request-id"),
        )

    def status_error(self, response: httpx.Response) -> APIStatusError:
        """The exception for an error status; the body must have been read."""
        status = response.status_code
        try:
            raw = response.content
        except httpx.ResponseNotRead:  # reading the error body failed: the status still speaks
            raw = b""
        text = self.redact(raw.decode("utf-8", "replace"))
        body: Any
        try:
            body = json.loads(text) if text.strip() else None
        except ValueError:
            body = text
        detail = _error_detail(body)
        message = f"{status} {response.reason_phrase}".rstrip()
        if detail:
            message = f"{message}: {detail}"
        request_id = response.headers.get("x-request-id")
        if request_id:
            message = f"{message} (request id {request_id})"
        return status_error_class(status)(
            message, status_code=status, body=body, request_id=request_id
        )

    def transport_error(self, exc: httpx.RequestError, request: httpx.Request) -> APIError:
        """Translate an httpx failure; the caller raises the result ``from exc``."""
        url = _safe_url(request.url)
        detail = self.redact(str(exc)) or type(exc).__name__
        if isinstance(exc, httpx.TimeoutException):
            kind = type(exc).__name__.removesuffix("Timeout").lower() or "request"
            return APITimeoutError(f"{kind} timeout on {request.method} {url} ({detail})")
        if isinstance(exc, httpx.ConnectError):
            return APIConnectionError(f"could not connect to {url}: {detail}")
        if isinstance(exc, httpx.DecodingError):
            return APIResponseValidationError(f"could not decode the answer of {url}: {detail}")
        return APIConnectionError(
            f"connection error on {request.method} {url}: {type(exc).__name__}: {detail}"
        )

    def stream_error(self, data: str, response: httpx.Response) -> APIStreamError:
        """The exception for an error event (``data`` is its text) inside a stream."""
        data = self.redact(data)
        try:
            parsed: Any = json.loads(data)
        except ValueError:
            parsed = data
        err = parsed.get("error", parsed) if isinstance(parsed, dict) else parsed
        detail = _error_detail({"error": err}) or "an error occurred during streaming"
        return APIStreamError(
            f"stream error from {_safe_url(response.request.url)}: {detail}",
            body=err,
            request_id=response.headers.get("x-request-id"),
        )

    def redact(self, text: str) -> str:
        """``text`` without the API key or secret default headers (servers echo keys in errors)."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text

    # -- retries and logging ------------------------------------------------------

    @staticmethod
    def retry_after_error(
        exc: httpx.RequestError, retries_done: int, spec: RequestSpec
    ) -> float | None:
        """Seconds to wait after a transport failure, or None to give up."""
        if not isinstance(exc, httpx.TransportError) or isinstance(exc, httpx.UnsupportedProtocol):
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

    @staticmethod
    def log_response(request: httpx.Request, response: httpx.Response, retries_done: int) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s %s -> %d (attempt %d, request id %s)",
                request.method,
                _safe_url(request.url),
                response.status_code,
                retries_done + 1,
                response.headers.get("x-request-id"),
            )

    @staticmethod
    def log_retry(request: httpx.Request, why: str, retries_done: int, delay: float) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "retrying %s %s in %.3f s after %s (retry %d)",
                request.method,
                _safe_url(request.url),
                delay,
                why,
                retries_done + 1,
            )


def _merge_headers(base: dict[str, str], extra: Mapping[str, str | None]) -> dict[str, str]:
    """``base`` updated with ``extra``; names compare case-insensitively, None removes one."""
    replaced = {name.lower() for name in extra}
    merged = {k: v for k, v in base.items() if k.lower() not in replaced}
    merged.update({k: v for k, v in extra.items() if v is not None})
    return merged


def _check_model(model: object) -> str:
    if not isinstance(model, str) or not model:
        raise ConfigurationError(f"model must be a non-empty string, got {model!r}")
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


def _error_detail(body: Any) -> str:
    """The human part of an error body: OpenAI's ``error.message`` when present."""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            msg = err.get("message")
            if isinstance(msg, str) and msg:
                return _excerpt(msg)
        elif isinstance(err, str) and err:
            return _excerpt(err)
        for key in ("message", "detail"):  # vLLM / FastAPI-style servers
            msg = body.get(key)
            if isinstance(msg, str) and msg:
                return _excerpt(msg)
        return _excerpt(json.dumps(body))
    if isinstance(body, str):
        return _excerpt(body)
    return "" if body is None else _excerpt(json.dumps(body))
