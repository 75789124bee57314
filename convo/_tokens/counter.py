"""Token counting for chat requests, the way OpenAI bills them.

The rules (sources in docs/tokenizers.md):

* every message costs 3 tokens, plus the tokens of its role and content;
* a ``name`` costs its tokens plus 1;
* every request adds 3 tokens that prime the reply (``<|start|>assistant<|message|>``);
* tool definitions cost what OpenAI's cookbook ("How to count tokens with
  tiktoken", ``num_tokens_for_tools``) documents: per function ``func_init``
  plus ``name:description``; per property ``prop_key`` plus
  ``name:type:description``; per enum ``enum_init`` plus ``enum_item`` and the
  value per item; ``func_end`` once. The constants differ between the GPT-4o
  family (o200k_base) and GPT-3.5/GPT-4 (cl100k_base);
* images and audio follow :mod:`convo._tokens.media`.

Plain text messages (string content, or one text part; with or without a
name) are exact: they reproduce the API's ``prompt_tokens`` in OpenAI's
published examples. What OpenAI does not document is counted by a rule
fitted to published measurements and flagged (``TokenCounter.is_exact`` is
False): tool calls of assistant messages (name + arguments + 3 per call,
the rule that reproduces measured ``function_call`` counts), tool results
(content + ``tool_call_id``), refusals, several text parts, images with
``detail: auto`` or an unknown size, audio. Tool definitions are always an
estimate (the cookbook's rule is itself a fit).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import tiktoken

from .._exceptions import InvalidMessageError, UnknownModelError
from .._messages import ROLES, ImagePart, InputAudioPart, Message, TextPart, parse_message
from .._models import ModelRegistry, base_model_name, models
from .encodings import get_encoding
from .media import (
    DEFAULT_IMAGE_RULE,
    ImageRule,
    audio_tokens,
    image_rule_for_model,
    image_tokens,
)

__all__ = [
    "REPLY_PRIMING_TOKENS",
    "TOKENS_PER_MESSAGE",
    "TOKENS_PER_NAME",
    "TokenCounter",
    "count_tokens",
    "encoding_for_model",
]

TOKENS_PER_MESSAGE = 3  # <|start|>{role}<|message|>{content}<|end|>
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3  # <|start|>assistant<|message|>
TOKENS_PER_TOOL_CALL = 3  # fitted: measured function_call messages cost name + arguments + 3

# Families convo maps itself (newer than some tiktoken releases know); longest match first.
# A key matches the model itself or the model followed by "-" (dated snapshots, variants).
_MODEL_ENCODINGS: dict[str, str] = {
    "gpt-5": "o200k_base",
    "gpt-4.5": "o200k_base",
    "gpt-4.1": "o200k_base",
    "gpt-4o": "o200k_base",
    "chatgpt-4o": "o200k_base",
    "o1": "o200k_base",
    "o3": "o200k_base",
    "o4-mini": "o200k_base",
    "codex-mini": "o200k_base",
    "gpt-4": "cl100k_base",
    "gpt-3.5-turbo": "cl100k_base",
    "gpt-35-turbo": "cl100k_base",
    "text-embedding-3-small": "cl100k_base",
    "text-embedding-3-large": "cl100k_base",
    "text-embedding-ada-002": "cl100k_base",
    "davinci-002": "cl100k_base",
    "babbage-002": "cl100k_base",
}
_MODEL_KEYS = tuple(sorted(_MODEL_ENCODINGS, key=len, reverse=True))


def encoding_for_model(model: str) -> str:
    """The tokenizer encoding name of an OpenAI model.

    Dated snapshots (``gpt-4o-2024-08-06``) and fine-tunes
    (``ft:gpt-4o-mini:org::id``) resolve through their base model. Uses convo's
    own table, then tiktoken's (neither needs the network).

    Raises:
        UnknownModelError: no known encoding; pass ``encoding=`` or register the model.
    """
    base = base_model_name(model)
    enc = _MODEL_ENCODINGS.get(base)
    if enc is not None:
        return enc
    for key in _MODEL_KEYS:
        if base.startswith(key) and base[len(key)] == "-":
            return _MODEL_ENCODINGS[key]
    try:
        return tiktoken.encoding_name_for_model(model)
    except KeyError:
        pass
    raise UnknownModelError(
        f"no tokenizer encoding is known for model {model!r}: pass encoding= "
        "(e.g. encoding='o200k_base'), or register the model with "
        f"convo.models.register({model!r}, context_window=..., max_output_tokens=..., "
        "encoding=...)"
    )


@dataclass(frozen=True, slots=True)
class _ToolsRule:
    func_init: int
    prop_init: int
    prop_key: int
    enum_init: int
    enum_item: int
    func_end: int


# OpenAI cookbook, "How to count tokens with tiktoken", num_tokens_for_tools().
_TOOLS_GPT4O = _ToolsRule(
    func_init=7, prop_init=3, prop_key=3, enum_init=-3, enum_item=3, func_end=12
)
_TOOLS_GPT4 = _ToolsRule(
    func_init=10, prop_init=3, prop_key=3, enum_init=-3, enum_item=3, func_end=12
)


def _tools_rule(encoding: str) -> _ToolsRule:
    # o200k_base models are the GPT-4o family; everything else gets the larger
    # (GPT-3.5/GPT-4) constants, which overcount rather than undercount.
    return _TOOLS_GPT4O if encoding.startswith("o200k") else _TOOLS_GPT4


MessageLike = Message | Mapping[str, Any]

_counters: dict[tuple[str, ImageRule], TokenCounter] = {}
_counters_lock = threading.Lock()


class TokenCounter:
    """Counts the tokens of texts, messages, tool definitions and chat requests.

    Get one with :meth:`for_model` or :meth:`for_encoding` (cached: cheap to
    call on every request). Immutable and thread-safe.

    Attributes:
        encoding_name: the tokenizer encoding (``"o200k_base"``, ...).
        image_rule: how images are billed (depends on the model family).
    """

    __slots__ = ("_encode", "_roles", "_tools", "encoding_name", "image_rule")

    encoding_name: str
    image_rule: ImageRule
    _encode: Callable[[str], list[int]]
    _roles: dict[str, int]
    _tools: _ToolsRule

    def __init__(self, encoding: str, *, image_rule: ImageRule = DEFAULT_IMAGE_RULE) -> None:
        """A counter for ``encoding``; prefer the cached :meth:`for_model` / :meth:`for_encoding`.

        Raises:
            EncodingUnavailableError: the encoding cannot be loaded.
        """
        tok = get_encoding(encoding)
        encode: Callable[[str], list[int]]
        if isinstance(tok, tiktoken.Encoding):
            # Special-token text such as "<|endoftext|>" is plain text to the API: count it
            # as such (same ids as encode(..., disallowed_special=()), without the checks).
            encode = tok.encode_ordinary
        else:
            encode = tok.encode
        set_ = object.__setattr__
        set_(self, "encoding_name", encoding)
        set_(self, "image_rule", image_rule)
        set_(self, "_encode", encode)
        set_(self, "_tools", _tools_rule(encoding))
        set_(self, "_roles", {role: len(encode(role)) for role in ROLES})

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"TokenCounter is immutable (cannot set {name!r})")

    def __repr__(self) -> str:
        return f"TokenCounter(encoding_name={self.encoding_name!r})"

    @classmethod
    def for_encoding(cls, encoding: str) -> TokenCounter:
        """The shared counter of ``encoding`` (images counted as estimates by GPT-4o's rule)."""
        return cls._cached(encoding, DEFAULT_IMAGE_RULE)

    @classmethod
    def for_model(
        cls, model: str, *, encoding: str | None = None, registry: ModelRegistry | None = None
    ) -> TokenCounter:
        """The shared counter for ``model``.

        The encoding is ``encoding`` if given, else the registry entry's
        ``encoding``, else :func:`encoding_for_model`.

        Raises:
            UnknownModelError: the model's encoding is unknown and none was given.
            EncodingUnavailableError: the encoding cannot be loaded.
        """
        if encoding is None:
            info = (registry or models).find(model)
            encoding = info.encoding if info is not None and info.encoding else None
        if encoding is None:
            encoding = encoding_for_model(model)
        return cls._cached(encoding, image_rule_for_model(model))

    @classmethod
    def _cached(cls, encoding: str, rule: ImageRule) -> TokenCounter:
        key = (encoding, rule)
        counter = _counters.get(key)
        if counter is None:
            with _counters_lock:
                counter = _counters.get(key)
                if counter is None:
                    counter = _counters[key] = cls(encoding, image_rule=rule)
        return counter

    # -- text -----------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """The token ids of ``text``; special-token strings are encoded as plain text."""
        return self._encode(text)

    def count(self, text: str) -> int:
        """The number of tokens of ``text`` (never raises on special-token strings)."""
        return len(self._encode(text))

    # -- messages -------------------------------------------------------------------------

    def message_tokens(self, message: MessageLike) -> int:
        """The tokens ``message`` adds to a chat request (overhead, role, content, name...).

        Raises:
            InvalidMessageError: a dict that is not a valid message.
        """
        return self._measure(_as_message(message))[0]

    def is_exact(self, message: MessageLike) -> bool:
        """False when :meth:`message_tokens` of ``message`` uses an estimate.

        Estimates: tool calls, tool results, refusals, several text parts,
        images with ``detail: auto`` / unknown size / an unverified model
        family, audio. See docs/tokenizers.md.
        """
        m = _as_message(message)
        if m.tool_calls or m.refusal is not None or m.tool_call_id is not None:
            return False
        content = m.content
        if content is None or isinstance(content, str):
            return True
        texts = 0
        for part in content:
            if isinstance(part, TextPart):
                texts += 1
            elif isinstance(part, ImagePart):
                # Exactness of an image does not depend on the text encoding; reuse the rule.
                if not image_tokens(self.image_rule, part.image_url.url, part.image_url.detail)[1]:
                    return False
            else:  # audio, refusal parts
                return False
        return texts <= 1

    def _measure(self, m: Message) -> tuple[int, bool]:
        encode = self._encode
        n = TOKENS_PER_MESSAGE + self._roles[m.role]
        exact = True
        content = m.content
        if content is None:
            pass
        elif isinstance(content, str):
            n += len(encode(content))
        else:
            texts = 0
            for part in content:
                if isinstance(part, TextPart):
                    n += len(encode(part.text))
                    texts += 1
                elif isinstance(part, ImagePart):
                    tokens, ok = image_tokens(
                        self.image_rule, part.image_url.url, part.image_url.detail
                    )
                    n += tokens
                    exact = exact and ok
                elif isinstance(part, InputAudioPart):
                    n += audio_tokens(part.input_audio.data, part.input_audio.format)
                    exact = False
                else:  # RefusalPart
                    n += len(encode(part.refusal))
                    exact = False
            if texts > 1:
                exact = False
        if m.name is not None:
            n += len(encode(m.name)) + TOKENS_PER_NAME
        if m.tool_calls:
            for call in m.tool_calls:
                n += (
                    len(encode(call.function.name))
                    + len(encode(call.function.arguments))
                    + TOKENS_PER_TOOL_CALL
                )
            exact = False
        if m.refusal is not None:
            n += len(encode(m.refusal))
            exact = False
        if m.tool_call_id is not None:
            n += len(encode(m.tool_call_id))
            exact = False
        return n, exact

    # -- tools and requests ---------------------------------------------------------------

    def tools_tokens(self, tools: Sequence[Mapping[str, Any]] | None) -> int:
        """Tokens of tool (function) definitions, by the rule of OpenAI's cookbook.

        Accepts ``{"type": "function", "function": {...}}`` entries or bare
        function definitions. Nested object/array properties, which the
        cookbook's rule leaves out, are counted with the same per-property rule.
        Always an estimate. An empty list or None costs 0.

        Raises:
            InvalidMessageError: an entry that is not a function definition.
        """
        if not tools:
            return 0
        rule, encode = self._tools, self._encode
        n = 0
        for tool in tools:
            fn = _function_of(tool)
            n += rule.func_init
            desc = _text(fn.get("description")).removesuffix(".")
            n += len(encode(f"{fn['name']}:{desc}"))
            params = fn.get("parameters")
            props = params.get("properties") if isinstance(params, Mapping) else None
            if isinstance(props, Mapping) and props:
                n += rule.prop_init + self._properties_tokens(props)
        return n + rule.func_end

    def _properties_tokens(self, props: Mapping[str, Any]) -> int:
        rule, encode = self._tools, self._encode
        n = 0
        for key, schema in props.items():
            n += rule.prop_key
            if not isinstance(schema, Mapping):
                n += len(encode(f"{key}::"))
                continue
            p_type = schema.get("type", "")
            if isinstance(p_type, list):
                p_type = " | ".join(map(str, p_type))
            enum = schema.get("enum")
            if isinstance(enum, list):
                n += rule.enum_init
                for item in enum:
                    n += rule.enum_item + len(encode(_text(item, json_other=True)))
            desc = _text(schema.get("description")).removesuffix(".")
            n += len(encode(f"{key}:{p_type}:{desc}"))
            # Nested schemas: the cookbook's rule stops at the first level; count what lies
            # below the same way so that deep schemas are not undercounted.
            inner = schema.get("properties")
            if isinstance(inner, Mapping) and inner:
                n += rule.prop_init + self._properties_tokens(inner)
            items = schema.get("items")
            if isinstance(items, Mapping):
                inner = items.get("properties")
                if isinstance(inner, Mapping) and inner:
                    n += rule.prop_init + self._properties_tokens(inner)
                item_enum = items.get("enum")
                if isinstance(item_enum, list):
                    n += rule.enum_init
                    for item in item_enum:
                        n += rule.enum_item + len(encode(_text(item, json_other=True)))
        return n

    def request_tokens(
        self,
        messages: Iterable[MessageLike],
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> int:
        """Prompt tokens of a chat request: messages + 3 reply-priming tokens + tools.

        Raises:
            InvalidMessageError: a dict that is not a valid message, or a bad tool.
        """
        measure = self._measure
        n = REPLY_PRIMING_TOKENS
        for message in messages:
            n += measure(message if isinstance(message, Message) else _as_message(message))[0]
        if tools:
            n += self.tools_tokens(tools)
        return n


def count_tokens(
    messages: Iterable[MessageLike],
    *,
    model: str,
    tools: Sequence[Mapping[str, Any]] | None = None,
    encoding: str | None = None,
) -> int:
    """Prompt tokens of a chat request to ``model``, as OpenAI bills them.

    Example::

        >>> count_tokens([{"role": "user", "content": "Hello!"}], model="gpt-4o")
        9

    Args:
        messages: :class:`~convo.Message` objects or OpenAI message dicts.
        model: the model name; selects the encoding and the image rule.
        tools: tool definitions sent with the request, if any.
        encoding: the encoding to use instead of the model's.

    Raises:
        UnknownModelError: the model's encoding is unknown and none was given.
        EncodingUnavailableError: the encoding cannot be loaded.
        InvalidMessageError: an invalid message or tool definition.
    """
    return TokenCounter.for_model(model, encoding=encoding).request_tokens(messages, tools)


def _as_message(message: MessageLike) -> Message:
    if isinstance(message, Message):
        return message
    if isinstance(message, Mapping):
        return parse_message(dict(message))
    raise InvalidMessageError(
        f"invalid message: expected a Message or a dict, not {type(message).__name__}"
    )


def _function_of(tool: Any) -> Mapping[str, Any]:
    fn = tool.get("function", tool) if isinstance(tool, Mapping) else None
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
        raise InvalidMessageError(
            "invalid tool definition: expected {'type': 'function', 'function': "
            f"{{'name': ..., 'description': ..., 'parameters': ...}}}}, got {tool!r:.200}"
        )
    return fn


def _text(value: Any, *, json_other: bool = False) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value) if json_other else str(value)
