"""The one exception hierarchy of convo.

Every error convo raises on purpose derives from :class:`ConvoError`::

    ConvoError
    ├── ConfigurationError            bad settings: database URL, API key, model registry entry
    ├── InvalidMessageError           a message (or list) that breaks OpenAI's rules  (also ValueError)
    ├── StoreError                    the SQL store
    │   ├── NotMigratedError          no, an older or a newer convo schema: run `convo db upgrade` / upgrade convo
    │   ├── ConversationNotFound      no such conversation (or not visible to this owner)  (also KeyError)
    │   ├── MessageNotFound           no such message in the conversation  (also KeyError)
    │   ├── RunNotFound               no such run record (or not visible to this owner)  (also KeyError)
    │   ├── ReplayNotFound            no such replay (or not visible to this owner)  (also KeyError)
    │   ├── ForkConflictError         an operation that would orphan or break a fork lineage
    │   ├── ReadOnlyStoreError        a write through a read replica's store (or the database refused it as read-only)
    │   ├── StoredDataError           a stored row convo cannot read (changed outside convo, or damaged): fix or delete it
    │   └── StoreInputError           refused before any write: non-JSON (NaN) values, NUL/surrogates, bad ints or cursors  (also ValueError)
    │       └── ImportValidationError an import file with errors (``.errors``: line numbers); nothing written
    ├── TokenizerError
    │   ├── UnknownModelError         a model name that maps to no encoding: pass `encoding=`
    │   └── EncodingUnavailableError  an encoding whose data cannot be loaded offline or online
    ├── TurnCancelled                 a streamed turn was closed before it finished (its run: cancelled)
    ├── ContextError                  building a context
    │   ├── ContextOverflowError      what must be kept does not fit: carries the numbers
    │   └── TemplateError             a chat template that fails to load or render
    └── APIError                      talking to an OpenAI-compatible server (remote failures)
        ├── APIConnectionError        could not connect / connection dropped
        │   └── APITimeoutError
        ├── APIResponseValidationError  the server answered something that is not the API's format
        ├── APIResponseTooLargeError  an answer over the client's size limits (body, stream, SSE event)
        ├── APIStreamError            an SSE stream that reported an error or broke midway
        └── APIStatusError            a 4xx/5xx answer; `.status_code`, `.body`, `.request_id`
            ├── BadRequestError              400
            ├── AuthenticationError          401
            ├── PermissionDeniedError        403
            ├── NotFoundError                404
            ├── ConflictError                409
            ├── UnprocessableEntityError     422
            ├── RateLimitError               429
            └── InternalServerError          >= 500

Caller mistakes (configuration, invalid messages, overflow) are separate from
remote failures (``APIError``), so a backend can map the first to HTTP 4xx
and the second to 502/503.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseTooLargeError",
    "APIResponseValidationError",
    "APIStatusError",
    "APIStreamError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConfigurationError",
    "ConflictError",
    "ContextError",
    "ContextOverflowError",
    "ConversationNotFound",
    "ConvoError",
    "EncodingUnavailableError",
    "ForkConflictError",
    "ImportValidationError",
    "InternalServerError",
    "InvalidMessageError",
    "MessageNotFound",
    "NotFoundError",
    "NotMigratedError",
    "PermissionDeniedError",
    "RateLimitError",
    "ReadOnlyStoreError",
    "ReplayNotFound",
    "RunNotFound",
    "StoreError",
    "StoreInputError",
    "StoredDataError",
    "TemplateError",
    "TokenizerError",
    "TurnCancelled",
    "UnknownModelError",
    "UnprocessableEntityError",
]


class ConvoError(Exception):
    """Base class of every error convo raises on purpose."""


class ConfigurationError(ConvoError):
    """Invalid configuration: a database URL, an API key, a registry entry, a request option."""


class InvalidMessageError(ConvoError, ValueError):
    """A message or message list that breaks the rules of OpenAI's chat format."""


# --- store -----------------------------------------------------------------


class StoreError(ConvoError):
    """Base class of errors raised by the SQL store."""


class NotMigratedError(StoreError):
    """The database has no convo schema, an older one than this convo needs, or a newer one.

    Attributes:
        revision: the database's schema revision (None when it has no convo schema).
        newer: True when a newer convo migrated the database (its revision is
            unknown here): upgrade convo, not the database.
        replica: True when the database is a store's read replica (``read_url``):
            migrate its primary, not the replica.
    """

    def __init__(
        self,
        message: str,
        *,
        revision: str | None = None,
        newer: bool = False,
        replica: bool = False,
    ) -> None:
        super().__init__(message)
        self.revision = revision
        self.newer = newer
        self.replica = replica


class ReadOnlyStoreError(StoreError):
    """A write through a read-only store (a store's ``reader`` on its read replica),
    refused before anything was written; or a write the database refused because
    it is read-only (a hot standby, a read-only transaction)."""


class ConversationNotFound(StoreError, KeyError):
    """No conversation with this id (or none that the given owner may see)."""

    def __init__(self, conversation_id: str, *, owner: str | None = None) -> None:
        self.conversation_id = conversation_id
        self.owner = owner
        scope = f" for owner {owner!r}" if owner is not None else ""
        super().__init__(f"conversation {conversation_id!r} not found{scope}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class MessageNotFound(StoreError, KeyError):
    """No message with this sequence number (or id) in the conversation."""

    def __str__(self) -> str:
        return str(self.args[0])


class RunNotFound(StoreError, KeyError):
    """No run record with this id (or none that the given owner may see)."""

    def __str__(self) -> str:
        return str(self.args[0])


class ReplayNotFound(StoreError, KeyError):
    """No replay with this id (or none that the given owner may see)."""

    def __str__(self) -> str:
        return str(self.args[0])


class ForkConflictError(StoreError):
    """An operation that would break a fork lineage (e.g. deleting a parent of live forks)."""


class StoredDataError(StoreError):
    """A stored row that convo cannot read: it was changed outside convo, or is damaged.

    Raised where a row becomes a value (a message, a conversation, a summary, a
    run), on every read path: a timestamp that is not one, JSON text that is not
    JSON or not the shape convo writes, a role outside the known ones. Nothing
    was written by the call that raised it. Fix or delete the row.

    The message names the table, the conversation, the row's seq (or id) and the
    column when they are known, and the type of the stored value, never the value
    itself (a damaged row may hold anything, a secret included).

    Attributes:
        table: the table of the row (``"messages"``, ``"conversations"``, ...).
        column: the column that cannot be read, when known.
        conversation_id: the row's conversation, when known.
        seq: the message's seq, when known; ``row_id``: the row's id, when known.
    """

    def __init__(
        self,
        table: str,
        column: str | None = None,
        *,
        conversation_id: str | None = None,
        seq: int | None = None,
        row_id: Any = None,
        value_type: str | None = None,
        problem: str | None = None,
    ) -> None:
        self.table = table
        self.column = column
        self.conversation_id = conversation_id
        self.seq = seq
        self.row_id = row_id
        where = []
        if conversation_id is not None:
            where.append(f"conversation {conversation_id!r}")
        if seq is not None:
            where.append(f"seq {seq}")
        elif row_id is not None:
            where.append(f"id {row_id!r}")
        at = f" ({', '.join(where)})" if where else ""
        what = f"its column {column!r}" if column is not None else "one of its columns"
        held = f"a {value_type}" if value_type is not None else "a value"
        why = f" ({problem})" if problem else ""
        super().__init__(
            f"a row of {table}{at} cannot be read: {what} holds {held} that convo cannot"
            f" read{why}; the row was changed outside convo or is damaged: fix or delete it"
        )


class StoreInputError(StoreError, ValueError):
    """An argument or value the store refuses, before writing anything, alike on every database.

    Non-JSON values (NaN, Infinity, sets, integers beyond 64 bits), text with NUL
    characters or lone surrogates, a seq or limit that is not an int (or a bool,
    or out of range), a crafted cursor, an over-long short text or search string.
    """


class ImportValidationError(StoreInputError):
    """An import file that cannot be imported; nothing was written.

    ``errors`` lists ``(line number, message)`` pairs, 1-based, in file order
    (line 0: the file as a whole). Validation stops after a bounded number of
    errors, so a wholly wrong file still fails fast.
    """

    def __init__(self, errors: list[tuple[int, str]], *, more: bool = False) -> None:
        self.errors = errors
        shown = "\n".join(
            f"  line {line}: {message}" if line else f"  {message}" for line, message in errors[:20]
        )
        rest = len(errors) - 20
        tail = f"\n  ... {rest} more" if rest > 0 else ""
        if more:
            tail += "\n  (validation stopped here: too many errors)"
        count = f"{len(errors)}{'+' if more else ''} error{'s' if len(errors) != 1 else ''}"
        super().__init__(f"the import file has {count}; nothing was written:\n{shown}{tail}")


class TurnCancelled(ConvoError):
    """A turn stopped before it finished: a stream closed early, or an interrupt.

    The user message stays stored and the run is recorded as ``cancelled``;
    sending again (with the same idempotency key) completes the turn.
    """


# --- tokens ----------------------------------------------------------------


class TokenizerError(ConvoError):
    """Base class of token-counting errors. convo never guesses a count silently."""


class UnknownModelError(TokenizerError):
    """A model name that maps to no known tokenizer encoding."""


class EncodingUnavailableError(TokenizerError):
    """The data of a tokenizer encoding cannot be loaded (offline, no cache, no package)."""


# --- context ---------------------------------------------------------------


class ContextError(ConvoError):
    """Base class of errors raised while building a context."""


class ContextOverflowError(ContextError):
    """What must be kept (system prompt, pinned messages, newest user message) exceeds the budget.

    Attributes:
        budget: the prompt token budget of the build.
        required: tokens that the messages which must be kept need.
        part: which part did not fit (``"system"``, ``"pinned"``, ``"newest"``, ``"budget"``).
    """

    def __init__(self, message: str, *, budget: int, required: int, part: str) -> None:
        super().__init__(message)
        self.budget = budget
        self.required = required
        self.part = part


class TemplateError(ContextError):
    """A chat template that cannot be loaded or rendered."""


# --- remote API --------------------------------------------------------------


class APIError(ConvoError):
    """Base class of failures while talking to an OpenAI-compatible server."""

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id


class APIConnectionError(APIError):
    """The server could not be reached, or the connection broke."""


class APITimeoutError(APIConnectionError):
    """The request timed out."""


class APIResponseValidationError(APIError):
    """The server's answer is not in the API's format (invalid JSON, wrong shape)."""

    def __init__(
        self, message: str, *, status_code: int | None = None, request_id: str | None = None
    ) -> None:
        super().__init__(message, request_id=request_id)
        self.status_code = status_code


class APIResponseTooLargeError(APIError):
    """The server's answer is larger than a limit of the client.

    The limits are ``max_response_bytes`` (a body, or a whole stream) and
    ``max_event_bytes`` (one server-sent event or line); reading stops there.

    Attributes:
        limit: the limit that was exceeded, in bytes.
        status_code: the HTTP status of the answer.
    """

    def __init__(
        self,
        message: str,
        *,
        limit: int,
        status_code: int | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, request_id=request_id)
        self.limit = limit
        self.status_code = status_code


class APIStreamError(APIError):
    """A streamed response reported an error event or ended before it was complete."""

    def __init__(
        self, message: str, *, body: Any = None, request_id: str | None = None
    ) -> None:
        super().__init__(message, request_id=request_id)
        self.body = body


class APIStatusError(APIError):
    """The server answered with a 4xx or 5xx status.

    Attributes:
        status_code: the HTTP status.
        body: the decoded JSON body (OpenAI's ``{"error": {...}}``) or the raw text.
        request_id: the ``x-request-id`` header, when the server sent one.
        code, type, param: fields of OpenAI's error object, when present.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        body: Any = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, request_id=request_id)
        self.status_code = status_code
        self.body = body
        err = body.get("error") if isinstance(body, dict) else None
        err = err if isinstance(err, dict) else {}
        self.code: str | None = err.get("code")
        self.type: str | None = err.get("type")
        self.param: str | None = err.get("param")


class BadRequestError(APIStatusError):
    """400"""


class AuthenticationError(APIStatusError):
    """401"""


class PermissionDeniedError(APIStatusError):
    """403"""


class NotFoundError(APIStatusError):
    """404"""


class ConflictError(APIStatusError):
    """409"""


class UnprocessableEntityError(APIStatusError):
    """422"""


class RateLimitError(APIStatusError):
    """429"""


class InternalServerError(APIStatusError):
    """>= 500"""
