"""What the fake model says (pure): scripted reply values and deterministic defaults.

* chat: ``"You said: <text of the last user message>"``;
* completions: ``" You said: <last line of the prompt>"`` (role labels such as
  ``User:`` and template tokens such as ``<|im_start|>`` stripped);
* JSON mode: ``{"message": "You said: ..."}``; JSON schema: the smallest object
  that satisfies the schema's required properties, with type-default values.

Long echoes are cut to :data:`ECHO_LIMIT` characters. Text is split into
stream deltas deterministically: content at word boundaries (a word carries
its leading whitespace, like a BPE token), tool-call arguments every
:data:`ARGUMENT_FRAGMENT` characters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ARGUMENT_FRAGMENT",
    "ECHO_LIMIT",
    "Reply",
    "apply_stop",
    "default_chat_text",
    "default_completion_text",
    "default_json",
    "schema_default",
    "split_arguments",
    "split_text",
]

ECHO_LIMIT = 200
ARGUMENT_FRAGMENT = 8


@dataclass(frozen=True, slots=True)
class Reply:
    """One assistant reply (scripted, or a default filled in for a request).

    ``tool_calls`` holds ``(id or None, name, arguments JSON text)``; a None id
    is generated when the reply is sent. ``finish_reason`` None means "stop",
    or "tool_calls" when there are tool calls.
    """

    content: str | None = None
    tool_calls: tuple[tuple[str | None, str, str], ...] = ()
    refusal: str | None = None
    finish_reason: str | None = None
    usage: Mapping[str, Any] | None = None
    #: True for replies built by the fake: only those are cut at max_tokens.
    default: bool = False

    @property
    def finish(self) -> str:
        if self.finish_reason is not None:
            return self.finish_reason
        return "tool_calls" if self.tool_calls else "stop"


def _echo(text: str) -> str:
    text = text.strip()
    if len(text) > ECHO_LIMIT:
        return text[:ECHO_LIMIT] + "..."
    return text


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def default_chat_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """``"You said: <last user text>"``, or ``"You said nothing."`` with no user message."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return "You said: " + _echo(_text_of(message.get("content")))
    return "You said nothing."


# Template markup that carries no words: <|im_start|>, [INST], <s>, <start_of_turn> ...
_MARKUP = re.compile(r"<\|[^|>]*\|>|\[/?INST\]|\[/?SYS\]|<</?SYS>>|</?s>|<(?:start|end)_of_turn>")
# A line that only names a speaker: "Assistant:", or a bare role left by ChatML-style markup.
_ROLE_ONLY = re.compile(
    r"^\s*(?:[A-Za-z_]+\s*:|system|developer|user|assistant|tool|model|human|ai)\s*$",
    re.IGNORECASE,
)
_ROLE_LABEL = re.compile(r"^\s*[A-Za-z_]+:\s+")


def default_completion_text(prompt: str) -> str:
    """``" You said: <last line of the prompt>"`` with markup and role labels removed."""
    for line in reversed(_MARKUP.sub("\n", prompt).splitlines()):
        if not line.strip() or _ROLE_ONLY.match(line):
            continue
        return " You said: " + _echo(_ROLE_LABEL.sub("", line, count=1))
    return " You said nothing."


def default_json(response_format: Mapping[str, Any], messages: Sequence[Mapping[str, Any]]) -> str:
    """A deterministic JSON text for JSON mode (``json_object``) or a ``json_schema``."""
    if response_format.get("type") == "json_schema":
        schema = response_format.get("json_schema", {}).get("schema", {})
        return json.dumps(schema_default(schema, schema))
    return json.dumps({"message": default_chat_text(messages)})


def _resolve(ref: str, root: Any) -> Any:
    if not ref.startswith("#"):
        return {}
    node = root
    for part in ref[1:].split("/"):
        if not part:
            continue
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, Mapping) or part not in node:
            return {}
        node = node[part]
    return node


def schema_default(schema: Any, root: Any, _depth: int = 0) -> Any:
    """The smallest value valid for a JSON schema: required properties with type defaults.

    Handles ``$ref`` (local), ``const``, ``enum``, ``default``, ``anyOf``/``oneOf``
    (the first non-null option), ``allOf`` (merged), type lists, ``minItems``,
    ``minLength`` and numeric minimums.
    """
    if _depth > 32 or not isinstance(schema, Mapping):
        return None
    if "$ref" in schema:
        return schema_default(_resolve(schema["$ref"], root), root, _depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if options:
            usable = [
                o for o in options if not (isinstance(o, Mapping) and o.get("type") == "null")
            ]
            return schema_default((usable or options)[0], root, _depth + 1)
    if schema.get("allOf"):
        merged: dict[str, Any] = {"properties": {}, "required": []}
        for part in schema["allOf"]:
            part = _resolve(part["$ref"], root) if "$ref" in part else part
            merged["properties"].update(part.get("properties", {}))
            merged["required"] += part.get("required", [])
            if "type" in part:
                merged["type"] = part["type"]
        return schema_default(merged, root, _depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else None
    if kind == "object":
        props = schema.get("properties", {})
        return {
            name: schema_default(props.get(name, {}), root, _depth + 1)
            for name in schema.get("required", [])
        }
    if kind == "array":
        count = int(schema.get("minItems", 0))
        return [schema_default(schema.get("items", {}), root, _depth + 1) for _ in range(count)]
    if kind == "string":
        return "x" * int(schema.get("minLength", 0))
    if kind in ("integer", "number"):
        low = schema.get("minimum")
        if low is None and "exclusiveMinimum" in schema:
            low = int(schema["exclusiveMinimum"]) + 1
        high = schema.get("maximum")
        value = 0 if low is None or low <= 0 else low
        if high is not None and value > high:
            value = high
        return int(value) if kind == "integer" else value
    if kind == "boolean":
        return False
    return None


def apply_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` before the first stop sequence, as the model would have stopped there."""
    cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=-1)
    if cut < 0:
        return text, False
    return text[:cut], True


_WORDS = re.compile(r"\s*\S+|\s+")


def split_text(text: str) -> list[str]:
    """Stream deltas of ``text``: words with their leading whitespace (``"".join`` restores it)."""
    return _WORDS.findall(text)


def split_arguments(arguments: str) -> list[str]:
    """Stream deltas of tool-call arguments: fixed-size fragments."""
    step = ARGUMENT_FRAGMENT
    return [arguments[i : i + step] for i in range(0, len(arguments), step)]
