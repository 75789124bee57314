"""Errors of the HTTP client: every status, transport failure and bad answer, mapped once.

Statuses map to classes in :func:`status_error_class` (the only place);
httpx failures are translated in :func:`transport_error`. Messages carry what
helps (status, OpenAI's ``error.message`` or a short excerpt of the body, the
request id, the URL without its query) and never a secret:

* every text from the server passes through the client's :class:`Redactor`
  *last*: after a JSON body is decoded (an escaped echo of the key is a key
  again), after an excerpt is cut, on the final message, the request id and
  every string of ``.body``;
* no error chains to an exception that holds a raw body or the request (whose
  headers hold the key): a pydantic ``ValidationError`` or a
  ``UnicodeDecodeError`` is not chained at all (its type and position are in
  the message), an httpx error is replaced by a fresh one of the same type
  carrying only the redacted message. The shells raise these errors outside
  their ``except`` blocks, so ``__context__`` holds nothing either.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import httpx
from pydantic import ValidationError

from .._exceptions import (
    APIConnectionError,
    APIError,
    APIResponseTooLargeError,
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
from .constants import ERROR_EXCERPT_CHARS, REQUEST_ID_CHARS
from .redact import Redactor

__all__ = [
    "decode_error",
    "describe",
    "detach",
    "excerpt",
    "request_id",
    "safe_url",
    "status_error",
    "status_error_class",
    "stream_cut_error",
    "stream_error",
    "timeout_error",
    "too_large_error",
    "transport_error",
    "validation_error",
    "visible",
]

_E = TypeVar("_E", bound=BaseException)

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


def visible(text: str) -> str:
    """``text`` with control and bidirectional-format characters shown as escapes.

    Server text ends up in logs and terminals: an ESC sequence could rewrite a
    terminal, a CR or NL forge a log line, a bidi override reorder what is read.
    """
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
        for c in text
    )


def excerpt(text: str, limit: int = ERROR_EXCERPT_CHARS) -> str:
    """``text`` with whitespace collapsed and control characters visible, cut to ``limit``."""
    text = visible(" ".join(text.split()))
    if len(text) > limit:
        return text[: limit - 3] + "..."
    return text


def request_id(response: httpx.Response, redact: Redactor) -> str | None:
    """The ``x-request-id`` header, redacted (proxies have echoed keys there) and cut."""
    value = response.headers.get("x-request-id")
    if value is None:
        return None
    return redact(excerpt(redact(value), REQUEST_ID_CHARS))


def detach(error: _E, cause: BaseException | None = None) -> _E:
    """``error`` chained to ``cause`` only (a sanitized one, or none); raise it outside ``except``."""
    error.__cause__ = cause
    error.__suppress_context__ = True
    return error


def validation_error(
    what: str,
    problems: str,
    raw: str,
    response: httpx.Response,
    redact: Redactor,
) -> APIResponseValidationError:
    """The error for a body (or stream event data ``raw``) that is not a valid ``what``.

    Args:
        problems: what is wrong, e.g. from :func:`describe` of a ValidationError.
    """
    shown = redact(excerpt(redact(raw)))
    message = (
        f"{response.status_code} answer from {safe_url(response.request.url)} is not a valid "
        f"{what} ({problems}); body: {shown!r}"
    )
    return detach(
        APIResponseValidationError(
            redact(message),
            status_code=response.status_code,
            request_id=request_id(response, redact),
        )
    )


def describe(exc: ValidationError) -> str:
    """The first problems of a pydantic error, without the input it quotes (a raw body)."""
    problems = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False)[:3]:
        loc = ".".join(str(x) for x in err["loc"])
        problems.append(f"{loc}: {err['msg']}" if loc else err["msg"])
    return excerpt("; ".join(problems), 2 * ERROR_EXCERPT_CHARS)


def decode_error(exc: UnicodeDecodeError, response: httpx.Response, redact: Redactor) -> APIError:
    """The error for a stream that is not valid UTF-8 (where, not the bytes around it)."""
    return detach(
        APIResponseValidationError(
            f"the stream from {safe_url(response.request.url)} is not valid UTF-8 "
            f"(UnicodeDecodeError: {exc.reason} at byte {exc.start} of a line)",
            status_code=response.status_code,
            request_id=request_id(response, redact),
        )
    )


def too_large_error(
    what: str, limit: int, response: httpx.Response, redact: Redactor
) -> APIResponseTooLargeError:
    """The error for an answer over a size limit; ``what`` says which one."""
    return detach(
        APIResponseTooLargeError(
            f"{what} from {safe_url(response.request.url)} is larger than {limit} bytes; "
            "reading stopped (raise the limit if this answer is legitimate)",
            limit=limit,
            status_code=response.status_code,
            request_id=request_id(response, redact),
        )
    )


def status_error(response: httpx.Response, content: bytes, redact: Redactor) -> APIStatusError:
    """The exception for an error status; ``content`` is the (possibly partial) body."""
    status = response.status_code
    # Decoded first: "sk\u002d..." in the raw JSON is "sk-..." here, and is masked.
    body = _decoded(content.decode("utf-8", "replace"), redact)
    detail = _error_detail(body)
    message = f"{status} {excerpt(response.reason_phrase, 60)}".rstrip()
    if detail:
        message = f"{message}: {detail}"
    rid = request_id(response, redact)
    if rid:
        message = f"{message} (request id {rid})"
    return detach(
        status_error_class(status)(redact(message), status_code=status, body=body, request_id=rid)
    )


def transport_error(
    exc: httpx.RequestError,
    request: httpx.Request,
    redact: Redactor,
    expired: str | None = None,
) -> APIError:
    """Translate an httpx failure, chained to a sanitized copy of it.

    Args:
        expired: which deadline had passed when ``exc`` was raised, if one had.
    """
    url = safe_url(request.url)
    name = type(exc).__name__
    detail = excerpt(redact(str(exc))) or name
    error: APIError
    if expired is not None:
        error = APITimeoutError(f"timeout on {request.method} {url}: {expired} ({name})")
    elif isinstance(exc, httpx.TimeoutException):
        kind = name.removesuffix("Timeout").lower() or "request"
        error = APITimeoutError(f"{kind} timeout on {request.method} {url} ({detail})")
    elif isinstance(exc, httpx.ConnectError):
        error = APIConnectionError(f"could not connect to {url}: {detail}")
    elif isinstance(exc, httpx.DecodingError):
        error = APIResponseValidationError(f"could not decode the answer of {url}: {detail}")
    else:
        error = APIConnectionError(f"connection error on {request.method} {url}: {name}: {detail}")
    error.message = redact(error.message)
    error.args = (error.message,)
    return detach(error, _sanitized(exc, detail))


def timeout_error(request: httpx.Request, expired: str) -> APITimeoutError:
    """A deadline that passed between two reads (no httpx error to translate)."""
    return detach(APITimeoutError(f"timeout on {request.method} {safe_url(request.url)}: {expired}"))


def _sanitized(exc: httpx.RequestError, message: str) -> httpx.RequestError:
    """A fresh ``type(exc)`` holding only ``message``: no request (headers), no chain."""
    try:
        clean = type(exc)(message)
    except TypeError:  # a subclass with another signature: keep the family
        clean = httpx.TransportError(message) if isinstance(exc, httpx.TransportError) else (
            httpx.RequestError(message)
        )
    clean.__cause__ = clean.__context__ = None
    clean.__traceback__ = None
    return clean


def stream_error(data: str, response: httpx.Response, redact: Redactor) -> APIStreamError:
    """The exception for an error event (``data`` is its text) inside a stream."""
    parsed = _decoded(data, redact)
    err = parsed.get("error", parsed) if isinstance(parsed, dict) else parsed
    detail = _error_detail({"error": err}) or "an error occurred during streaming"
    return detach(
        APIStreamError(
            redact(f"stream error from {safe_url(response.request.url)}: {detail}"),
            body=err,
            request_id=request_id(response, redact),
        )
    )


def stream_cut_error(response: httpx.Response, redact: Redactor) -> APIStreamError:
    """A stream whose body ended before the response was complete."""
    return detach(
        APIStreamError(
            f"stream from {safe_url(response.request.url)} ended before the response "
            "was complete (no finish reason, no [DONE])",
            request_id=request_id(response, redact),
        )
    )


def _decoded(text: str, redact: Redactor) -> Any:
    """``text`` as JSON if it is JSON, else the text; every string in it redacted."""
    if not text.strip():
        return None
    try:
        return redact.deep(json.loads(text))
    except (ValueError, RecursionError):  # not JSON, or nested deeper than Python recurses
        return redact(text)


def _dumps(value: Any) -> str:
    try:
        return excerpt(json.dumps(value))
    except (ValueError, TypeError, RecursionError):
        return "(JSON nested too deep to show)"


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
        return _dumps(body)
    if isinstance(body, str):
        return excerpt(body)
    return "" if body is None else _dumps(body)
