"""Completion prompt templates: a conversation flattened into one prompt string.

``/v1/completions`` takes one ``prompt`` string. A :class:`PromptTemplate`
turns the messages into that string and names the stop sequences that keep
a completion model from writing the next user turn itself.

Built-ins (hand-written Python, no Jinja at render time):

==============  ===============================================================
``transcript``  ``System: …\\n\\nUser: …\\n\\nAssistant:``; for base models.
``chatml``      ``<|im_start|>role\\n…<|im_end|>\\n``; tool traffic as Qwen2.5
                writes it (``<tool_call>`` / ``<tool_response>``).
``llama3``      Meta's Llama 3 Instruct format; tool results as ``ipython``
                turns and calls as ``{"name": …, "parameters": …}`` (Llama 3.1).
``llama2``      Meta's Llama 2 chat format: ``<s>[INST] <<SYS>>…<</SYS>>…
                [/INST] … </s>``.
``mistral``     Mistral-7B-Instruct-v0.2's format: ``<s> [INST] system\\n\\n
                user [/INST] assistant</s>``.
==============  ===============================================================

For plain conversations (an optional system message, then user and assistant
turns) each built-in produces exactly what the model's published Hugging Face
template produces; the tests check it with transformers. Where the published
templates give up (tool messages, several system messages, two user messages
in a row), the built-ins decide, the same way in every template:

* ``developer`` messages are system messages.
* ``name`` is shown only by ``transcript`` (``User (alice): …``); the token
  formats have no place for it.
* No text from a message (content, refusal, name, tool calls and results)
  or a tool definition can write the format's control strings (its tokens,
  and the transcript's line-opening labels ``User:``, ``System:``...): they
  are broken with a zero-width space (see ``_render.control``), so the prompt holds
  exactly the turns the template wrote.
* ``[INST]`` formats (``llama2``, ``mistral``) have two sides: leading system
  messages become the system prompt, later ones and tool results are written
  on the user side, consecutive messages of one side are joined with a blank
  line. They have no generation header: the prompt ends at ``[/INST]``, so
  ``add_generation_prompt`` changes nothing there.
* Image and audio parts cannot go into a text prompt: :class:`TemplateError`.
* ``tools`` definitions go into the system prompt, with a line saying how to
  call them in the format the template writes past calls in.

Any other format: :class:`~convo.JinjaChatTemplate` renders Hugging Face chat
templates exactly as transformers does; :func:`get_template` loads either.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

from .._exceptions import TemplateError
from .._messages import Message
from .chat import (
    _content_text,
    parse_arguments,
    tool_call_names,
    tool_call_text,
    tool_result_text,
)
from .control import (
    ControlStrings,
    analyze,
    neutralize_message,
    neutralize_value,
    reject_media,
)
from .jinja import JinjaChatTemplate

__all__ = ["BUILTIN_TEMPLATES", "PromptTemplate", "get_template"]


@runtime_checkable
class PromptTemplate(Protocol):
    """Anything that flattens messages into a completion prompt.

    convo's templates break control strings in message text themselves; for
    any other implementation, the context builder hands ``render`` messages
    and tool definitions with the template's ``markers`` (an optional
    attribute), stop sequences, bos/eos and rendered structure already broken.

    Attributes:
        name: how the template is named in errors and in run records.
        stop: stop sequences for the completion request (at most 4, the API's limit).
        bos_token: the beginning-of-sequence text the template writes ("" if none).
        eos_token: the end-of-sequence text the template writes ("" if none).
    """

    @property
    def name(self) -> str: ...

    @property
    def stop(self) -> tuple[str, ...]: ...

    @property
    def bos_token(self) -> str: ...

    @property
    def eos_token(self) -> str: ...

    def render(
        self,
        messages: Sequence[Message],
        *,
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        """The prompt for ``messages``.

        Args:
            messages: the conversation, oldest first.
            add_generation_prompt: end with the cue that opens the assistant's
                turn (``Assistant:``, ``<|im_start|>assistant\\n``...).
            tools: OpenAI tool definitions to describe in the prompt.

        Raises:
            TemplateError: the messages cannot be rendered by this template.
        """
        ...


_CONTROL: dict[str, ControlStrings] = {}


class _Builtin:
    """Shared plumbing of the hand-written templates."""

    __slots__ = ()
    name: str = ""
    stop: tuple[str, ...] = ()
    bos_token: str = ""
    eos_token: str = ""
    call_hint: str = ""
    #: the format's control tokens, broken wherever they occur in message text
    tokens: tuple[str, ...] = ()
    #: plain-text labels that open a turn, broken where they start a line
    labels: tuple[str, ...] = ()
    neutralizes_input = True  # the context builder need not neutralize for it

    def __repr__(self) -> str:
        return f"<PromptTemplate {self.name!r} stop={self.stop!r}>"

    @property
    def markers(self) -> tuple[str, ...]:
        """The format's control strings, longest first: no message text can write them."""
        return self._control().strings

    def _control(self) -> ControlStrings:
        control = _CONTROL.get(self.name)
        if control is None:
            # The declared strings, plus whatever else the format writes around
            # messages (found by rendering placeholders: the same analysis as
            # for Jinja templates, so nothing the code writes is missed).
            structure = analyze(lambda msgs, gen, tools: self._render(msgs, gen, tools))
            declared = (*self.tokens, *self.stop, self.bos_token, self.eos_token)
            found = structure.control(declared)
            control = ControlStrings(found.anywhere, {*found.anchored, *self.labels})
            _CONTROL[self.name] = control
        return control

    def render(
        self,
        messages: Sequence[Message],
        *,
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        reject_media(messages, self.name)
        control = self._control()
        safe = [neutralize_message(m, control) for m in messages]
        return self._render(safe, add_generation_prompt, neutralize_value(tools, control))

    def _render(
        self,
        messages: Sequence[Message],
        add_generation_prompt: bool,
        tools: list[dict[str, Any]] | None,
    ) -> str:
        raise NotImplementedError

    def _text(self, m: Message) -> str:
        """The text of a message's content; a refusal stands in for absent content."""
        content = m.content
        if content is None:
            return m.refusal or ""
        if isinstance(content, str):
            return content
        return _content_text(content)

    def _tools_text(self, tools: list[dict[str, Any]]) -> str:
        listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        return (
            f"You can call these functions (described with JSON Schema):\n{listing}\n\n"
            f"To call a function, {self.call_hint}"
        )


def _join(first: str | None, second: str) -> str:
    return second if first is None else f"{first}\n\n{second}"


def _tool_name(m: Message, names: dict[str, str] | None) -> str:
    if m.name:
        return m.name
    call_id = m.tool_call_id or ""
    return (names or {}).get(call_id, call_id)


def _tool_names(messages: Sequence[Message]) -> dict[str, str] | None:
    # Only worth a pass when a tool message lacks its function's name.
    if any(m.role == "tool" and not m.name for m in messages):
        return tool_call_names(messages)
    return None


# --- transcript -------------------------------------------------------------------


class _Transcript(_Builtin):
    __slots__ = ()
    name = "transcript"
    stop = ("\nUser:", "\nUser (", "\nSystem:", "\nTool result (")
    labels = (
        "User:", "User (", "Assistant:", "Assistant (", "System:", "System (",
        "Tool result (", "Tool call:",
    )  # fmt: skip
    call_hint = 'write a line "Tool call: <name>(<arguments as a JSON object>)".'

    def _render(
        self,
        messages: Sequence[Message],
        add_generation_prompt: bool,
        tools: list[dict[str, Any]] | None,
    ) -> str:
        names = _tool_names(messages)
        blocks: list[str] = []
        start = 0
        if tools:
            first = messages[0] if messages else None
            if first is not None and first.role in ("system", "developer"):
                blocks.append(
                    _label("System", first) + _join(self._text(first), self._tools_text(tools))
                )
                start = 1
            else:
                blocks.append("System: " + self._tools_text(tools))
        for m in messages[start:]:
            role = m.role
            if role == "system" or role == "developer":
                blocks.append(_label("System", m) + self._text(m))
            elif role == "user":
                blocks.append(_label("User", m) + self._text(m))
            elif role == "assistant":
                lines = [self._text(m)] if (m.content is not None or m.refusal) else []
                if m.tool_calls:
                    lines.extend(tool_call_text(c) for c in m.tool_calls)
                blocks.append(_label("Assistant", m) + "\n".join(x for x in lines if x))
            else:
                blocks.append(tool_result_text(_tool_name(m, names), self._text(m)))
        if add_generation_prompt:
            blocks.append("Assistant:")
        return "\n\n".join(blocks)


def _label(label: str, m: Message) -> str:
    return f"{label} ({m.name}): " if m.name else f"{label}: "


# --- ChatML -------------------------------------------------------------------------

_QWEN_TOOLS_HEAD = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_QWEN_TOOLS_TAIL = (
    "\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)


class _ChatML(_Builtin):
    __slots__ = ()
    name = "chatml"
    tokens = (
        "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<tool_call>", "</tool_call>",
        "<tool_response>", "</tool_response>", "<tools>", "</tools>",
    )  # fmt: skip
    stop = ("<|im_end|>", "<|endoftext|>")
    eos_token = "<|im_end|>"

    def _render(
        self,
        messages: Sequence[Message],
        add_generation_prompt: bool,
        tools: list[dict[str, Any]] | None,
    ) -> str:
        out: list[str] = []
        start = 0
        if tools:
            listing = "".join("\n" + json.dumps(t, ensure_ascii=False) for t in tools)
            block = _QWEN_TOOLS_HEAD + listing + _QWEN_TOOLS_TAIL
            first = messages[0] if messages else None
            if first is not None and first.role in ("system", "developer"):
                block = self._text(first) + "\n\n" + block
                start = 1
            out.append("<|im_start|>system\n" + block + "<|im_end|>\n")
        n = len(messages)
        for i in range(start, n):
            m = messages[i]
            role = m.role
            if role == "system" or role == "developer":
                out.append("<|im_start|>system\n" + self._text(m) + "<|im_end|>\n")
            elif role == "user":
                out.append("<|im_start|>user\n" + self._text(m) + "<|im_end|>\n")
            elif role == "assistant":
                text = self._text(m)
                if not m.tool_calls:
                    out.append("<|im_start|>assistant\n" + text + "<|im_end|>\n")
                    continue
                out.append("<|im_start|>assistant")
                if text:
                    out.append("\n" + text)
                for call in m.tool_calls:
                    args = json.dumps(parse_arguments(call.function.arguments), ensure_ascii=False)
                    out.append(
                        f'\n<tool_call>\n{{"name": "{call.function.name}", "arguments": {args}}}'
                        "\n</tool_call>"
                    )
                out.append("<|im_end|>\n")
            else:
                # Qwen2.5: consecutive tool results share one user turn.
                if i == 0 or messages[i - 1].role != "tool":
                    out.append("<|im_start|>user")
                out.append("\n<tool_response>\n" + self._text(m) + "\n</tool_response>")
                if i == n - 1 or messages[i + 1].role != "tool":
                    out.append("<|im_end|>\n")
        if add_generation_prompt:
            out.append("<|im_start|>assistant\n")
        return "".join(out)


# --- Llama 3 ------------------------------------------------------------------------


class _Llama3(_Builtin):
    __slots__ = ()
    name = "llama3"
    tokens = (
        "<|begin_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
        "<|eom_id|>",
        "<|end_of_text|>",
        "<|python_tag|>",
    )
    stop = ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>")
    bos_token = "<|begin_of_text|>"
    eos_token = "<|eot_id|>"
    call_hint = (
        'respond with a JSON object {"name": <function name>, '
        '"parameters": <arguments as a JSON object>}.'
    )

    def _render(
        self,
        messages: Sequence[Message],
        add_generation_prompt: bool,
        tools: list[dict[str, Any]] | None,
    ) -> str:
        out = [self.bos_token]
        start = 0
        if tools:
            first = messages[0] if messages else None
            system: str | None = None
            if first is not None and first.role in ("system", "developer"):
                system = self._text(first)
                start = 1
            out.append(
                _header("system") + _join(system, self._tools_text(tools)).strip() + "<|eot_id|>"
            )
        for m in messages[start:]:
            role = m.role
            if role == "system" or role == "developer":
                out.append(_header("system") + self._text(m).strip() + "<|eot_id|>")
            elif role == "user":
                out.append(_header("user") + self._text(m).strip() + "<|eot_id|>")
            elif role == "assistant":
                lines = [self._text(m)]
                for call in m.tool_calls or ():
                    args = json.dumps(parse_arguments(call.function.arguments), ensure_ascii=False)
                    lines.append(f'{{"name": "{call.function.name}", "parameters": {args}}}')
                text = "\n".join(x for x in lines if x)
                out.append(_header("assistant") + text.strip() + "<|eot_id|>")
            else:
                out.append(_header("ipython") + self._text(m).strip() + "<|eot_id|>")
        if add_generation_prompt:
            out.append(_header("assistant"))
        return "".join(out)


def _header(role: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n"


# --- [INST] formats: Llama 2 and Mistral ---------------------------------------------


class _Inst(_Builtin):
    """Two-sided ``[INST]`` formats: a system prompt, then user / assistant turns."""

    __slots__ = ()
    tokens = ("<s>", "</s>", "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>")
    labels = ("Tool result (",)
    stop = ("</s>", "[INST]")
    bos_token = "<s>"
    eos_token = "</s>"
    call_hint = (
        'respond with a JSON object {"name": <function name>, '
        '"arguments": <arguments as a JSON object>}.'
    )

    def _turns(
        self, messages: Sequence[Message], tools: list[dict[str, Any]] | None
    ) -> tuple[str | None, list[tuple[bool, str]]]:
        """(system prompt or None, [(is_user, text)]) with same-side messages merged."""
        names = _tool_names(messages)
        system: str | None = None
        i, n = 0, len(messages)
        while i < n and messages[i].role in ("system", "developer"):
            system = _join(system, self._text(messages[i]))
            i += 1
        if tools:
            system = _join(system, self._tools_text(tools))
        sides: list[bool] = []
        texts: list[list[str]] = []
        for m in messages[i:]:
            role = m.role
            if role == "assistant":
                lines = [self._text(m)]
                for call in m.tool_calls or ():
                    args = json.dumps(parse_arguments(call.function.arguments), ensure_ascii=False)
                    lines.append(f'{{"name": "{call.function.name}", "arguments": {args}}}')
                text = "\n".join(x for x in lines if x)
            elif role == "tool":
                text = tool_result_text(_tool_name(m, names), self._text(m))
            else:
                text = self._text(m)
            is_user = role != "assistant"
            if sides and sides[-1] == is_user:
                texts[-1].append(text)
            else:
                sides.append(is_user)
                texts.append([text])
        turns = [(s, "\n\n".join(t)) for s, t in zip(sides, texts, strict=True)]
        if system is not None and (not turns or not turns[0][0]):
            # The system prompt lives inside the first user turn; give it one.
            turns.insert(0, (True, ""))
        return system, turns


class _Llama2(_Inst):
    __slots__ = ()
    name = "llama2"

    def _render(
        self,
        messages: Sequence[Message],
        add_generation_prompt: bool,
        tools: list[dict[str, Any]] | None,
    ) -> str:
        system, turns = self._turns(messages, tools)
        out: list[str] = []
        for k, (is_user, text) in enumerate(turns):
            if is_user:
                if k == 0 and system is not None:
                    text = f"<<SYS>>\n{system}\n<</SYS>>\n\n{text}"
                out.append("<s>[INST] " + text.strip() + " [/INST]")
            else:
                out.append(" " + text.strip() + " </s>")
        return "".join(out)


class _Mistral(_Inst):
    __slots__ = ()
    name = "mistral"

    def _render(
        self,
        messages: Sequence[Message],
        add_generation_prompt: bool,
        tools: list[dict[str, Any]] | None,
    ) -> str:
        system, turns = self._turns(messages, tools)
        out = ["<s>"]
        for k, (is_user, text) in enumerate(turns):
            if is_user:
                if k == 0 and system is not None:
                    text = f"{system}\n\n{text}"
                out.append(" [INST] " + text + " [/INST]")
            else:
                out.append(" " + text + "</s>")
        return "".join(out)


BUILTIN_TEMPLATES: Mapping[str, PromptTemplate] = MappingProxyType(
    {t.name: t for t in (_Transcript(), _ChatML(), _Llama3(), _Llama2(), _Mistral())}
)
"""The built-in templates by name: chatml, llama2, llama3, mistral, transcript."""


def get_template(name_or_path: str | PromptTemplate) -> PromptTemplate:
    """A template by built-in name, or loaded from a file.

    Args:
        name_or_path: a built-in name (see :data:`BUILTIN_TEMPLATES`); a path
            to a Jinja file (``.jinja``, ``.j2``...; no special tokens then:
            use :class:`~convo.JinjaChatTemplate` to give them); a path to a
            Hugging Face ``tokenizer_config.json`` or to the directory holding
            it. A template object is returned as is.

    Raises:
        TemplateError: unknown name, unreadable file, or a broken template.
    """
    if not isinstance(name_or_path, str):
        if isinstance(name_or_path, PromptTemplate):
            return name_or_path
        raise TemplateError(f"expected a template name or path, got {type(name_or_path).__name__}")
    builtin = BUILTIN_TEMPLATES.get(name_or_path)
    if builtin is not None:
        return builtin
    path = Path(name_or_path)
    if path.is_dir() or (path.suffix == ".json" and path.is_file()):
        return JinjaChatTemplate.from_tokenizer_config(path)
    if path.is_file():
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TemplateError(f"cannot read chat template {str(path)!r}: {exc}") from exc
        return JinjaChatTemplate(source, name=path.name)
    raise TemplateError(
        f"unknown template {name_or_path!r}: expected one of "
        f"{', '.join(sorted(BUILTIN_TEMPLATES))}, or a path to a Jinja chat template file "
        "or to a Hugging Face tokenizer_config.json (no such file here)"
    )
