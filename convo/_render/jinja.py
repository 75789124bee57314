"""Hugging Face chat templates, rendered exactly as transformers renders them.

Open models publish their prompt format as a Jinja template (the
``chat_template`` of ``tokenizer_config.json``); vLLM, llama.cpp and
transformers' ``apply_chat_template(..., tokenize=False)`` all render it. convo
renders it the same way, without importing transformers, in a bounded sandbox
(see ``_render.jinja_env``): jinja2's ``ImmutableSandboxedEnvironment`` (templates are
untrusted code) with transformers' settings, a render time limit and a size
limit. The variables are ``messages``, ``tools``, ``documents``,
``add_generation_prompt``, ``bos_token``, ``eos_token`` (plus the other special
tokens of a tokenizer config). A template is compiled once per source string.

What the template sees as ``messages`` (decisions, documented once here):

* the OpenAI message dicts, unset fields left out (transformers drops ``None``
  values too, and many templates test ``is defined``);
* ``developer`` becomes ``system``: open models know only ``system``;
* text-only content part lists become one string (parts joined with ``"\\n"``,
  as vLLM does), since most templates concatenate ``message.content``; image
  and audio parts raise :class:`~convo.TemplateError`, as with the built-in
  templates (a text prompt cannot carry them);
* tool call ``arguments`` are parsed from their JSON string into a value
  (a dict), which is what published templates expect (``arguments|tojson``,
  ``arguments|items``) and what vLLM passes; unparsable arguments stay strings;
* a ``tool`` message without ``name`` gets the name of the function whose call
  it answers (found through ``tool_call_id``): templates such as Hermes need it;
* an assistant refusal without content becomes the content;
* every string from a message, a tool definition or a document has the
  template's control strings broken (``_render.control``), so no text can open a turn.

Note: a template that writes ``bos_token`` puts it into the prompt text. A
server that also adds BOS when it tokenizes a completion prompt (vLLM does by
default) then sees two; give ``bos_token=""`` for such servers.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .._exceptions import TemplateError
from .._messages import Message, RefusalPart, TextPart
from .chat import _content_text, map_part, parse_arguments, tool_call_names
from .control import (
    ControlStrings,
    analyze,
    is_token_shaped,
    neutralize_message,
    neutralize_value,
    reject_media,
    token_shaped,
)
from .jinja_env import (
    DEFAULT_MAX_PROMPT_CHARS,
    DEFAULT_RENDER_TIMEOUT,
    Compiled,
    RenderLimitError,
    RenderLimits,
    compiled,
    render_bounded,
)

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

# Probing a template's structure renders a dozen conversations of a few words;
# one that takes seconds there is broken or hostile.
_PROBE_TIMEOUT = 2.0


class JinjaChatTemplate:
    """A Hugging Face-style Jinja chat template used as a completion prompt template.

    Example::

        tpl = JinjaChatTemplate(source, bos_token="<s>", eos_token="</s>")
        prompt = tpl.render(messages)          # what apply_chat_template(..., tokenize=False) gives
        tpl.stop                               # ("</s>",)

    No text from a message can write the template's control strings (its
    special tokens, the structure it writes around messages, bos/eos, stop
    sequences): they are broken with a zero-width space in every field before
    the template sees it. For text without control strings the prompt is
    exactly transformers'.

    Args:
        source: the Jinja template text.
        bos_token: the ``bos_token`` variable.
        eos_token: the ``eos_token`` variable.
        stop: stop sequences (at most 4). By default: every end-of-turn string
            the template writes after an assistant turn (``<|im_end|>``,
            gpt-oss's ``<|call|>``, ``"\nUser:"`` for plain-text formats), then
            ``eos_token``, then known end markers in the source; at most 4.
        name: names the template in errors; by default ``jinja-`` and a hash.
        variables: more template variables (``enable_thinking``, other special
            tokens...). They cannot be named ``messages``, ``tools``,
            ``documents`` or ``add_generation_prompt``.
        special_tokens: the tokenizer's special tokens (and other added tokens
            that act as control strings); read from the tokenizer files by
            :meth:`from_tokenizer_config`.
        render_timeout: seconds one render may take (``None``: no limit).
        max_prompt_chars: characters the prompt, and any string or list the
            template builds, may hold (``None``: no limit).

    Raises:
        TemplateError: the template does not compile, or bad ``stop`` / ``variables``
            / limits.
    """

    neutralizes_input = True  # the context builder need not neutralize for it

    __slots__ = (
        "_compiled",
        "_control",
        "_explicit_stop",
        "_lenient",
        "_stop",
        "_tool_use",
        "bos_token",
        "eos_token",
        "limits",
        "name",
        "source",
        "special_tokens",
        "variables",
    )

    def __init__(
        self,
        source: str,
        *,
        bos_token: str = "",
        eos_token: str = "",
        stop: Sequence[str] | None = None,
        name: str | None = None,
        variables: Mapping[str, Any] | None = None,
        special_tokens: Iterable[str] = (),
        render_timeout: float | None = DEFAULT_RENDER_TIMEOUT,
        max_prompt_chars: int | None = DEFAULT_MAX_PROMPT_CHARS,
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
        self.special_tokens = tuple(t for t in special_tokens if isinstance(t, str) and t.strip())
        self.limits = _limits(render_timeout, max_prompt_chars, self.name)
        self._explicit_stop = _check_stop(stop, self.name) if stop is not None else None
        self._compiled: Compiled = _compile(source, self.name)
        # Found on first use by rendering placeholder conversations (a few ms).
        self._control: ControlStrings | None = None
        self._lenient: ControlStrings | None = None
        self._stop: tuple[str, ...] | None = None
        # transformers switches to a config's "tool_use" template when tools are given.
        self._tool_use: JinjaChatTemplate | None = None

    def __repr__(self) -> str:
        return f"JinjaChatTemplate(name={self.name!r}, stop={self.stop!r})"

    @property
    def stop(self) -> tuple[str, ...]:
        """Stop sequences for the completion request (at most 4)."""
        if self._explicit_stop is not None:
            return self._explicit_stop
        if self._stop is None:
            self._analyze()
        assert self._stop is not None
        return self._stop

    @property
    def markers(self) -> tuple[str, ...]:
        """Control strings of this format, longest first: the tokenizer's special
        tokens, the tokens and turn labels the template writes (found by rendering
        placeholder text), token-shaped strings of its source, bos/eos and other
        special-token variables, stop sequences. No message text can write them."""
        return self._controls()[0].strings

    # -- rendering ------------------------------------------------------------------

    def render(
        self,
        messages: Sequence[Message],
        *,
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        documents: list[dict[str, Any]] | None = None,
    ) -> str:
        """The prompt, exactly as transformers' ``apply_chat_template(..., tokenize=False)``.

        Control strings in the messages, tool definitions and documents are
        broken first (see the class docs); text without them is unchanged.

        Args:
            messages: the conversation, oldest first.
            add_generation_prompt: the template's ``add_generation_prompt``.
            tools: OpenAI tool definitions (the template's ``tools``).
            documents: retrieval documents (the template's ``documents``).

        Raises:
            TemplateError: image or audio parts; the template failed
                (``raise_exception``, a type error, undefined misuse...) or
                went past its time or size limit; says which template and why.
        """
        if tools is not None and self._tool_use is not None:
            return self._tool_use.render(
                messages,
                add_generation_prompt=add_generation_prompt,
                tools=tools,
                documents=documents,
            )
        reject_media(messages, self.name)
        control, lenient = self._controls()
        tools = neutralize_value(tools, control) if tools else tools
        documents = neutralize_value(documents, control) if documents else documents
        safe = [neutralize_message(m, control) for m in messages]

        def prompt(msgs: list[Message]) -> str:
            return self._render(template_messages(msgs), add_generation_prompt, tools, documents)

        if lenient is not None:
            # Reasoning templates read "</think>" in assistant text to drop
            # past reasoning. Leave those strings for the template to consume,
            # but use that prompt only if no control string came out of it
            # more often than from the fully neutralized messages.
            kept = [
                neutralize_message(m, control, lenient) if m.role == "assistant" else s
                for m, s in zip(messages, safe, strict=True)
            ]
            if kept != safe:
                strict = prompt(safe)
                try:
                    relaxed = prompt(kept)
                except TemplateError:
                    return strict
                return (
                    relaxed if _no_more(control.count(relaxed), control.count(strict)) else strict
                )
        return prompt(safe)

    def render_dicts(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        documents: list[dict[str, Any]] | None = None,
    ) -> str:
        """Render message dicts as given (no conversion) but with every string neutralized."""
        control = self._controls()[0]
        return self._render(
            neutralize_value(messages, control),
            add_generation_prompt,
            neutralize_value(tools, control) if tools else tools,
            neutralize_value(documents, control) if documents else documents,
        )

    def _render(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool,
        tools: list[dict[str, Any]] | None,
        documents: list[dict[str, Any]] | None,
        *,
        limits: RenderLimits | None = None,
    ) -> str:
        context = {"bos_token": self.bos_token, "eos_token": self.eos_token, **self.variables}
        context.update(
            messages=messages,
            tools=tools,
            documents=documents,
            add_generation_prompt=add_generation_prompt,
        )
        try:
            return render_bounded(self._compiled.template, context, limits or self.limits)
        except Exception as exc:  # a template is code: any failure is the template's
            raise TemplateError(
                f"chat template {self.name!r} failed{_where(exc)}: {_describe(exc)}"
            ) from exc

    # -- control strings and stop sequences ----------------------------------------

    def _controls(self) -> tuple[ControlStrings, ControlStrings | None]:
        if self._control is None:
            self._analyze()
        assert self._control is not None
        return self._control, self._lenient

    def _analyze(self) -> None:
        probe_limits = RenderLimits(
            timeout=min(self.limits.timeout or _PROBE_TIMEOUT, _PROBE_TIMEOUT),
            max_chars=self.limits.max_chars,
        )

        def probe(msgs: list[Message], gen: bool, tools: list[dict[str, Any]] | None) -> str:
            try:
                return self._render(template_messages(msgs), gen, tools, None, limits=probe_limits)
            except TemplateError as exc:
                if isinstance(exc.__cause__, RenderLimitError):
                    raise _ProbeLimit from exc.__cause__
                raise

        try:
            structure = analyze(probe, fatal=(_ProbeLimit,))
        except _ProbeLimit as exc:
            raise TemplateError(
                f"chat template {self.name!r} went past its limits rendering a short "
                f"placeholder conversation: {exc.__cause__}"
            ) from None
        token_vars = [
            v for k, v in self.variables.items() if k.endswith("_token") and isinstance(v, str)
        ]
        literal_tokens = [t for text in self._compiled.literals for t in token_shaped(text)]
        extra = [
            *self.special_tokens,
            *literal_tokens,
            self.bos_token,
            self.eos_token,
            *token_vars,
            *(self._explicit_stop or ()),
        ]
        control = structure.control(extra)
        if self._explicit_stop is None:
            found = [*structure.turn_ends(control), self.eos_token]
            found += derive_stop(self.source)
            self._stop = tuple(dict.fromkeys(s for s in found if s))[:MAX_STOP]
            control = ControlStrings(control.anywhere | set(self._stop), control.anchored)
        parsed = {t for text in self._compiled.parsed for t in token_shaped(text)}
        parsed &= control.anywhere
        self._lenient = control.without(parsed) if parsed else None
        self._control = control

    # -- loading --------------------------------------------------------------------

    @classmethod
    def from_tokenizer_config(
        cls,
        config: str | os.PathLike[str] | Mapping[str, Any],
        *,
        template_name: str | None = None,
        stop: Sequence[str] | None = None,
        name: str | None = None,
        render_timeout: float | None = DEFAULT_RENDER_TIMEOUT,
        max_prompt_chars: int | None = DEFAULT_MAX_PROMPT_CHARS,
    ) -> JinjaChatTemplate:
        """The chat template of a Hugging Face ``tokenizer_config.json``.

        Reads ``chat_template`` (a string, or a list of ``{"name", "template"}``
        of which ``"default"`` is used unless ``template_name`` says otherwise;
        as in transformers, a ``"tool_use"`` template, when present, is used for
        renders that pass ``tools``), ``bos_token`` and ``eos_token`` (strings
        or ``{"content": ...}`` token dicts), and the other special tokens as
        variables. A config without ``chat_template`` next to a
        ``chat_template.jinja`` file uses that file, as transformers does.

        The tokenizer's special tokens become control strings: the config's
        ``added_tokens_decoder`` and ``additional_special_tokens``, and the
        ``added_tokens`` of a ``tokenizer.json`` beside the config. Tokens
        marked ``"special": true`` all count; tokens marked ``false`` count
        when they look like markup (DeepSeek's ``<｜User｜>``, ``<think>``),
        since a server's tokenizer matches them in text all the same.

        Args:
            config: the parsed config, a path to the file, or the directory holding it.
            template_name: which named template to use.
            stop: stop sequences; derived from the template by default.
            name: names the template in errors; by default the file path.
            render_timeout: seconds one render may take.
            max_prompt_chars: the largest prompt (and intermediate value).

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
            data = _read_json(path, "tokenizer config")
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
        special = _added_tokens(data, label, base_dir)
        suffix = f":{chosen}" if len(templates) > 1 else ""
        template = cls(
            templates[chosen],
            bos_token=bos,
            eos_token=eos,
            stop=stop,
            name=label + suffix,
            variables=tokens,
            special_tokens=special,
            render_timeout=render_timeout,
            max_prompt_chars=max_prompt_chars,
        )
        if template_name is None and "tool_use" in templates:
            template._tool_use = cls(
                templates["tool_use"],
                bos_token=bos,
                eos_token=eos,
                stop=stop,
                name=label + ":tool_use",
                variables=tokens,
                special_tokens=special,
                render_timeout=render_timeout,
                max_prompt_chars=max_prompt_chars,
            )
        return template


class _ProbeLimit(Exception):
    """A probe render went past a limit (its cause says which)."""


def _no_more(counts: Counter[str], reference: Counter[str]) -> bool:
    return all(n <= reference[s] for s, n in counts.items())


def _limits(timeout: float | None, max_chars: int | None, name: str) -> RenderLimits:
    if timeout is not None and (isinstance(timeout, bool) or not timeout > 0):
        raise TemplateError(
            f"chat template {name!r}: render_timeout must be a positive number of seconds or None"
        )
    if max_chars is not None and (
        isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars <= 0
    ):
        raise TemplateError(
            f"chat template {name!r}: max_prompt_chars must be a positive integer or None"
        )
    return RenderLimits(timeout=timeout, max_chars=max_chars)


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TemplateError(f"cannot read {what} {str(path)!r}: {exc}") from exc
    if not isinstance(data, dict):
        raise TemplateError(f"{what} {str(path)!r} is not a JSON object")
    return data


def _added_tokens(data: Mapping[str, Any], label: str, base_dir: Path | None) -> list[str]:
    """The tokenizer's added tokens that act as control strings (see from_tokenizer_config)."""
    entries: list[Any] = []
    decoder = data.get("added_tokens_decoder")
    if isinstance(decoder, Mapping):
        entries += decoder.values()
    extra = data.get("additional_special_tokens")
    if isinstance(extra, list):
        entries += [
            {"content": _token_text(t, "additional_special_tokens", label), "special": True}
            for t in extra
        ]
    if base_dir is not None and (base_dir / "tokenizer.json").is_file():
        added = _read_json(base_dir / "tokenizer.json", "tokenizer").get("added_tokens")
        if isinstance(added, list):
            entries += added
    found: list[str] = []
    for entry in entries:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("content"), str):
            continue
        content = entry["content"]
        if entry.get("special") is True or is_token_shaped(content):
            found.append(content)
    return list(dict.fromkeys(found))


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


def _compile(source: str, name: str) -> Compiled:
    import jinja2

    try:
        return compiled(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(
            f"chat template {name!r} has a syntax error at line {exc.lineno}: {exc.message}"
        ) from exc


def _describe(exc: BaseException) -> str:
    import jinja2

    if isinstance(exc, jinja2.TemplateError) and type(exc) is jinja2.TemplateError:
        return str(exc)  # raise_exception(...): the template's own words
    if isinstance(exc, RenderLimitError):
        return str(exc)
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
