"""What the store accepts: every argument and every value it writes is checked here first.

SQLite and PostgreSQL disagree about bad input, and neither says so clearly:
SQLite stores a NUL character or ``NaN`` in JSON (which its JSON functions
then call "malformed", breaking every later metadata filter), PostgreSQL
refuses both mid-statement; a float seq is stored as a float by one and
rounded by the other; a lone surrogate fails in the driver's encoder; an
integer beyond 64 bits overflows in the driver. So the store never lets a
database be the one to find out: a value either passes the checks below, the
same on both databases, or the call raises :class:`~convo.StoreInputError`
(a ``ValueError``) before any statement runs.

The rules:

* text: a ``str`` without NUL characters (PostgreSQL cannot store them) and
  without lone surrogates (no UTF-8 spelling exists); short columns hold at
  most 255 characters, encodings 64, a search string 10,000;
* integers (seq, limit, offset, at, after, before, ...): an ``int`` (or anything
  with ``__index__``, such as numpy integers), never a ``bool`` or a float,
  within signed 64 bits; limits are at least 1, offsets at least 0;
* JSON (metadata, usage, content parts, tool calls): objects with string
  keys, arrays, strings and numbers as above, finite floats only (no NaN or
  Infinity, which are not JSON), integers within signed 64 bits (SQLite's
  JSON functions read larger ones as inexact floats), nested at most 100 deep;
* datetimes: ``datetime`` values that can be expressed in UTC.

:func:`checked` applies the argument rules to a store plan by parameter name,
so every public plan checks all of its arguments and a plan cannot take an
argument that has no rule.
"""

from __future__ import annotations

import functools
import inspect
import math
import operator
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, AnyStr, Final, ParamSpec, TypeVar

import pydantic_core
from pydantic import ValidationError

from .._exceptions import StoreInputError
from .._records import ReplyInfo

__all__ = [
    "ENCODING_MAX",
    "INT32_MAX",
    "INT_MAX",
    "INT_MIN",
    "JSON_DEPTH_MAX",
    "SEARCH_MAX",
    "SHORT_TEXT_MAX",
    "CheckedJSON",
    "bad_index",
    "check_datetime",
    "check_int",
    "check_json",
    "check_short",
    "check_text",
    "check_values",
    "checked",
    "checked_json",
    "checked_json_text",
    "contains",
    "json_text",
]

SHORT_TEXT_MAX: Final = 255
"""Length limit of the short text columns (owner, name, tool_call_id, idempotency_key...)."""
ENCODING_MAX: Final = 64
"""Length limit of an encoding name (the ``message_tokens.encoding`` column)."""
SEARCH_MAX: Final = 10_000
"""Length limit of a search string: its LIKE pattern stays far below SQLite's 50,000 bytes."""
INT_MIN: Final = -(2**63)
INT_MAX: Final = 2**63 - 1
INT32_MAX: Final = 2**31 - 1
"""The largest value of an INTEGER column on PostgreSQL (token counts, seqs)."""
JSON_DEPTH_MAX: Final = 100


P = ParamSpec("P")
R = TypeVar("R")


# --- values ----------------------------------------------------------------------------


def bad_index(value: str) -> int:
    """Index of the first NUL (PostgreSQL text cannot hold it) or lone surrogate (no
    UTF-8 spelling) in ``value``, or -1. ASCII text, the common case, costs a memchr."""
    nul = value.find("\x00")
    if value.isascii():  # O(1): CPython keeps the flag
        return nul
    try:
        value.encode("utf-8")  # several times faster than a regex over wide text
    except UnicodeEncodeError as exc:
        return exc.start if nul < 0 else min(nul, exc.start)
    return nul


def check_text(value: Any, field: str, *, max_len: int | None = None) -> str:
    """``value`` if it is a storable string; raises :class:`StoreInputError` otherwise."""
    if type(value) is not str or not value.isascii() or "\x00" in value:
        # (most text, ASCII without a NUL, skips this: bad_index's -1 without the call)
        if not isinstance(value, str):
            raise StoreInputError(f"{field} must be a string, not {type(value).__name__}")
        bad = bad_index(value)
        if bad >= 0:
            if value[bad] == "\x00":
                why = "a NUL character, which PostgreSQL cannot store (refused on every database)"
            else:
                why = f"a lone surrogate ({value[bad]!r}), which has no UTF-8 encoding"
            raise StoreInputError(f"{field} contains {why}, at index {bad}")
    if max_len is not None and len(value) > max_len:
        raise StoreInputError(
            f"{field} is {len(value)} characters long; at most {max_len} are allowed"
        )
    return value


def check_short(value: str | None, field: str) -> None:
    """Refuse over-long short texts up front: PostgreSQL would reject them mid-write
    and SQLite would silently store them, so both databases behave alike."""
    if value is not None:
        check_text(value, field, max_len=SHORT_TEXT_MAX)


def check_int(value: Any, field: str, *, minimum: int = INT_MIN, maximum: int = INT_MAX) -> int:
    """``value`` as an ``int`` within ``minimum..maximum`` (default: signed 64 bits).

    A bool is refused although it is an int: ``at=True`` is a mistake, not seq 1.
    """
    if isinstance(value, bool):
        raise StoreInputError(f"{field} must be an integer, not a bool")
    try:
        number = operator.index(value)
    except TypeError:
        raise StoreInputError(
            f"{field} must be an integer, not {type(value).__name__} ({value!r:.40})"
        ) from None
    if not minimum <= number <= maximum:
        low = "-2**63" if minimum == INT_MIN else str(minimum)
        high = "2**63-1" if maximum == INT_MAX else str(maximum)
        raise StoreInputError(f"{field} must be between {low} and {high} (got {number})")
    return number


def check_datetime(value: Any, field: str) -> datetime:
    """A ``datetime`` that has a UTC equivalent (naive ones mean UTC)."""
    if not isinstance(value, datetime):
        raise StoreInputError(f"{field} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is not None:
        try:
            value.astimezone(UTC)
        except (OverflowError, ValueError) as exc:
            raise StoreInputError(f"{field} {value!r} has no UTC equivalent") from exc
    return value


def check_json(value: Any, field: str) -> Any:
    """A plain copy of ``value`` (dicts and lists) if it is storable JSON.

    Raises:
        StoreInputError: a value that is not JSON (NaN, Infinity, a set, a
            datetime, a non-string key...), text or integers the rules above
            refuse, or nesting deeper than :data:`JSON_DEPTH_MAX`.
    """
    return _json(value, field, [])


def _where(field: str, path: list[str | int]) -> str:
    where = field + "".join(f"[{p}]" if isinstance(p, int) else f".{p[:40]}" for p in path)
    return where if len(where) <= 120 else where[:60] + "..." + where[-57:]


def _json(value: Any, field: str, path: list[str | int]) -> Any:
    # ``path`` is a stack of keys and indexes, formatted only for an error message.
    # Exact types first (the common case, and cheap); then subclasses (str and
    # int enums...), stored as their plain value, as json.dumps would write them.
    kind = type(value)
    if kind is str:
        # (ASCII without a NUL, most text, is bad_index's -1: told without the call)
        if (not value.isascii() or "\x00" in value) and bad_index(value) >= 0:
            check_text(value, _where(field, path))
        return value
    if value is None or kind is bool:
        return value
    if kind is int:
        if not INT_MIN <= value <= INT_MAX:
            raise StoreInputError(
                f"{_where(field, path)} is an integer beyond 64 bits ({value}): "
                "store it as a string"
            )
        return value
    if kind is float:
        if value - value != 0.0:  # NaN or an infinity (cheaper than math.isfinite)
            raise StoreInputError(
                f"{_where(field, path)} is {value!r}, which is not a JSON number"
            )
        return value
    if kind is dict or kind is list:
        if len(path) >= JSON_DEPTH_MAX:
            raise StoreInputError(
                f"{_where(field, path)} is nested more than {JSON_DEPTH_MAX} levels deep"
            )
        if kind is list:
            items = []
            for i, item in enumerate(value):
                path.append(i)
                items.append(_json(item, field, path))
                path.pop()
            return items
        out = {}
        for key, item in value.items():
            if type(key) is not str:
                if not isinstance(key, str):
                    raise StoreInputError(
                        f"{_where(field, path)} must be a JSON object with string keys "
                        f"(got key {key!r:.40})"
                    )
                key = str.__str__(key)
            if (not key.isascii() or "\x00" in key) and bad_index(key) >= 0:
                check_text(key, f"a key of {_where(field, path)}")
            if type(item) is int and INT_MIN <= item <= INT_MAX:
                out[key] = item  # (a plain number, the common value: _json's answer inline)
                continue
            path.append(key)
            out[key] = _json(item, field, path)
            path.pop()
        return out
    # subclasses: normalized to the plain type, then checked as above
    if isinstance(value, bool):
        return bool(value)
    for base in (str, int, float):
        if isinstance(value, base):
            return _json(base(value) if base is not str else str.__str__(value), field, path)
    if isinstance(value, (dict, list)):
        return _json(dict(value) if isinstance(value, dict) else list(value), field, path)
    raise StoreInputError(f"{_where(field, path)} is not a JSON value (got {type(value).__name__})")


class CheckedJSON:
    """The JSON text of an object whose value passed :func:`check_json`.

    Only the text is kept, so the value cannot change after the check: the
    store writes the text as is and parses it for the value it returns (a
    fresh copy each time). Made by :func:`checked_json` (from a value, e.g. a
    context builder's settings, checked once for many runs) or
    :func:`checked_json_text` (from JSON text received, e.g. a model's answer).
    """

    __slots__ = ("_fresh", "text")

    def __init__(self, text: str, fresh: dict[str, Any] | None = None) -> None:
        self.text = text  # (checked by the functions that make one)
        self._fresh = fresh  # the parsed value, when the maker has it: handed out once

    def __repr__(self) -> str:
        return f"CheckedJSON({self.text[:60]!r})"

    def value(self) -> dict[str, Any]:
        """A fresh copy of the object (nobody else holds it)."""
        value = self._fresh
        if value is not None:
            self._fresh = None
            return value
        parsed: dict[str, Any] = pydantic_core.from_json(self.text)
        return parsed


def json_text(value: Any) -> str:
    """JSON text of a value :func:`check_json` returned (plain JSON types, finite floats,
    text without NUL or lone surrogates): ``to_json`` writes it as is, several times
    faster than ``json.dumps``."""
    return pydantic_core.to_json(value).decode()


def checked_json(value: Mapping[str, Any], field: str) -> CheckedJSON:
    """``value`` (a JSON object) checked by :func:`check_json`, as :class:`CheckedJSON`."""
    if not isinstance(value, Mapping):
        raise StoreInputError(f"{field} must be a JSON object (a dict), not {type(value).__name__}")
    return CheckedJSON(json_text(check_json(dict(value), field)))


#: What can make received JSON text unstorable although it parses: NaN and
#: infinities (a literal, or a float beyond range: a 3-digit exponent), integers
#: beyond 64 bits (19 digits or more), NUL and surrogate escapes, nesting beyond
#: JSON_DEPTH_MAX. The scan maps digits to "0", "E" to "e" and "+" to "-", then
#: looks for each of these as a plain substring (a regex over the text costs more
#: than the walk it saves). Text without any holds only values check_json accepts;
#: a find inside a string is a false alarm, which only costs the walk.
_SCAN = bytes.maketrans(b"0123456789E+", b"0000000000e-")
_SUSPECT = (b"0" * 19, b"e000", b"e-000", b"NaN", b"Infinity", b"\\u", b"\x00")


def _suspect(raw: bytes) -> bool:
    scanned = raw.translate(_SCAN)
    if scanned.count(b"{") + scanned.count(b"[") > JSON_DEPTH_MAX:
        return True
    # (find, not ``in``: bytes' ``in`` first tries its operand as an integer and
    # formats the TypeError it gets, a cost larger than the search itself)
    find = scanned.find
    for word in _SUSPECT:
        if find(word) >= 0:
            return True
    return False


#: occurrences of a word's first character looked at before :func:`contains` leaves
#: the rest of the text to the general search
_FIRST_TRIES = 16


def contains(text: AnyStr, word: AnyStr) -> bool:
    """``word in text``, found from the occurrences of the word's first character.

    A one-character search is a ``memchr``; CPython's general search skips
    ahead by the last character, which costs most when the word is made of
    common letters (``"NaN"`` in English text: several microseconds for 6 kB, a
    tenth of that when the text has no capital N). After a few occurrences of
    the first character, the general search takes the rest of the text.
    """
    first = word[:1]
    at = text.find(first)
    for _ in range(_FIRST_TRIES):
        if at < 0:
            return False
        if text.startswith(word, at):
            return True
        at = text.find(first, at + 1)
    return at >= 0 and text.find(word, at) >= 0


def checked_json_text(raw: bytes | str, field: str) -> CheckedJSON:
    """JSON text received (e.g. a model's answer) checked as :func:`check_json` checks
    its value: the text is kept as it came.

    A scan of the text stands in for walking the value when it finds nothing
    suspect (see ``_SCAN``); otherwise the parsed value is walked.

    Raises:
        StoreInputError: not UTF-8 JSON text of an object, or a value
            :func:`check_json` refuses.
    """
    try:
        if isinstance(raw, bytes):
            data, text = raw, raw.decode()
        else:
            data, text = raw.encode(), raw
        value = pydantic_core.from_json(data)
    except ValueError:  # (UnicodeError is one)
        raise StoreInputError(f"{field} is not UTF-8 JSON text") from None
    if type(value) is not dict:
        raise StoreInputError(f"{field} must be a JSON object")
    if _suspect(data):
        check_json(value, field)  # raises what it finds
    return CheckedJSON(text, value)


def check_values(values: Mapping[str, Any], what: str) -> None:
    """Check every column value of a row about to be written, by its Python type.

    The one check on the write path: whatever a plan writes (a message, a
    conversation, a summary) passes here, so a new column cannot skip it.
    Runs on every append, so the common cases (None, plain str) come first.
    """
    for column, value in values.items():
        if value is None or value is True or value is False:
            continue
        kind = type(value)
        if kind is str:
            # (ASCII without a NUL, most text, is bad_index's -1: told without the call)
            if (not value.isascii() or "\x00" in value) and bad_index(value) >= 0:
                check_text(value, f"{what} {column}")
        elif kind is int:
            if not INT_MIN <= value <= INT_MAX:
                check_int(value, f"{what} {column}")  # (raises)
        elif kind is dict or kind is list:
            _json(value, f"{what} {column}", [])
        elif isinstance(value, str):
            check_text(value, f"{what} {column}")
        elif isinstance(value, int) and not isinstance(value, bool):
            check_int(value, f"{what} {column}")
        elif isinstance(value, float) and not math.isfinite(value):
            raise StoreInputError(f"{what} {column} is {value!r}, which cannot be stored alike")


# --- arguments --------------------------------------------------------------------------


def _any(value: Any, name: str) -> Any:
    return value


def _or_unset(check: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    def or_unset(value: Any, name: str) -> Any:
        from .core import UNSET  # the sentinel lives with the plans (imported by then)

        return value if value is UNSET else check(value, name)

    return or_unset


def _text(value: Any, name: str) -> str:
    return check_text(value, name)


def _short(value: Any, name: str) -> str:
    return check_text(value, name, max_len=SHORT_TEXT_MAX)


def _encoding(value: Any, name: str) -> str:
    return check_text(value, name, max_len=ENCODING_MAX)


def _search(value: Any, name: str) -> str:
    return check_text(value, "search text", max_len=SEARCH_MAX)


def _int(value: Any, name: str) -> int:
    return check_int(value, name)


def _limit(value: Any, name: str) -> int:
    return check_int(value, name, minimum=1)


def _offset(value: Any, name: str) -> int:
    return check_int(value, name, minimum=0)


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise StoreInputError(f"{name} must be True or False, not {type(value).__name__}")
    return value


def _json_object(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise StoreInputError(f"{name} must be a JSON object (a dict), not {type(value).__name__}")
    return check_json(dict(value), name)  # type: ignore[no-any-return]


def _reply(value: Any, name: str) -> ReplyInfo:
    if isinstance(value, ReplyInfo):
        return value
    if isinstance(value, Mapping):
        try:
            return ReplyInfo.model_validate(dict(value))
        except ValidationError as exc:
            raise StoreInputError(f"reply is not a valid ReplyInfo: {exc}") from exc
    raise StoreInputError(f"reply must be a ReplyInfo, not {type(value).__name__}")


def _lineage(value: Any, name: str) -> Any:
    from .core import Lineage  # the plans' own value (imported by then)

    if not isinstance(value, Lineage):
        raise StoreInputError("lineage must be what context_open read in the same build")
    return value


def _cursor(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise StoreInputError("cursor must be a string: a next_cursor returned by list_conversations")
    return value


#: The rule of each store argument, by parameter name (see :func:`checked`).
#: Messages, message lists, token counts and cursors are checked in full by
#: the plans themselves (they need parsing); here only their outer type.
ARGUMENTS: dict[str, Callable[[Any, str], Any]] = {
    "conversation_id": _text,
    "owner": _short,
    "title": _or_unset(_text),
    "metadata": _or_unset(_json_object),
    "message": _any,
    "messages": _any,
    "idempotency_key": _short,
    "pinned": _bool,
    "value": _bool,
    "reply": _reply,
    "seq": _int,
    "at": _int,
    "after": _int,
    "before": _int,
    "start_seq": _int,
    "end_seq": _int,
    "up_to_seq": _int,
    "limit": _limit,
    "offset": _offset,
    "newest_first": _bool,
    "cascade_forks": _bool,
    "text": _search,
    "content": _text,
    "encoding": _encoding,
    "counts": _any,
    "cursor": _cursor,
    "lineage": _lineage,
    "created_after": check_datetime,
    "created_before": check_datetime,
    "updated_after": check_datetime,
    "updated_before": check_datetime,
    "dialect": _any,  # the shell's own, not the caller's
    "lean": _bool,  # a builder's own (a turn's build), not the caller's
}

_NONE = re.compile(r"\bNone\b")
#: The text rules, by their length limit: what :func:`checked` writes out a shortcut for.
_TEXT_RULES: dict[Callable[[Any, str], Any], int | None] = {
    _text: None, _short: SHORT_TEXT_MAX, _encoding: ENCODING_MAX,
}


def checked(plan: Callable[P, R]) -> Callable[P, R]:
    """Check the arguments of a store plan by name, when the plan is called.

    Each parameter gets the rule of its name in :data:`ARGUMENTS`; one whose
    annotation admits None (``int | None``) also accepts None. Raises at import
    time if a parameter has no rule, so a plan cannot grow an unchecked
    argument. The plan receives the checked values (``numpy.int64(3)`` arrives
    as ``3``).

    The checking function is written out for the plan's own signature (as
    :mod:`dataclasses` writes ``__init__``): one line per checked parameter, no
    loop or lookup per call (every store call goes through it). So it binds its
    arguments as the plan does: a missing, unknown or repeated argument is the
    plan's ``TypeError``.
    """
    params = inspect.signature(plan).parameters
    missing = [n for n in params if n not in ARGUMENTS]
    if missing:
        raise TypeError(f"{plan.__name__}: no input rule for {', '.join(missing)}")
    namespace: dict[str, Any] = {"plan": plan}
    signature: list[str] = []
    call: list[str] = []
    body: list[str] = []
    star = False
    for name, p in params.items():
        if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            raise TypeError(f"{plan.__name__}: {name} must be a named parameter")
        if p.kind is p.KEYWORD_ONLY and not star:
            signature.append("*")
            star = True
        if p.default is p.empty:
            signature.append(name)
        else:
            namespace[f"d_{name}"] = p.default
            signature.append(f"{name}=d_{name}")
        call.append(name if p.kind is p.POSITIONAL_OR_KEYWORD else f"{name}={name}")
        rule = ARGUMENTS[name]
        if rule is _any:  # nothing to check
            continue
        namespace[f"r_{name}"] = rule
        check = f"{name} = r_{name}({name}, {name!r})"
        # None passes unchecked; text a rule would return as it is (ASCII without
        # NUL, short enough) skips the call (a conversation id, on every call)
        skip = [f"{name} is None"] if _NONE.search(str(p.annotation)) else []
        if rule in _TEXT_RULES:
            limit = _TEXT_RULES[rule]
            skip.append(
                f"(type({name}) is str and {name}.isascii() and '\\x00' not in {name}"
                + (f" and len({name}) <= {limit})" if limit is not None else ")")
            )
        if skip:
            check = f"if not ({' or '.join(skip)}): {check}"
        body.append(f"    {check}\n")
    source = (
        f"def run({', '.join(signature)}):\n{''.join(body)}"
        f"    return plan({', '.join(call)})\n"
    )
    exec(source, namespace)  # noqa: S102 - generated from the plan's parameter names only
    run: Callable[P, R] = functools.wraps(plan)(namespace["run"])
    return run
