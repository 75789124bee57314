"""OpenAI's error object, as the fake backend answers it.

Every non-2xx answer of the fake has OpenAI's shape::

    {"error": {"message": "...", "type": "invalid_request_error", "param": null, "code": null}}

Texts follow what api.openai.com answers where it is known (collected from
public bug reports); the rest are close, clear ones in the same style.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

__all__ = ["ErrorReply", "default_error", "error_body", "invalid_url"]


class ErrorReply(Exception):
    """An error answer of the fake (raised inside the pure core, never to users).

    Attributes:
        status: the HTTP status.
        message, type, param, code: the fields of OpenAI's error object.
        headers: extra response headers.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> bytes:
        """The JSON body of this error."""
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(
    message: str, *, type: str, param: str | None = None, code: str | None = None
) -> bytes:
    """``{"error": {...}}`` as JSON bytes."""
    err = {"message": message, "type": type, "param": param, "code": code}
    return json.dumps({"error": err}, ensure_ascii=False).encode()


def invalid_url(method: str, path: str) -> ErrorReply:
    """OpenAI's answer to an unknown path or a wrong method: 404 ``Invalid URL``."""
    return ErrorReply(404, f"Invalid URL ({method} {path})")


_RATE_LIMIT = (
    "Rate limit reached for {model} in organization org-fake on requests per min (RPM): "
    "Limit 3, Used 3, Requested 1. Please try again in 20s. "
    "Visit https://platform.openai.com/account/rate-limits to learn more."
)

# status -> (message, type, code); "{model}" is filled with the request's model.
_DEFAULTS: dict[int, tuple[str, str, str | None]] = {
    400: ("Bad request (scripted by convo.testing).", "invalid_request_error", None),
    401: (
        (
            "Incorrect API key provided. You can find your API key at "
            "https://platform.openai.com/account/api-keys."
        ),
        "invalid_request_error",
        "invalid_api_key",
    ),
    403: ("You are not allowed to sample from this model.", "invalid_request_error", None),
    404: (
        "The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
    ),
    409: ("The request conflicts with another one in progress.", "invalid_request_error", None),
    422: ("The request could not be processed.", "invalid_request_error", None),
    429: (_RATE_LIMIT, "requests", "rate_limit_exceeded"),
    500: (
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    ),
    502: ("Bad gateway.", "server_error", None),
    503: ("The server is overloaded or not ready yet.", "server_error", None),
}


def default_error(status: int, *, model: str | None) -> tuple[str, str, str | None]:
    """The (message, type, code) the fake sends for a scripted failure with no body."""
    known = _DEFAULTS.get(status)
    if known is None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        return f"{phrase}.", "server_error" if status >= 500 else "invalid_request_error", None
    message, type_, code = known
    return message.replace("{model}", model or "the requested model"), type_, code


def describe_type(value: Any) -> str:
    """OpenAI's name for the JSON type of ``value`` in ``Invalid type`` errors."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
