"""The pure core of the HTTP client, shared by the sync and async shells.

It resolves the configuration, builds requests (body, headers, query,
timeout; the parameters are typed in ``_client_params.py``), parses answers
into the typed results (``_types.py``), maps error statuses and transport
failures to convo's exceptions (``_client_errors.py``), and decides retries
(``_retry.py``). It never sends, sleeps or iterates: the shells in
``_client.py`` and ``_async_client.py`` do, and nothing else.

Secrets: the API key only ever lives in this object's private fields and in
the ``Authorization`` header of outgoing requests. Headers are never logged,
error messages never include them, and an error body that echoes the key is
redacted before it reaches an exception.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias, TypeVar

import httpx
import pydantic_core
from pydantic import BaseModel, ValidationError

from . import _client_errors as _errors
from . import _retry
from ._client_errors import excerpt, safe_url
from ._client_params import CHAT_KEYS, COMPLETION_KEYS, TimeoutTypes
from ._constants import DEFAULT_BASE_URL, ENV_API_KEY, ENV_BASE_URL, ENV_ORG_ID, ENV_PROJECT_ID
from ._exceptions import (
    APIError,
    APIResponseValidationError,
    APIStatusError,
    APIStreamError,
    ConfigurationError,
    InvalidMessageError,
)
from ._messages import Message

__all__ = ["ClientCore", "Endpoint", "RequestSpec", "RequestStats"]

log = logging.getLogger("convo.client")

_ModelT = TypeVar("_ModelT", bound=BaseModel)


_SECRET_HEADERS = frozenset(
    {"authorization", "api-key", "x-api-key", "proxy-authorization", "ocp-apim-subscription-key"}
)


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
    #: requests sent so far (retries included), counted by the shells' ``_send``
    attempts: int = 0


#: The two generation endpoints, named as OpenAI's API reference names them.
Endpoint: TypeAlias = Literal["chat.completions", "completions"]


@dataclass(slots=True)
class RequestStats:
    """Filled in by :meth:`~convo.OpenAIClient.send`: what it took to get an answer.

    ``attempts``: requests sent, retries included (also when the call
    finally failed). ``headers_ms``: milliseconds from the first attempt to
    the response headers of the last one (retries and their waits included).
    """

    attempts: int = 0
    headers_ms: float | None = None


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


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
                f"base_url must be an http:// or https:// URL, got {excerpt(url)!r}"
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
        return self._spec(self._chat_url, body, params, CHAT_KEYS, stream, name)

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
        return self._spec(self._completions_url, body, params, COMPLETION_KEYS, stream, name)

    def body_request(
        self,
        endpoint: Endpoint,
        body: bytes | str | Mapping[str, Any],
        *,
        stream: bool,
        timeout: TimeoutTypes | None = None,
        max_retries: int | None = None,
    ) -> RequestSpec:
        """A request whose body is given, sent byte for byte (a run's recorded body).

        A mapping is serialized the way :meth:`chat_request` serializes. The
        body's own ``"stream"`` must agree with ``stream``.
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
            try:
                content = pydantic_core.to_json(dict(body))
            except pydantic_core.PydanticSerializationError as exc:
                raise InvalidMessageError(
                    f"the request body is not JSON-serializable: {exc}"
                ) from None
        elif isinstance(body, str):
            content = body.encode()
        elif isinstance(body, bytes):
            content = body
        else:
            raise InvalidMessageError("body must be bytes, str or a mapping")
        try:
            parsed = pydantic_core.from_json(content)
        except ValueError:
            raise InvalidMessageError("the request body is not JSON") from None
        if not isinstance(parsed, dict) or not isinstance(parsed.get("model"), str):
            raise InvalidMessageError("the request body must be a JSON object with a model")
        if bool(parsed.get("stream")) != stream:
            raise InvalidMessageError(
                f"the body says stream={bool(parsed.get('stream'))} but stream={stream} was asked"
            )
        if max_retries is not None and (
            not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0
        ):
            raise ConfigurationError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        return RequestSpec(
            "POST", url, content, self._headers, self._query,
            self.timeout if timeout is None else timeout,
            self.max_retries if max_retries is None else max_retries,
            stream,
        )

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
        return _errors.validation_error(
            what, exc, response, self.redactor(response.request), data
        )

    def status_error(self, response: httpx.Response) -> APIStatusError:
        """The exception for an error status; the body must have been read."""
        return _errors.status_error(response, self.redactor(response.request))

    def transport_error(self, exc: httpx.RequestError, request: httpx.Request) -> APIError:
        """Translate an httpx failure; the caller raises the result ``from exc``."""
        return _errors.transport_error(exc, request, self.redactor(request))

    def stream_error(self, data: str, response: httpx.Response) -> APIStreamError:
        """The exception for an error event (``data`` is its text) inside a stream."""
        return _errors.stream_error(data, response, self.redactor(response.request))

    def redactor(self, request: httpx.Request) -> Callable[[str], str]:
        """:meth:`redact`, plus the secret headers this very request carried: per-call
        ``extra_headers`` (a per-tenant key) and a passed-in client's own headers."""
        extra = set()
        for name, value in request.headers.items():
            if name.lower() in _SECRET_HEADERS and value:
                extra.add(value)
                extra.add(value.split(" ", 1)[-1])
        extra.difference_update(self._secrets)
        if not any(len(v) >= 4 for v in extra):
            return self.redact
        secrets = sorted((*self._secrets, *(v for v in extra if len(v) >= 4)), key=len, reverse=True)

        def redact(text: str) -> str:
            for secret in secrets:
                if secret in text:
                    text = text.replace(secret, "***")
            return text

        return redact

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
                safe_url(request.url),
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
                safe_url(request.url),
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
