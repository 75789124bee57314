"""The sandbox chat templates run in: transformers' Jinja dialect, with bounds.

A chat template is code from a model repository. It runs in jinja2's
``ImmutableSandboxedEnvironment`` (no attribute starting with ``_``, no
mutation of lists and dicts), configured as transformers configures it
(``trim_blocks``, ``lstrip_blocks``, ``loopcontrols``, the ``{% generation %}``
tag, a ``tojson`` that keeps non-ASCII text, ``raise_exception``,
``strftime_now``, ``dict`` and a ``namespace`` that refuses underscore names).

The sandbox alone bounds neither time nor memory: two nested
``range(100000)`` loops run 10^10 iterations, ``'x' * 300000000`` makes a
300 MB string. Every render here therefore runs under a :class:`RenderLimits`:

* a **time limit**, checked at every loop iteration (each ``{% for %}`` of a
  template is rewritten at compile time to iterate through a guard), every
  call, attribute and item access, filter and operator;
* a **size limit** on the prompt and on every intermediate value: ``*``,
  ``+`` and ``%`` are intercepted and refused *before* they would build a
  string or list over the limit, ``**`` before it builds a huge integer;
  call and filter arguments that are integers over the limit (``center``,
  ``indent``, ``ljust`` widths) are refused, ``join`` and ``replace`` are
  checked before they run; every result of a call, filter and operator, every
  macro or ``{% set %}`` block and the output itself are checked after.

Both raise :class:`RenderLimitError`, which the template classes turn into
:class:`~convo.TemplateError`. The checks are cooperative: one C-level
operation that is already running (a sort of a bounded list...) is not
interrupted, which is why sizes are bounded before such operations start.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2

__all__ = [
    "DEFAULT_MAX_PROMPT_CHARS",
    "DEFAULT_RENDER_TIMEOUT",
    "Compiled",
    "RenderLimitError",
    "RenderLimits",
    "compiled",
    "render_bounded",
]

DEFAULT_RENDER_TIMEOUT = 10.0
"""Seconds one render of a Jinja chat template may take."""

DEFAULT_MAX_PROMPT_CHARS = 16_000_000
"""Characters a rendered prompt (and any string or list a template builds) may hold.

Sixteen million characters is four times what the largest context windows
(about a million tokens) take; anything longer is a runaway template.
"""

# Integers past this many bits are refused as results of ** and *: a prompt
# cannot print them anyway (Python refuses int -> str past 4300 digits), and
# computing them can take minutes.
_MAX_INT_BITS = 1 << 16
# How many guard checks pass between two reads of the clock.
_CLOCK_EVERY = 64


class RenderLimitError(Exception):
    """A template went past its time or size limit (turned into TemplateError by the caller)."""


@dataclass(frozen=True, slots=True)
class RenderLimits:
    """Bounds on one render.

    Attributes:
        timeout: seconds; ``None`` for no time limit.
        max_chars: characters of the prompt and of any intermediate string
            (or items of a list); ``None`` for no size limit.
    """

    timeout: float | None = DEFAULT_RENDER_TIMEOUT
    max_chars: int | None = DEFAULT_MAX_PROMPT_CHARS


class _Budget:
    __slots__ = ("deadline", "limits", "max_chars", "ticks")

    def __init__(self, limits: RenderLimits) -> None:
        self.limits = limits
        self.max_chars = limits.max_chars
        self.deadline = time.monotonic() + limits.timeout if limits.timeout is not None else None
        self.ticks = 0


# The render in progress (renders of one compiled template may run in many
# threads or tasks at once, so the budget cannot live on the template).
# Outside a render (constant folding at compile time) the default size limit applies.
_BUDGET: ContextVar[_Budget | None] = ContextVar("convo_template_budget", default=None)
_DEFAULT_BUDGET = _Budget(RenderLimits(timeout=None))


def _max_chars() -> int | None:
    return (_BUDGET.get() or _DEFAULT_BUDGET).max_chars


def _tick() -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.ticks += 1
        if not budget.ticks % _CLOCK_EVERY:
            _check_clock(budget)


def _check_clock(budget: _Budget) -> None:
    if budget.deadline is not None and time.monotonic() > budget.deadline:
        raise RenderLimitError(
            f"rendering took longer than {budget.limits.timeout:g} s (the render_timeout limit)"
        )


def _too_big(size: int, what: str) -> None:
    limit = _max_chars()
    if limit is not None and size > limit:
        raise _over(size, what, limit)


def _over(size: int, what: str, limit: int) -> RenderLimitError:
    return RenderLimitError(
        f"{what} would hold {size:,} characters (or items), over the "
        f"max_prompt_chars limit of {limit:,}"
    )


def _check_result(value: Any) -> Any:
    # (called on every call, filter and operator result: keep the common path short)
    if isinstance(value, (str, list, tuple, dict)):
        limit = _max_chars()
        if limit is not None and len(value) > limit:
            raise _over(len(value), f"a {type(value).__name__}", limit)
    elif type(value) is int and value.bit_length() > _MAX_INT_BITS:
        raise RenderLimitError(f"an integer of {value.bit_length():,} bits is too large")
    return value


def _check_args(args: Iterable[Any], kwargs: dict[str, Any]) -> None:
    # Widths and counts (center, ljust, indent, wordwrap, zfill...) above the
    # size limit can only build something over it.
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool):
            _too_big(abs(value), "a width or count argument")


_DIGITS = re.compile(r"\d+")


def _check_format(fmt: Any) -> None:
    # "%999999999d" % 1 and "{:999999999}".format(1) build huge strings.
    if isinstance(fmt, str) and ("%" in fmt or "{" in fmt):
        for digits in _DIGITS.findall(fmt):
            if len(digits) > 18:
                _too_big(10**18, "a format width")
            _too_big(int(digits), "a format width")


def _sized(value: Any) -> int:
    return len(value) if isinstance(value, (str, list, tuple, dict)) else 0


def _check_join(separator: Any, items: Any) -> Any:
    """The items to join, as a list (a range or generator is read once, here), checked."""
    if isinstance(items, (str, dict)) or not isinstance(items, Iterable):
        return items
    items = items if isinstance(items, (list, tuple)) else list(items)
    sep = len(separator) if isinstance(separator, str) else 0
    size = sum(len(x) if isinstance(x, str) else len(str(x)) for x in items)
    _too_big(sep * max(len(items) - 1, 0) + size, "a joined string")
    return items


def _check_replace(text: Any, old: Any, new: Any, count: Any = -1) -> None:
    if isinstance(text, str) and isinstance(old, str) and isinstance(new, str):
        hits = text.count(old) if old else len(text) + 1
        if isinstance(count, int) and count >= 0:
            hits = min(hits, count)
        _too_big(len(text) + hits * max(len(new) - len(old), 0), "a replaced string")


def _check_binop(operator: str, left: Any, right: Any) -> None:
    seq_types = (str, list, tuple)
    if operator == "*":
        for seq, n in ((left, right), (right, left)):
            if isinstance(seq, seq_types) and isinstance(n, int):
                _too_big(len(seq) * max(n, 0), "a repeated string or list")
        ints = isinstance(left, int) and isinstance(right, int)
        if ints and left.bit_length() + right.bit_length() > _MAX_INT_BITS:
            raise RenderLimitError("an integer product is too large")
    elif operator == "**":
        ints = isinstance(left, int) and isinstance(right, int)
        if ints and right > 0 and max(left.bit_length(), 1) * right > _MAX_INT_BITS:
            raise RenderLimitError("an integer power is too large")
    elif operator == "+":
        if isinstance(left, seq_types) and isinstance(right, seq_types):
            _too_big(len(left) + len(right), "a concatenation")
    elif operator == "%":
        _check_format(left)


def _guard_iter(iterable: Any) -> Iterator[Any]:
    """What every ``{% for %}`` loop iterates through: the time limit, per item."""
    for item in iterable:
        _tick()
        yield item


def _guard_filter(name: str, f: Callable[..., Any]) -> Callable[..., Any]:
    # Filters marked pass_context / pass_eval_context / pass_environment get
    # that object first; the value and the filter's arguments follow.
    skip = 1 if getattr(f, "jinja_pass_arg", None) is not None else 0

    @functools.wraps(f)  # keeps the pass_* mark, which jinja2 reads
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _tick()
        _check_args(args, kwargs)
        if name == "join" and len(args) > skip:
            # a generator can be read only once: check and pass on the same list
            items = _check_join(_join_separator(args[skip + 1 :], kwargs), args[skip])
            args = (*args[:skip], items, *args[skip + 1 :])
        elif len(args) > skip:
            _check_filter(name, args[skip:], kwargs)
        return _check_result(f(*args, **kwargs))

    return guarded


def _join_separator(rest: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return rest[0] if rest else kwargs.get("d", "")


def _check_filter(name: str, values: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Size checks for the built-in filters that can grow text past their input."""
    value, rest = values[0], values[1:]
    if name == "replace" and len(rest) >= 2:
        _check_replace(value, *rest[:3])
    elif name == "format":
        _check_format(value)
    elif name == "indent" and isinstance(value, str):
        width = rest[0] if rest else kwargs.get("width", 4)
        per_line = width if isinstance(width, int) else _sized(width)
        _too_big(len(value) + per_line * (value.count("\n") + 1), "an indented string")


@dataclass(frozen=True, slots=True)
class Compiled:
    """A compiled template and what its source says.

    Attributes:
        template: the jinja2 template.
        literals: every string the source holds (template text and string
            constants), for control strings the template may write.
        parsed: string constants the template *reads* message text with
            (``split``, ``startswith``, ``in``, ``replace``...), such as the
            ``'</think>'`` of reasoning templates.
    """

    template: jinja2.Template
    literals: tuple[str, ...]
    parsed: tuple[str, ...]


_READERS = frozenset(
    {
        "split", "rsplit", "partition", "rpartition", "startswith", "endswith",
        "find", "rfind", "index", "rindex", "count", "replace", "strip", "lstrip", "rstrip",
        "removeprefix", "removesuffix",
    }
)  # fmt: skip


@lru_cache(maxsize=128)
def compiled(source: str) -> Compiled:
    """``source`` compiled once: loops guarded, literals and parsed strings collected.

    Raises:
        jinja2.TemplateSyntaxError: the source does not parse.
    """
    from jinja2 import nodes

    env = _environment()
    tree = env.parse(source)
    literals: list[str] = []
    parsed: list[str] = []
    for data in tree.find_all(nodes.TemplateData):
        literals.append(data.data)
    for const in tree.find_all(nodes.Const):
        if isinstance(const.value, str):
            literals.append(const.value)
    for call in tree.find_all(nodes.Call):
        if isinstance(call.node, nodes.Getattr) and call.node.attr in _READERS:
            parsed.extend(
                a.value for a in call.args if isinstance(a, nodes.Const) and _const_str(a)
            )
    for compare in tree.find_all(nodes.Compare):
        expr = compare.expr
        reads = any(op.op in ("in", "notin") for op in compare.ops)
        if reads and isinstance(expr, nodes.Const) and isinstance(expr.value, str):
            parsed.append(expr.value)
    for flt in tree.find_all(nodes.Filter):
        if flt.name in ("replace",):
            parsed.extend(a.value for a in flt.args if isinstance(a, nodes.Const) and _const_str(a))
    for loop in tree.find_all(nodes.For):
        # Every loop iterates through the guard, which the template cannot
        # shadow (an environment attribute, not a variable).
        guard = nodes.EnvironmentAttribute("convo_guard_iter")
        loop.iter = nodes.Call(guard, [loop.iter], [], None, None)
        loop.iter.set_lineno(loop.lineno).set_environment(env)
    return Compiled(
        env.from_string(tree), tuple(dict.fromkeys(literals)), tuple(dict.fromkeys(parsed))
    )


def _const_str(node: Any) -> bool:
    return isinstance(getattr(node, "value", None), str)


def render_bounded(template: jinja2.Template, context: dict[str, Any], limits: RenderLimits) -> str:
    """``template`` rendered with ``context``, within ``limits``.

    Raises:
        RenderLimitError: a limit was exceeded.
        Exception: whatever the template raised.
    """
    token = _BUDGET.set(_Budget(limits))
    limit = limits.max_chars
    try:
        parts: list[str] = []
        total = 0
        for chunk in template.generate(**context):
            total += len(chunk)
            if limit is not None and total > limit:
                raise _over(total, "the prompt", limit)
            parts.append(chunk)
        return "".join(parts)
    finally:
        _BUDGET.reset(token)


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    # jinja2 costs ~35 ms to import: only callers of Jinja templates pay it.
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    import jinja2.parser
    import jinja2.utils
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(jinja2.ext.Extension):
        """``{% generation %}…{% endgeneration %}`` renders its body (transformers marks assistant text with it)."""

        tags = {"generation"}  # noqa: RUF012 - jinja2 declares it this way

        def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            call = self.call_method("_body")
            return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return str(caller())

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(
        x: Any,
        ensure_ascii: bool = False,
        indent: int | str | None = None,
        separators: tuple[str, str] | None = None,
        sort_keys: bool = False,
    ) -> str:
        # Jinja's own tojson escapes HTML characters; transformers' keeps text as is.
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def strftime_now(format: str) -> str:
        return datetime.now().strftime(format)

    class TemplateDict:
        # `dict(...)` and `dict.fromkeys(...)` without handing templates the type itself.
        def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
            return dict(*args, **kwargs)

        def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        # Underscore names could reach CPython internals; transformers refuses them too.
        def __init__(*args: Any, **kwargs: Any) -> None:  # self in *args, as Namespace does
            self, rest = args[0], args[1:]
            attrs = dict(*rest, **kwargs)
            for key in attrs:
                TemplateNamespace._check_name(key)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, key: str, value: Any) -> None:
            TemplateNamespace._check_name(key)
            _check_result(value)  # `{% set ns.s = ns.s ~ ns.s %}` in a loop doubles a string
            jinja2.utils.Namespace.__setitem__(self, key, value)

        @staticmethod
        def _check_name(key: Any) -> None:
            if isinstance(key, str) and key.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"chat templates cannot store underscore-prefixed attributes on a namespace ({key!r})"
                )

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        # Intercepted operators are also never folded at compile time.
        intercepted_binops = frozenset({"*", "**", "+", "%"})

        @staticmethod
        def convo_guard_iter(iterable: Any) -> Iterator[Any]:
            return _guard_iter(iterable)

        @staticmethod
        def concat(parts: Iterable[str]) -> str:
            # Macros and {% set %} blocks collect their output, then join it here.
            items = parts if isinstance(parts, list) else list(parts)
            _too_big(sum(map(len, items)), "a block of template output")
            return "".join(items)

        def call(
            self,
            context: jinja2.runtime.Context,
            obj: Any,
            /,  # positional only, as in jinja2: the template's keywords pass through
            *args: Any,
            **kwargs: Any,
        ) -> Any:
            _tick()
            _check_args(args, kwargs)
            # jinja2 wraps str.format in a checker; the bound method is underneath
            method = getattr(obj, "__wrapped__", obj)
            owner = getattr(method, "__self__", None)
            if isinstance(owner, str):
                name = getattr(method, "__name__", "")
                if name == "join" and args:
                    args = (_check_join(owner, args[0]), *args[1:])
                elif name == "replace" and len(args) >= 2:
                    _check_replace(owner, *args[:3])
                elif name in ("format", "format_map"):
                    _check_format(owner)
            result = ImmutableSandboxedEnvironment.call(self, context, obj, *args, **kwargs)
            return _check_result(result)

        # These hooks run for nearly every step of a template: keep them short.

        def getattr(self, obj: Any, attribute: str) -> Any:
            _tick()
            return ImmutableSandboxedEnvironment.getattr(self, obj, attribute)

        def getitem(self, obj: Any, argument: Any) -> Any:
            _tick()
            return ImmutableSandboxedEnvironment.getitem(self, obj, argument)

        def call_binop(
            self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any
        ) -> Any:
            budget = _BUDGET.get() or _DEFAULT_BUDGET
            budget.ticks += 1
            if not budget.ticks % _CLOCK_EVERY:
                _check_clock(budget)
            if operator == "+" and type(left) is str and type(right) is str:  # most of them
                limit = budget.max_chars
                if limit is not None and len(left) + len(right) > limit:
                    raise _over(len(left) + len(right), "a concatenation", limit)
                return left + right
            _check_binop(operator, left, right)  # sizes are checked before, not after
            result = self.binop_table[operator](left, right)
            return _check_result(result) if operator == "%" else result

    env = BoundedSandbox(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.filters = {name: _guard_filter(name, f) for name, f in env.filters.items()}
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    return env
