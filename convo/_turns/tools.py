"""Python callables as tools a turn runs for the model.

A :class:`Tool` wraps a function (sync or async): its OpenAI definition
(name, description, JSON schema of the parameters) comes from the signature
and docstring, and the model's JSON arguments are validated against the same
schema before the function is called. What the function returns becomes the
tool message's content (a string as is, anything else as JSON).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, get_type_hints, overload

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from .._exceptions import ConfigurationError

__all__ = ["Tool", "ToolArgumentsError", "tool", "tool_result_text"]


class ToolArgumentsError(ValueError):
    """The model's arguments for a tool are not valid JSON or do not fit its parameters.

    Not a :class:`~convo.ConvoError`: a turn feeds it back to the model as the
    tool's result, so the model can correct itself.
    """


def _strip_titles(schema: Any) -> Any:
    # pydantic titles every property ("Title": "City"): noise for a model.
    if isinstance(schema, dict):
        return {k: _strip_titles(v) for k, v in schema.items() if k != "title"}
    if isinstance(schema, list):
        return [_strip_titles(v) for v in schema]
    return schema


@dataclass(frozen=True)
class Tool:
    """A function the model may call, with its OpenAI definition.

    Build one with :func:`tool` (or ``Tool.from_function``); pass tools to
    :class:`~convo.Chat` / :class:`~convo.AsyncChat` as ``tools=[...]``.
    """

    fn: Callable[..., Any]
    name: str
    description: str | None
    parameters: dict[str, Any]
    is_async: bool
    arguments_model: type[BaseModel] = field(repr=False)

    @classmethod
    def from_function(
        cls,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
    ) -> Tool:
        """The tool of ``fn``: parameters from its annotations, description from its docstring."""
        if not callable(fn):
            raise ConfigurationError(f"a tool must be callable, got {type(fn).__name__}")
        tool_name = name or getattr(fn, "__name__", None)
        # OpenAI's rule is ^[a-zA-Z0-9_-]{1,64}$: str.isalnum() alone also takes "é"
        if not tool_name or not all(
            c.isascii() and (c.isalnum() or c in "_-") for c in tool_name
        ) or len(tool_name) > 64:
            raise ConfigurationError(
                f"tool name {tool_name!r} must be 1-64 letters, digits, '_' or '-' (OpenAI's rule)"
            )
        try:
            hints = get_type_hints(fn)
        except Exception as exc:  # noqa: BLE001 - unresolvable forward references
            raise ConfigurationError(f"tool {tool_name!r}: cannot read its annotations: {exc}")
        fields: dict[str, Any] = {}
        for param in inspect.signature(fn).parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise ConfigurationError(f"tool {tool_name!r}: *args/**kwargs cannot be described")
            annotation = hints.get(param.name, Any)
            default = ... if param.default is param.empty else param.default
            fields[param.name] = (annotation, default)
        model = create_model(
            f"{tool_name}_arguments", __config__=ConfigDict(extra="forbid"), **fields
        )
        doc = inspect.getdoc(fn)
        desc = description if description is not None else (
            doc.split("\n\n", 1)[0].strip() if doc else None
        )
        return cls(
            fn=fn,
            name=tool_name,
            description=desc or None,
            parameters=_strip_titles(model.model_json_schema()),
            is_async=inspect.iscoroutinefunction(fn),
            arguments_model=model,
        )

    def definition(self) -> dict[str, Any]:
        """The entry of the request's ``tools`` list."""
        function: dict[str, Any] = {"name": self.name}
        if self.description:
            function["description"] = self.description
        function["parameters"] = self.parameters
        return {"type": "function", "function": function}

    def parse_arguments(self, arguments: str) -> dict[str, Any]:
        """The keyword arguments of a call, validated; :class:`ToolArgumentsError` if not."""
        try:
            raw = json.loads(arguments or "{}")
        except ValueError as exc:
            raise ToolArgumentsError(f"arguments are not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ToolArgumentsError("arguments must be a JSON object")
        try:
            parsed = self.arguments_model.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in exc.errors()
            )
            raise ToolArgumentsError(problems) from None
        return {name: getattr(parsed, name) for name in type(parsed).model_fields}


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...
@overload
def tool(
    *, name: str | None = None, description: str | None = None
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a :class:`Tool` of a function; usable as ``@tool`` or ``@tool(name=...)``.

    Example::

        @tool
        def get_weather(city: str, unit: Literal["C", "F"] = "C") -> dict:
            \"\"\"The current weather in a city.\"\"\"
            return {"city": city, "temp": 21, "unit": unit}
    """
    if fn is not None:
        return Tool.from_function(fn, name=name, description=description)
    return lambda f: Tool.from_function(f, name=name, description=description)


def tool_result_text(value: Any) -> str:
    """A tool's return value as the tool message's content."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)
