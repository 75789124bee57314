"""Hugging Face chat templates, rendered exactly as transformers renders them.

Open models publish their prompt format as a Jinja template (the
``chat_template`` of ``tokenizer_config.json``); vLLM, llama.cpp and
transformers' ``apply_chat_template(..., tokenize=False)`` all render it. convo
renders it the same way, without importing transformers: jinja2's
``ImmutableSandboxedEnvironment`` (templates are untrusted code) with
``trim_blocks``, ``lstrip_blocks`` and ``loopcontrols``; a ``tojson`` filter
that keeps non-ASCII text and takes ``indent`` / ``separators`` /
``sort_keys``; the globals ``raise_exception``, ``strftime_now``, ``dict`` and
a ``namespace`` that refuses underscore names; the ``{% generation %}`` tag;
and the variables ``messages``, ``tools``, ``documents``,
``add_generation_prompt``, ``bos_token``, ``eos_token`` (plus the other special
tokens of a tokenizer config). A template is compiled once per source string.

What the template sees as ``messages`` (decisions, documented once here):

* the OpenAI message dicts, unset fields left out (transformers drops ``None``
  values too, and many templates test ``is defined``);
* ``developer`` becomes ``system``: open models know only ``system``;
* text-only content part lists become one string (parts joined with ``"\\n"``,
  as vLLM does), since most templates concatenate ``message.content``; lists
  with media stay lists of OpenAI part dicts;
* tool call ``arguments`` are parsed from their JSON string into a value
  (a dict), which is what published templates expect (``arguments|tojson``,
  ``arguments|items``) and what vLLM passes; unparsable arguments stay strings;
* a ``tool`` message without ``name`` gets the name of the function whose call
  it answers (found through ``tool_call_id``): templates such as Hermes need it;
* an assistant refusal without content becomes the content.

Note: a template that writes ``bos_token`` puts it into the prompt text. A
server that also adds BOS when it tokenizes a completion prompt (vLLM does by
default) then sees two; give ``bos_token=""`` for such servers.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._chat_render import _content_text, map_part, parse_arguments, tool_call_names
from ._exceptions import TemplateError
from ._messages import Message, RefusalPart, TextPart

if TYPE_CHECKING:
    import jinja2

__all__ = ["MAX_STOP", "JinjaChatTemplate", "derive_stop", "template_messages"]

MAX_STOP = 4
"""The most stop sequences the completions API accepts."""

_RESERVED = frozenset({"messages", "tools", "documents", "add_generation_prompt"})

# End-of-turn markers of well-known formats, in the order they are preferred
# as stop sequences when a template writes them literally.
_END_MARKERS = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|END_OF_TURN_TOKEN|>",
    "<|end_of_text|>",
    "</s>",
    "<|endoftext|>",
)

# transformers passes its tokenizer's `special_tokens_map` to templates: these.
_SPECIAL_TOKENS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


_MARKER = re.compile(r"<\|[A-Za-z0-9_.:-]+\|>|\[/?(?:INST|AVAILABLE_TOOLS|TOOL_CALLS|TOOL_RESULTS)\]|<</?SYS>>|</?s>")

class JinjaChatTemplate:
    """A Hugging Face-style Jinja chat template used as a completion prompt template.

    Example::

        tpl = JinjaChatTemplate(source, bos_token="<s>", eos_token="</s>")
        prompt = tpl.render(messages)          # what apply_chat_template(..., tokenize=False) gives
        tpl.stop                               # ("</s>",)

    Args:
        source: the Jinja template text.
        bos_token: the ``bos_token`` variable.
        eos_token: the ``eos_token`` variable.
        stop: stop sequences (at most 4). By default: ``eos_token`` and the
            well-known end-of-turn markers the template writes literally
            (``<|im_end|>``, ``<|eot_id|>``, ``</s>``...), at most 4.
        name: names the template in errors; by default ``jinja-`` and a hash.
        variables: more template variables (``enable_thinking``, other special
            tokens...). They cannot be named ``messages``, ``tools``,
            ``documents`` or ``add_generation_prompt``.

    Raises:
        TemplateError: the template does not compile, or bad ``stop`` / ``variables``.
    """

    __slots__ = (
        "_template",
        "_tool_use",
        "bos_token",
        "eos_token",
        "name",
        "source",
        "stop",
        "variables",
    )

    @property
    def markers(self) -> tuple[str, ...]:
        """Control strings of this format: special tokens the template writes
        literally (``<|...|>``, ``[INST]``, ``<<SYS>>``, ``<s>``), bos/eos, stop
        sequences. The context builder neutralizes them in message text."""
        found = set(_MARKER.findall(self.source))
        found.update((self.bos_token, self.eos_token, *self.stop))
        return tuple(sorted((m for m in found if m.strip()), key=len, reverse=True))

    def __init__(
        self,
        source: str,
        *,
        bos_token: str = "",
        eos_token: str = "",
        stop: Sequence[str] | None = None,
        name: str | None = None,
        variables: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(source, str):
            raise TemplateError(f"a chat template is a string, not {type(source).__name__}")
        self.source = source
        self.name = name or "jinja-" + hashlib.sha256(source.encode()).hexdigest()[:12]
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.variables: dict[str, Any] = dict(variables or {})
        clash = _RESERVED.intersection(self.variables)
        if clash:
            raise TemplateError(
                f"chat template {self.name!r}: variables may not be named {', '.join(sorted(clash))}"
            )
        self.stop = (
            _check_stop(stop, self.name) if stop is not None else derive_stop(source, eos_token)
        )
        self._template = _compile(source, self.name)
        # transformers switches to a config's "tool_use" template when tools are given.
        self._tool_use: JinjaChatTemplate | None = None

    def __repr__(self) -> str:
        return f"JinjaChatTemplate(name={self.name!r}, stop={self.stop!r})"

    def render(
        self,
        messages: Sequence[Message],
        *,
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        documents: list[dict[str, Any]] | None = None,
    ) -> str:
        """The prompt, exactly as transformers' ``apply_chat_template(..., tokenize=False)``.

        Args:
            messages: the conversation, oldest first.
            add_generation_prompt: the template's ``add_generation_prompt``.
            tools: OpenAI tool definitions (the template's ``tools``).
            documents: retrieval documents (the template's ``documents``).

        Raises:
            TemplateError: the template failed (``raise_exception``, a type
                error, undefined misuse...); says which template and why.
        """
        if tools is not None and self._tool_use is not None:
            return self._tool_use.render(
                messages,
                add_generation_prompt=add_generation_prompt,
                tools=tools,
                documents=documents,
            )
        return self.render_dicts(
            template_messages(messages),
            add_generation_prompt=add_generation_prompt,
            tools=tools,
            documents=documents,
        )

    def render_dicts(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        documents: list[dict[str, Any]] | None = None,
    ) -> str:
        """Render message dicts as given (no conversion): for dicts already in a template's shape."""
        context = {"bos_token": self.bos_token, "eos_token": self.eos_token, **self.variables}
        try:
            return self._template.render(
                messages=messages,
                tools=tools,
                documents=documents,
                add_generation_prompt=add_generation_prompt,
                **context,
            )
        except Exception as exc:  # a template is code: any failure is the template's
            raise TemplateError(
                f"chat template {self.name!r} failed{_where(exc)}: {_describe(exc)}"
            ) from exc

    @classmethod
    def from_tokenizer_config(
        cls,
        config: str | os.PathLike[str] | Mapping[str, Any],
        *,
        template_name: str | None = None,
        stop: Sequence[str] | None = None,
        name: str | None = None,
    ) -> JinjaChatTemplate:
        """The chat template of a Hugging Face ``tokenizer_config.json``.

        Reads ``chat_template`` (a string, or a list of ``{"name", "template"}``
        of which ``"default"`` is used unless ``template_name`` says otherwise;
        as in transformers, a ``"tool_use"`` template, when present, is used for
        renders that pass ``tools``), ``bos_token`` and ``eos_token`` (strings
        or ``{"content": ...}`` token dicts), and the other special tokens as
        variables. A config without ``chat_template`` next to a
        ``chat_template.jinja`` file uses that file, as transformers does.

        Args:
            config: the parsed config, a path to the file, or the directory holding it.
            template_name: which named template to use.
            stop: stop sequences; derived from the template by default.
            name: names the template in errors; by default the file path.

        Raises:
            TemplateError: unreadable file, no chat template, unknown name, broken template.
        """
        base_dir: Path | None = None
        if isinstance(config, Mapping):
            data: Any = config
            label = name or "tokenizer_config"
        else:
            path = Path(config)
            if path.is_dir():
                path = path / "tokenizer_config.json"
            base_dir = path.parent
            label = name or str(path)
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise TemplateError(f"cannot read tokenizer config {str(path)!r}: {exc}") from exc
            if not isinstance(data, dict):
                raise TemplateError(f"tokenizer config {str(path)!r} is not a JSON object")
        raw = data.get("chat_template")
        if raw is None and base_dir is not None and (base_dir / "chat_template.jinja").is_file():
            raw = (base_dir / "chat_template.jinja").read_text(encoding="utf-8")
        templates = _named_templates(raw, label)
        chosen = template_name or "default"
        if chosen not in templates:
            raise TemplateError(
                f"tokenizer config {label!r} has no chat template named {chosen!r} "
                f"(it has: {', '.join(sorted(templates))})"
            )
        tokens = {
            key: _token_text(data[key], key, label)
            for key in _SPECIAL_TOKENS
            if data.get(key) is not None
        }
        bos = tokens.pop("bos_token", "")
        eos = tokens.pop("eos_token", "")
        suffix = f":{chosen}" if len(templates) > 1 else ""
        template = cls(
            templates[chosen],
            bos_token=bos,
            eos_token=eos,
            stop=stop,
            name=label + suffix,
            variables=tokens,
        )
        if template_name is None and "tool_use" in templates:
            template._tool_use = cls(
                templates["tool_use"],
                bos_token=bos,
                eos_token=eos,
                stop=template.stop,
                name=label + ":tool_use",
                variables=tokens,
            )
        return template


def template_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """The message dicts a Jinja chat template sees (see the module docstring)."""
    names: dict[str, str] | None = None
    out: list[dict[str, Any]] = []
    for m in messages:
        d: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role}
        content = m.content
        if content is None:
            if m.refusal is not None:
                d["content"] = m.refusal
        elif isinstance(content, str):
            d["content"] = content
        elif all(isinstance(p, (TextPart, RefusalPart)) for p in content):
            d["content"] = _content_text(content)
        else:
            d["content"] = [map_part(p) for p in content]
        if m.name is not None:
            d["name"] = m.name
        elif m.role == "tool":
            if names is None:
                names = tool_call_names(messages)
            found = names.get(m.tool_call_id or "")
            if found is not None:
                d["name"] = found
        if m.tool_calls:
            d["tool_calls"] = [
                {
                    "id": c.id,
                    "type": c.type,
                    "function": {
                        "name": c.function.name,
                        "arguments": parse_arguments(c.function.arguments),
                    },
                }
                for c in m.tool_calls
            ]
        if m.tool_call_id is not None:
            d["tool_call_id"] = m.tool_call_id
        out.append(d)
    return out


def derive_stop(source: str, eos_token: str = "") -> tuple[str, ...]:
    """Stop sequences for a template: ``eos_token``, then known end-of-turn markers it writes; at most 4."""
    found: list[str] = [eos_token] if eos_token else []
    for marker in _END_MARKERS:
        if marker in source and marker not in found:
            found.append(marker)
    return tuple(found[:MAX_STOP])


def _check_stop(stop: Sequence[str], name: str) -> tuple[str, ...]:
    if isinstance(stop, str):
        stop = (stop,)
    result = tuple(stop)
    if len(result) > MAX_STOP:
        raise TemplateError(
            f"chat template {name!r}: at most {MAX_STOP} stop sequences (the API's limit), got {len(result)}"
        )
    if not all(isinstance(s, str) and s for s in result):
        raise TemplateError(f"chat template {name!r}: stop sequences must be non-empty strings")
    return result


def _named_templates(raw: Any, label: str) -> dict[str, str]:
    if isinstance(raw, str):
        return {"default": raw}
    if isinstance(raw, list):
        templates: dict[str, str] = {}
        for item in raw:
            if not (
                isinstance(item, Mapping)
                and isinstance(item.get("name"), str)
                and isinstance(item.get("template"), str)
            ):
                raise TemplateError(
                    f"tokenizer config {label!r}: chat_template list items must be "
                    '{"name": str, "template": str}'
                )
            templates[item["name"]] = item["template"]
        return templates
    if isinstance(raw, Mapping) and all(isinstance(v, str) for v in raw.values()):
        return {str(k): v for k, v in raw.items()}
    if raw is None:
        raise TemplateError(f"tokenizer config {label!r} has no chat_template")
    raise TemplateError(f"tokenizer config {label!r}: chat_template must be a string or a list")


def _token_text(value: Any, key: str, label: str) -> str:
    # Special tokens are strings or serialized AddedToken dicts {"content": ...}.
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return str(value["content"])
    raise TemplateError(f"tokenizer config {label!r}: {key} must be a string or a token dict")


# --- the Jinja environment ----------------------------------------------------------


def _compile(source: str, name: str) -> jinja2.Template:
    import jinja2

    try:
        return _compiled(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(
            f"chat template {name!r} has a syntax error at line {exc.lineno}: {exc.message}"
        ) from exc


@lru_cache(maxsize=128)
def _compiled(source: str) -> jinja2.Template:
    return _environment().from_string(source)


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
            jinja2.utils.Namespace.__setitem__(self, key, value)

        @staticmethod
        def _check_name(key: Any) -> None:
            if isinstance(key, str) and key.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"chat templates cannot store underscore-prefixed attributes on a namespace ({key!r})"
                )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    return env


def _describe(exc: BaseException) -> str:
    import jinja2

    if isinstance(exc, jinja2.TemplateError) and type(exc) is jinja2.TemplateError:
        return str(exc)  # raise_exception(...): the template's own words
    return f"{type(exc).__name__}: {exc}"


def _where(exc: BaseException) -> str:
    # Jinja rewrites tracebacks so template frames carry template line numbers.
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return f" at line {line}" if line is not None else ""
