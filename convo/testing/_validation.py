"""Request validation the way api.openai.com does it (pure).

Each check raises :class:`ErrorReply` (400, ``invalid_request_error``) with
OpenAI's message, ``param`` and ``code`` where those are known: missing or
mistyped parameters, out-of-range numbers, too many stop sequences, a broken
message list (unknown roles, tool results that answer nothing, tool calls left
unanswered), JSON mode without the word "json", ``stream_options`` without
``stream``. A valid body becomes a small typed view the response builder reads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._errors import ErrorReply, describe_type

__all__ = ["ChatRequest", "CompletionRequest", "validate_chat", "validate_completion"]

# From the spec's CreateChatCompletionRequest (with CreateModelResponseProperties).
CHAT_PARAMS = frozenset(
    {
        "audio",
        "frequency_penalty",
        "function_call",
        "functions",
        "logit_bias",
        "logprobs",
        "max_completion_tokens",
        "max_tokens",
        "messages",
        "metadata",
        "modalities",
        "model",
        "moderation",
        "n",
        "parallel_tool_calls",
        "prediction",
        "presence_penalty",
        "prompt_cache_key",
        "prompt_cache_options",
        "prompt_cache_retention",
        "reasoning_effort",
        "response_format",
        "safety_identifier",
        "seed",
        "service_tier",
        "stop",
        "store",
        "stream",
        "stream_options",
        "temperature",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "user",
        "verbosity",
        "web_search_options",
    }
)
COMPLETION_PARAMS = frozenset(
    {
        "best_of",
        "echo",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "max_tokens",
        "model",
        "n",
        "presence_penalty",
        "prompt",
        "seed",
        "stop",
        "stream",
        "stream_options",
        "suffix",
        "temperature",
        "top_p",
        "user",
    }
)

# OpenAI lists the roles in this order in its "Invalid value" message.
_ROLES = ("system", "assistant", "user", "function", "tool", "developer")
_PART_TYPES = {
    "user": ("text", "image_url", "input_audio", "file"),
    "assistant": ("text", "refusal"),
}
_TEXT_ONLY = ("text",)

# name -> (integer?, minimum, maximum)
_Range = tuple[bool, float | None, float | None]
_CHAT_NUMBERS: dict[str, _Range] = {
    "temperature": (False, 0, 2),
    "top_p": (False, 0, 1),
    "frequency_penalty": (False, -2, 2),
    "presence_penalty": (False, -2, 2),
    "n": (True, 1, 128),
    "top_logprobs": (True, 0, 20),
    "max_tokens": (True, 1, None),
    "max_completion_tokens": (True, 1, None),
    "seed": (True, None, None),
}
_COMPLETION_NUMBERS: dict[str, _Range] = {
    "temperature": (False, 0, 2),
    "top_p": (False, 0, 1),
    "frequency_penalty": (False, -2, 2),
    "presence_penalty": (False, -2, 2),
    "n": (True, 1, 128),
    "best_of": (True, 0, 20),
    "logprobs": (True, 0, 5),
    "max_tokens": (True, 0, None),
    "seed": (True, None, None),
}

_JSON_WORD = (
    "'messages' must contain the word 'json' in some form, to use 'response_format' of type "
    "'json_object'."
)


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A validated ``/chat/completions`` body, as the response builder needs it."""

    model: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    n: int
    stream: bool
    include_usage: bool
    obfuscation: bool
    stop: tuple[str, ...]
    response_format: dict[str, Any] | None
    max_tokens: int | None


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    """A validated ``/completions`` body."""

    model: str
    prompts: list[str | list[int]]
    n: int
    stream: bool
    include_usage: bool
    stop: tuple[str, ...]
    echo: bool
    max_tokens: int | None


# --- helpers -----------------------------------------------------------------


def _missing(param: str) -> ErrorReply:
    return ErrorReply(
        400,
        f"Missing required parameter: '{param}'.",
        param=param,
        code="missing_required_parameter",
    )


def _bad_type(param: str, expected: str, value: Any) -> ErrorReply:
    return ErrorReply(
        400,
        f"Invalid type for '{param}': expected {expected}, but got {describe_type(value)} instead.",
        param=param,
        code="invalid_type",
    )


def _bad_value(param: str, value: Any, allowed: tuple[str, ...]) -> ErrorReply:
    quoted = [f"'{a}'" for a in allowed]
    listed = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + ", and " + quoted[-1]
    return ErrorReply(
        400,
        f"Invalid value: '{value}'. Supported values are: {listed}.",
        param=param,
        code="invalid_value",
    )


def _fmt(value: float) -> str:
    return json.dumps(value)


def _check_numbers(body: Mapping[str, Any], table: dict[str, _Range]) -> None:
    for name, (integer, lo, hi) in table.items():
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad_type(name, "an integer" if integer else "a number", value)
        if integer and not isinstance(value, int):
            raise _bad_type(name, "an integer", value)
        kind = "integer" if integer else "decimal"
        if lo is not None and value < lo:
            raise ErrorReply(
                400,
                f"Invalid '{name}': {kind} below minimum value. Expected a value >= {_fmt(lo)}, "
                f"but got {_fmt(value)} instead.",
                param=name,
                code=f"{kind}_below_min_value",
            )
        if hi is not None and value > hi:
            raise ErrorReply(
                400,
                f"Invalid '{name}': {kind} above maximum value. Expected a value <= {_fmt(hi)}, "
                f"but got {_fmt(value)} instead.",
                param=name,
                code=f"{kind}_above_max_value",
            )


def _check_bool(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _bad_type(name, "a boolean", value)
    return value


def _check_model(body: Any) -> str:
    if not isinstance(body, dict):
        raise ErrorReply(
            400, f"Invalid body: expected a JSON object, but got {describe_type(body)} instead."
        )
    model = body.get("model")
    if model is None or model == "":
        # OpenAI's historic wording, lower case and all.
        raise ErrorReply(400, "you must provide a model parameter")
    if not isinstance(model, str):
        raise _bad_type("model", "a string", model)
    return model


def _check_unknown(body: Mapping[str, Any], known: frozenset[str]) -> None:
    for key in body:
        if key not in known:
            raise ErrorReply(400, f"Unrecognized request argument supplied: {key}")


def _check_stop(body: Mapping[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,)
    if not isinstance(stop, list):
        raise _bad_type("stop", "a string or an array of strings", stop)
    if not stop:
        raise ErrorReply(
            400,
            "Invalid 'stop': empty array. Expected an array with minimum length 1, but got an "
            "empty array instead.",
            param="stop",
            code="empty_array",
        )
    if len(stop) > 4:
        raise ErrorReply(
            400,
            "Invalid 'stop': array too long. Expected an array with maximum length 4, but got an "
            f"array with length {len(stop)} instead.",
            param="stop",
            code="array_above_max_length",
        )
    for i, s in enumerate(stop):
        if not isinstance(s, str):
            raise _bad_type(f"stop[{i}]", "a string", s)
    return tuple(stop)


def _check_stream(body: Mapping[str, Any]) -> tuple[bool, bool, bool]:
    """(stream, include_usage, include_obfuscation)."""
    stream = _check_bool(body, "stream")
    options = body.get("stream_options")
    if options is None:
        return stream, False, True
    if not stream:
        raise ErrorReply(
            400,
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )
    if not isinstance(options, dict):
        raise _bad_type("stream_options", "an object", options)
    include_usage = options.get("include_usage")
    if include_usage is not None and not isinstance(include_usage, bool):
        raise _bad_type("stream_options.include_usage", "a boolean", include_usage)
    obfuscation = options.get("include_obfuscation")
    if obfuscation is not None and not isinstance(obfuscation, bool):
        raise _bad_type("stream_options.include_obfuscation", "a boolean", obfuscation)
    return stream, bool(include_usage), obfuscation is not False


# --- chat --------------------------------------------------------------------


def validate_chat(body: Any, *, strict: bool = True) -> ChatRequest:
    """Check a ``/chat/completions`` body like OpenAI; raise :class:`ErrorReply` if invalid.

    Args:
        body: the decoded JSON body.
        strict: reject parameters OpenAI does not know (``False`` accepts the
            extras local servers take, e.g. ``top_k``).
    """
    model = _check_model(body)
    if strict:
        _check_unknown(body, CHAT_PARAMS)
    messages = body.get("messages")
    if messages is None:
        raise _missing("messages")
    if not isinstance(messages, list):
        raise _bad_type("messages", "an array of objects", messages)
    if not messages:
        raise ErrorReply(
            400,
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an "
            "empty array instead.",
            param="messages",
            code="empty_array",
        )
    for i, message in enumerate(messages):
        _check_message(i, message)
    _check_tool_order(messages)
    _check_numbers(body, _CHAT_NUMBERS)
    stop = _check_stop(body)
    stream, include_usage, obfuscation = _check_stream(body)
    tools = _check_tools(body)
    response_format = _check_response_format(body, messages)
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    return ChatRequest(
        model=model,
        messages=messages,
        tools=tools,
        n=body.get("n") or 1,
        stream=stream,
        include_usage=include_usage,
        obfuscation=obfuscation,
        stop=stop,
        response_format=response_format,
        max_tokens=max_tokens,
    )


def _check_message(i: int, message: Any) -> None:
    where = f"messages[{i}]"
    if not isinstance(message, dict):
        raise _bad_type(where, "an object", message)
    if "role" not in message:
        raise _missing(f"{where}.role")
    role = message["role"]
    if not isinstance(role, str):
        raise _bad_type(f"{where}.role", "a string", role)
    if role not in _ROLES:
        raise _bad_value(f"{where}.role", role, _ROLES)
    content = message.get("content")
    if content is None:
        # Only an assistant message may go without content: when it calls tools or refuses.
        has_other = message.get("tool_calls") or message.get("function_call")
        if role != "assistant" or not (has_other or message.get("refusal") is not None):
            raise _missing(f"{where}.content")
    elif isinstance(content, list):
        allowed = _PART_TYPES.get(role, _TEXT_ONLY)
        for j, part in enumerate(content):
            _check_part(f"{where}.content[{j}]", part, allowed)
    elif not isinstance(content, str):
        raise _bad_type(f"{where}.content", "one of a string or array of objects", content)
    name = message.get("name")
    if name is not None and not isinstance(name, str):
        raise _bad_type(f"{where}.name", "a string", name)
    if role == "tool":
        call_id = message.get("tool_call_id")
        if call_id is None:
            raise _missing(f"{where}.tool_call_id")
        if not isinstance(call_id, str):
            raise _bad_type(f"{where}.tool_call_id", "a string", call_id)
    if role == "assistant" and message.get("tool_calls") is not None:
        _check_tool_calls(f"{where}.tool_calls", message["tool_calls"])


def _check_part(where: str, part: Any, allowed: tuple[str, ...]) -> None:
    if not isinstance(part, dict):
        raise _bad_type(where, "an object", part)
    kind = part.get("type")
    if kind is None:
        raise _missing(f"{where}.type")
    if kind not in allowed:
        raise _bad_value(f"{where}.type", kind, allowed)
    if kind in ("text", "refusal"):
        value = part.get(kind)
        if value is None:
            raise _missing(f"{where}.{kind}")
        if not isinstance(value, str):
            raise _bad_type(f"{where}.{kind}", "a string", value)
    elif kind not in part:
        raise _missing(f"{where}.{kind}")


def _check_tool_calls(where: str, calls: Any) -> None:
    if not isinstance(calls, list):
        raise _bad_type(where, "an array of objects", calls)
    for j, call in enumerate(calls):
        at = f"{where}[{j}]"
        if not isinstance(call, dict):
            raise _bad_type(at, "an object", call)
        for key in ("id", "type", "function"):
            if call.get(key) is None:
                raise _missing(f"{at}.{key}")
        if call["type"] != "function":
            raise _bad_value(f"{at}.type", call["type"], ("function",))
        function = call["function"]
        if not isinstance(function, dict):
            raise _bad_type(f"{at}.function", "an object", function)
        for key in ("name", "arguments"):
            if function.get(key) is None:
                raise _missing(f"{at}.function.{key}")
            if not isinstance(function[key], str):
                raise _bad_type(f"{at}.function.{key}", "a string", function[key])


def _check_tool_order(messages: list[dict[str, Any]]) -> None:
    """Tool results answer the assistant message right before them, all of its calls."""
    owner: int | None = None  # index of the assistant message whose calls are being answered
    calls: list[str] = []
    pending: list[str] = []
    for i, message in enumerate(messages):
        if message["role"] == "tool":
            if owner is None:
                # OpenAI's wording, its spelling ("preceeding") and its param style kept.
                raise ErrorReply(
                    400,
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    "preceeding message with 'tool_calls'.",
                    param=f"messages.[{i}].role",
                )
            call_id = message["tool_call_id"]
            if call_id not in calls:
                raise ErrorReply(
                    400,
                    f"Invalid parameter: 'tool_call_id' of '{call_id}' not found in 'tool_calls' "
                    "of previous message.",
                    param=f"messages.[{i}].tool_call_id",
                )
            if call_id in pending:
                pending.remove(call_id)
            continue
        _unanswered(owner, pending)
        owner, calls, pending = None, [], []
        if message["role"] == "assistant" and message.get("tool_calls"):
            owner = i
            calls = [c["id"] for c in message["tool_calls"]]
            pending = list(calls)
    _unanswered(owner, pending)


def _unanswered(owner: int | None, pending: list[str]) -> None:
    if owner is not None and pending:
        raise ErrorReply(
            400,
            "An assistant message with 'tool_calls' must be followed by tool messages responding "
            "to each 'tool_call_id'. The following tool_call_ids did not have response messages: "
            + ", ".join(pending),
            param=f"messages.[{owner}].role",
        )


def _check_tools(body: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    tools = body.get("tools")
    if tools is None:
        choice = body.get("tool_choice")
        if choice is not None and choice != "none":
            raise ErrorReply(
                400,
                "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are "
                "specified.",
                param="tool_choice",
            )
        return None
    if not isinstance(tools, list):
        raise _bad_type("tools", "an array of objects", tools)
    for i, tool in enumerate(tools):
        at = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise _bad_type(at, "an object", tool)
        kind = tool.get("type")
        if kind is None:
            raise _missing(f"{at}.type")
        if kind not in ("function", "custom"):
            raise _bad_value(f"{at}.type", kind, ("function", "custom"))
        spec = tool.get(kind)
        if not isinstance(spec, dict):
            raise _missing(f"{at}.{kind}")
        name = spec.get("name")
        if name is None:
            raise _missing(f"{at}.{kind}.name")
        if not isinstance(name, str):
            raise _bad_type(f"{at}.{kind}.name", "a string", name)
    return tools


def _mentions_json(messages: list[dict[str, Any]]) -> bool:
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            if "json" in content.lower():
                return True
        elif isinstance(content, list):
            for part in content:
                text = part.get("text") if isinstance(part, dict) else None
                if isinstance(text, str) and "json" in text.lower():
                    return True
    return False


def _check_response_format(
    body: Mapping[str, Any], messages: list[dict[str, Any]]
) -> dict[str, Any] | None:
    fmt = body.get("response_format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise _bad_type("response_format", "an object", fmt)
    kind = fmt.get("type")
    if kind is None:
        raise _missing("response_format.type")
    if kind not in ("text", "json_object", "json_schema"):
        raise _bad_value("response_format.type", kind, ("json_object", "json_schema", "text"))
    if kind == "json_object" and not _mentions_json(messages):
        raise ErrorReply(400, _JSON_WORD, param="messages")
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if spec is None:
            raise _missing("response_format.json_schema")
        if not isinstance(spec, dict):
            raise _bad_type("response_format.json_schema", "an object", spec)
        if spec.get("name") is None:
            raise _missing("response_format.json_schema.name")
    return fmt


# --- completions -------------------------------------------------------------


def validate_completion(body: Any, *, strict: bool = True) -> CompletionRequest:
    """Check a ``/completions`` body like OpenAI; raise :class:`ErrorReply` if invalid."""
    model = _check_model(body)
    if strict:
        _check_unknown(body, COMPLETION_PARAMS)
    if "prompt" not in body:
        raise _missing("prompt")
    prompts = _check_prompt(body["prompt"])
    _check_numbers(body, _COMPLETION_NUMBERS)
    n = body.get("n") or 1
    best_of = body.get("best_of")
    if best_of is not None and best_of < n:
        raise ErrorReply(
            400,
            "Invalid value for 'best_of': must be greater than or equal to 'n'.",
            param="best_of",
        )
    stop = _check_stop(body)
    stream, include_usage, _ = _check_stream(body)
    suffix = body.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise _bad_type("suffix", "a string", suffix)
    return CompletionRequest(
        model=model,
        prompts=prompts,
        n=n,
        stream=stream,
        include_usage=include_usage,
        stop=stop,
        echo=_check_bool(body, "echo"),
        max_tokens=body.get("max_tokens"),
    )


def _check_prompt(prompt: Any) -> list[str | list[int]]:
    if prompt is None:
        return ["<|endoftext|>"]  # the spec's default
    if isinstance(prompt, str):
        return [prompt]
    expected = "a string, an array of strings, an array of integers or an array of arrays"
    if not isinstance(prompt, list) or not prompt:
        raise _bad_type("prompt", expected, prompt)
    if all(isinstance(p, str) for p in prompt):
        return list(prompt)
    if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return [list(prompt)]
    if all(
        isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p)
        for p in prompt
    ):
        return [list(p) for p in prompt]
    raise _bad_type("prompt", expected, prompt)
