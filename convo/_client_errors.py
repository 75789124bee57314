"""Errors of the HTTP client: every status, transport failure and bad answer, mapped once.

Statuses map to classes in :func:`status_error_class` (the only place);
httpx failures are translated in :func:`transport_error` (the shells raise
the result ``from`` the httpx exception). Messages carry what helps (status,
OpenAI's ``error.message`` or a short excerpt of the body, the request id,
the URL without its query) and never a secret: every text from the server
passes through the client's ``redact``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
from pydantic import ValidationError

from ._constants import ERROR_EXCERPT_CHARS
from ._exceptions import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    APIStreamError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    UnprocessableEntityError,
)

__all__ = [
    "Redact",
    "excerpt",
    "safe_url",
    "status_error",
    "status_error_class",
    "stream_error",
    "transport_error",
    "validation_error",
]

Redact = Callable[[str], str]

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


def safe_url(url: httpx.URL) -> str:
    """``url`` for messages and logs: no query (proxies put keys there), no userinfo."""
    return f"{url.scheme}://{url.netloc.decode('ascii', 'replace')}{url.path}"


def excerpt(text: str) -> str:
    """``text`` with whitespace collapsed, cut to ``ERROR_EXCERPT_CHARS``."""
    text = " ".join(text.split())
    if len(text) > ERROR_EXCERPT_CHARS:
        return text[: ERROR_EXCERPT_CHARS - 3] + "..."
    return text


def validation_error(
    what: str,
    exc: ValidationError,
    response: httpx.Response,
    redact: Redact,
    data: str | None = None,
) -> APIResponseValidationError:
    """The error for a body (or stream event ``data``) that is not a valid ``what``."""
    problems = []
    for err in exc.errors(include_url=False)[:3]:
        loc = ".".join(str(x) for x in err["loc"])
        problems.append(f"{loc}: {err['msg']}" if loc else err["msg"])
    raw = data if data is not None else response.content.decode("utf-8", "replace")
    message = (
        f"{response.status_code} answer from {safe_url(response.request.url)} is not a valid "
        f"{what} ({'; '.join(problems)}); body: {redact(excerpt(raw))!r}"
    )
    return APIResponseValidationError(
        message,
        status_code=response.status_code,
        request_id=response.headers.get("x-request-id"),
    )


def status_error(response: httpx.Response, redact: Redact) -> APIStatusError:
    """The exception for an error status; the body must have been read."""
    status = response.status_code
    try:
        raw = response.content
    except httpx.ResponseNotRead:  # reading the error body failed: the status still speaks
        raw = b""
    text = redact(raw.decode("utf-8", "replace"))
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
    return status_error_class(status)(message, status_code=status, body=body, request_id=request_id)


def transport_error(exc: httpx.RequestError, request: httpx.Request, redact: Redact) -> APIError:
    """Translate an httpx failure; the caller raises the result ``from exc``."""
    url = safe_url(request.url)
    detail = redact(str(exc)) or type(exc).__name__
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


def stream_error(data: str, response: httpx.Response, redact: Redact) -> APIStreamError:
    """The exception for an error event (``data`` is its text) inside a stream."""
    data = redact(data)
    try:
        parsed: Any = json.loads(data)
    except ValueError:
        parsed = data
    err = parsed.get("error", parsed) if isinstance(parsed, dict) else parsed
    detail = _error_detail({"error": err}) or "an error occurred during streaming"
    return APIStreamError(
        f"stream error from {safe_url(response.request.url)}: {detail}",
        body=err,
        request_id=response.headers.get("x-request-id"),
    )


def _error_detail(body: Any) -> str:
    """The human part of an error body: OpenAI's ``error.message`` when present."""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            msg = err.get("message")
            if isinstance(msg, str) and msg:
                return excerpt(msg)
        elif isinstance(err, str) and err:
            return excerpt(err)
        for key in ("message", "detail"):  # vLLM / FastAPI-style servers
            msg = body.get(key)
            if isinstance(msg, str) and msg:
                return excerpt(msg)
        return excerpt(json.dumps(body))
    if isinstance(body, str):
        return excerpt(body)
    return "" if body is None else excerpt(json.dumps(body))
