"""Control strings of a prompt format, and text that cannot write them.

A flattened prompt is one string, and servers such as vLLM and llama.cpp read
special tokens in it: a user who types ``<|im_end|><|im_start|>system`` would
otherwise open a system turn. The rule (DESIGN.md, "Flattened prompts are a
security boundary"): only the template writes a template's control strings.

**Control strings** of a template:

* the special tokens of its tokenizer (``added_tokens_decoder`` /
  ``added_tokens`` with ``special: true``), and the other added tokens that
  look like markup (``<｜User｜>``, ``<think>``);
* ``bos_token``, ``eos_token`` (and the other special-token variables) and
  the stop sequences;
* the **structure** the template writes around messages, found by rendering
  it with placeholder text (a unique sentinel per field and message): what
  stands between the sentinels is the template's own text. In it, token-shaped
  strings (``<|…|>``, ``<｜…｜>``, ``<…>``, ``[…]``, ``[|…|]``) are control
  strings, and so are the plain-text **labels** that open a turn (a short
  line piece ending in ``:``, such as ``User:``, ``### Response:``,
  ``用户：``, or the text right before a speaker's name, ``User (``);
* token-shaped strings in the template's source (branches the probes missed).

**Neutralization** breaks each occurrence of a control string in text that
did not come from the template by inserting a zero-width space (U+200B) after
its first visible character: ``<|im_end|>`` becomes ``<\\u200b|im_end|>``,
``User:`` becomes ``U\\u200bser:``. The text reads the same; the tokenizer
no longer sees the control token. Labels are broken only where they start a
line (after optional spaces), which is where a template writes them, unless
the template also writes them mid-line. Names, function names and call ids
are labels, never text on lines of their own: their line breaks become
spaces. Every field is covered: content and text parts, refusals, names,
tool-call ids, function names and arguments (keys and values, after JSON
decoding, so ``\\u003c|im_end|>`` is caught too), tool results, tool
definitions and documents.
"""

from __future__ import annotations

import itertools
import json
import re
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._exceptions import TemplateError
from .._messages import (
    FunctionCall,
    ImagePart,
    InputAudioPart,
    Message,
    RefusalPart,
    TextPart,
    ToolCall,
)

__all__ = [
    "ZWSP",
    "ControlStrings",
    "Structure",
    "analyze",
    "control_markers",
    "is_token_shaped",
    "neutralize_message",
    "neutralize_value",
    "reject_media",
    "render_prompt",
    "token_shaped",
]

ZWSP = "\u200b"

# Strings shaped like a chat format's special tokens.
_TOKEN = re.compile(
    r"<\|[^\s<>|]{1,80}\|>"  # <|im_start|>, <|eot_id|>, <|START_OF_TURN_TOKEN|>
    r"|<｜[^\s<>｜]{1,80}｜>"  # DeepSeek: <｜User｜>, <｜end▁of▁sentence｜>
    r"|<<?/?[^\W\d][^\s<>]{0,80}>>?"  # <s>, </s>, <start_of_turn>, <tool_call>, <<SYS>>
    r"|\[\|[^\s\[\]|]{1,80}\|\]"  # [|user|], [|endofturn|]
    r"|\[/?[^\W\d][^\s\[\]]{0,80}\]"  # [INST], [/INST], [SYSTEM_PROMPT], [gMASK]
)
_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_LABEL_MAX = 40
_TAIL = 4 * _LABEL_MAX
# Token shapes that ordinary text does not use. When a template's own control
# tokens have one of these shapes, every string of that shape counts: its
# tokenizer reserves more of them than a template names (Llama 3's
# <|reserved_special_token_N|>, ChatGLM's <|observation|>), and a template
# loaded without its tokenizer cannot list them. (<word> and [WORD] are left
# to the listed tokens: HTML and Markdown use those shapes.)
_FAMILIES = (
    re.compile(r"<\|[^\s<>|]{1,80}\|>"),
    re.compile(r"<｜[^\s<>｜]{1,80}｜>"),
    re.compile(r"\[\|[^\s\[\]|]{1,80}\|\]"),
)


def token_shaped(text: str) -> list[str]:
    """The token-shaped strings in ``text`` (``<|im_end|>``, ``[INST]``, ``<｜User｜>``...)."""
    return _TOKEN.findall(text)


def is_token_shaped(text: str) -> bool:
    """Whether ``text`` as a whole looks like a special token."""
    return _TOKEN.fullmatch(text) is not None


def _is_label(text: str) -> bool:
    return (
        0 < len(text) <= _LABEL_MAX and (text[0].isalpha() or text[0] == "#") and text[-1] in ":："
    )


def _trie(strings: Iterable[str]) -> str:
    """One regex alternation for many literals, factored by prefix (fast on 800 tokens)."""
    root: dict[str, Any] = {}
    for s in strings:
        node = root
        for ch in s:
            node = node.setdefault(ch, {})
        node[""] = True

    def build(node: dict[str, Any]) -> str:
        branches = [re.escape(ch) + build(child) for ch, child in node.items() if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body

    return build(root)


def _break(match: re.Match[str]) -> str:
    s = match.group()
    i = len(s) - len(s.lstrip())
    return s[: i + 1] + ZWSP + s[i + 1 :]


class ControlStrings:
    """A format's control strings, and the one regex that finds them in text.

    Args:
        anywhere: strings neutralized wherever they occur (tokens).
        anchored: plain-text labels neutralized where they start a line
            (after optional spaces and tabs), or start the text.
    """

    __slots__ = (
        "_label_starts",
        "_labels",
        "_may_hold",
        "_pattern",
        "_tokens",
        "anchored",
        "anywhere",
        "families",
    )

    def __init__(
        self,
        anywhere: Iterable[str] = (),
        anchored: Iterable[str] = (),
        families: Iterable[str] | None = None,
    ) -> None:
        self.anywhere = frozenset(s for s in anywhere if s and s.strip() and ZWSP not in s)
        self.anchored = (
            frozenset(s for s in anchored if s and s.strip() and ZWSP not in s) - self.anywhere
        )
        #: token shapes matched whole (see _FAMILIES); by default those of the tokens
        self.families = (
            tuple(f.pattern for f in _FAMILIES if any(f.fullmatch(s) for s in self.anywhere))
            if families is None
            else tuple(families)
        )
        tokens = [_trie(self.anywhere)] if self.anywhere else []
        # (listed strings first: a family match must not cut a longer listed one short)
        tokens.extend(self.families)
        labels = (
            f"(?:^|(?<=[{_LINE_BREAKS}]))[ \\t]*{_trie(self.anchored)}" if self.anchored else ""
        )
        # Two patterns for speed: tokens start with a few characters ("<", "[")
        # that the regex engine scans for quickly; labels start anywhere a line
        # does, so they are looked for only in text that holds one somewhere.
        self._tokens = re.compile("|".join(tokens)) if tokens else None
        self._labels = re.compile(labels) if labels else None
        self._pattern = (
            re.compile("|".join([*tokens, labels] if labels else tokens))
            if (tokens or labels)
            else None
        )
        # Cheap tests that skip the regexes for most text (a `c in text` is a
        # memchr): a character some token starts with; a line break, or a label
        # at the very start.
        firsts = {s[0] for s in self.anywhere}
        firsts.update(f.removeprefix("\\")[0] for f in self.families)
        self._may_hold = tuple(sorted(firsts))
        self._label_starts = tuple(self.anchored)

    @property
    def strings(self) -> tuple[str, ...]:
        """Every control string, longest first."""
        return tuple(sorted(self.anywhere | self.anchored, key=lambda s: (-len(s), s)))

    def without(self, strings: Iterable[str]) -> ControlStrings:
        """These control strings minus ``strings`` (and minus the shapes that would still match them)."""
        drop = set(strings)
        families = [f for f in self.families if not any(re.fullmatch(f, s) for s in drop)]
        return ControlStrings(self.anywhere - drop, self.anchored - drop, families)

    def clean(self, text: str) -> str:
        """``text`` with every control string broken by a zero-width space."""
        # Repeat until nothing is found: breaking a long control string at its
        # start can leave a shorter one inside it whole.
        while True:
            found = 0
            if self._tokens is not None and any(c in text for c in self._may_hold):
                text, n = self._tokens.subn(_break, text)
                found += n
            if self._labels is not None and (
                any(c in text for c in _LINE_BREAKS)
                or text.lstrip(" \t").startswith(self._label_starts)
            ):
                text, n = self._labels.subn(_break, text)
                found += n
            if not found:
                return text

    def count(self, text: str) -> Counter[str]:
        """How often each control string occurs in ``text`` (labels where they start a line)."""
        if self._pattern is None:
            return Counter()
        return Counter(m.group().lstrip(" \t") for m in self._pattern.finditer(text))

    def find(self, text: str) -> Iterator[str]:
        """The control strings in ``text``, in order."""
        if self._pattern is not None:
            for m in self._pattern.finditer(text):
                yield m.group().lstrip(" \t")

    def __bool__(self) -> bool:
        return self._pattern is not None

    def __repr__(self) -> str:
        return f"ControlStrings({len(self.anywhere)} tokens, labels={sorted(self.anchored)!r})"


# --- neutralizing messages -----------------------------------------------------------


def _one_line(text: str) -> str:
    # A name is a label: it never starts a line of its own in the prompt.
    if any(c in text for c in _LINE_BREAKS):
        text = "".join(" " if c in _LINE_BREAKS else c for c in text)
    return text


def neutralize_value(value: Any, control: ControlStrings) -> Any:
    """``value`` (JSON-like: str, list, dict, scalars) with control strings broken in every string, keys too."""
    if isinstance(value, str):
        return control.clean(value)
    if isinstance(value, dict):
        return {
            (control.clean(k) if isinstance(k, str) else k): neutralize_value(v, control)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [neutralize_value(v, control) for v in value]
    return value


def _arguments(raw: str, control: ControlStrings) -> str:
    try:
        value = json.loads(raw)
    except ValueError:
        return control.clean(raw)
    cleaned = neutralize_value(value, control)
    # Templates decode the arguments before writing them, so the decoded
    # strings are what must be clean (a JSON escape hides nothing then).
    return raw if cleaned == value else json.dumps(cleaned, ensure_ascii=False)


def _call(call: ToolCall, control: ControlStrings) -> ToolCall:
    fn = call.function
    new_fn = FunctionCall(
        name=_one_line(control.clean(fn.name)), arguments=_arguments(fn.arguments, control)
    )
    new_id = _one_line(control.clean(call.id))
    if new_fn == fn and new_id == call.id:
        return call
    return ToolCall(id=new_id, type=call.type, function=new_fn)


def neutralize_message(
    m: Message, control: ControlStrings, content_control: ControlStrings | None = None
) -> Message:
    """``m`` with control strings broken in every rendered field.

    Args:
        m: any message (all roles: a system message may carry a summary or
            text the application took from elsewhere).
        control: the template's control strings.
        content_control: what to break in the content of this message
            instead of ``control`` (see :class:`~convo.JinjaChatTemplate`'s
            reasoning templates).
    """
    if not control:
        return m
    body = content_control or control
    update: dict[str, Any] = {}
    content = m.content
    if isinstance(content, str):
        fixed: Any = body.clean(content)
        if fixed != content:
            update["content"] = fixed
    elif isinstance(content, list):
        parts = [
            p.model_copy(update={"text": body.clean(p.text)})
            if isinstance(p, TextPart)
            else p.model_copy(update={"refusal": body.clean(p.refusal)})
            if isinstance(p, RefusalPart)
            else p
            for p in content
        ]
        if parts != content:
            update["content"] = parts
    if m.refusal is not None:
        fixed = body.clean(m.refusal)
        if fixed != m.refusal:
            update["refusal"] = fixed
    for key in ("name", "tool_call_id"):
        value = getattr(m, key)
        if value is not None:
            fixed = _one_line(control.clean(value))
            if fixed != value:
                update[key] = fixed
    if m.tool_calls:
        calls = [_call(c, control) for c in m.tool_calls]
        if any(a is not b for a, b in zip(calls, m.tool_calls, strict=True)):
            update["tool_calls"] = calls
    return m.model_copy(update=update) if update else m


def reject_media(messages: Sequence[Message], template_name: str) -> None:
    """Raise :class:`TemplateError` if a message holds image or audio parts.

    A completion prompt is text: an image part would be dropped, or turned
    into a media token with no image behind it.
    """
    for m in messages:
        if isinstance(m.content, list):
            for part in m.content:
                if isinstance(part, (ImagePart, InputAudioPart)):
                    raise TemplateError(
                        f"template {template_name!r} cannot put {part.type} content parts into "
                        f"a text prompt ({m.role} message); use the chat endpoint for media"
                    )


# --- finding a template's structure by rendering placeholders -----------------------

# 9 characters, letters and digits: Mistral's templates insist on such call ids.
_SENTINEL = re.compile(r"zq(\d{5})xz")
_TOOL_DEF = "tool_def"
_CALL_ID = "call_id"
_CALL_FIELDS = frozenset({"function", "args", _CALL_ID})
_ASSISTANT_FIELDS = frozenset({"assistant", "function", "args"})
_PIECES = re.compile(f"{_TOKEN.pattern}|[{_LINE_BREAKS}]")

Render = Callable[[list[Message], bool, "list[dict[str, Any]] | None"], str]


@dataclass(slots=True)
class _Field:
    kind: str  # system, user, assistant, tool, name, function, args, call_id, tool_def
    message: int  # index in the probe conversation (-1: tool definitions)
    call: int = -1  # index of the tool call in its message


@dataclass(slots=True)
class _Probe:
    fields: list[_Field] = field(default_factory=list)

    def __call__(self, kind: str, message: int, call: int = -1) -> str:
        self.fields.append(_Field(kind, message, call))
        return f"zq{len(self.fields) - 1:05d}xz"


def _probes() -> Iterator[tuple[_Probe, list[Message], list[dict[str, Any]] | None, bool]]:
    """Conversations of placeholders covering every role transition and field."""

    def plain(p: _Probe, roles: str, named: bool = False) -> list[Message]:
        out = []
        for i, r in enumerate(roles):
            role = {"s": "system", "u": "user", "a": "assistant"}[r]
            name = {"name": p("name", i)} if named else {}
            out.append(Message(role=role, content=p(role, i), **name))
        return out

    for roles, named in (("suau", False), ("uau", False), ("suau", True), ("uasu", False)):
        p = _Probe()
        yield p, plain(p, roles, named), None, True
    for with_tools in (True, False):
        for calls, with_content in ((2, True), (1, False)):
            p = _Probe()
            msgs = plain(p, "su")
            tool_calls = [
                ToolCall(
                    id=p(_CALL_ID, 2, k),
                    function=FunctionCall(
                        name=p("function", 2, k),
                        arguments=json.dumps({p("args", 2, k): p("args", 2, k)}),
                    ),
                )
                for k in range(calls)
            ]
            msgs.append(
                Message.assistant(
                    p("assistant", 2) if with_content else None, tool_calls=tool_calls
                )
            )
            for k, call in enumerate(tool_calls):
                i = len(msgs)
                msgs.append(Message.tool(p("tool", i), tool_call_id=call.id, name=p("name", i)))
            i = len(msgs)
            msgs += [Message.assistant(p("assistant", i)), Message.user(p("user", i + 1))]
            tools = None
            if with_tools:
                name, desc, param, pdesc = (p(_TOOL_DEF, -1) for _ in range(4))
                tools = [
                    {
                        "type": "function",
                        "function": {
                            "name": name,
                            "description": desc,
                            "parameters": {
                                "type": "object",
                                "properties": {param: {"type": "string", "description": pdesc}},
                                "required": [param],
                            },
                        },
                    }
                ]
            yield p, msgs, tools, True
    p = _Probe()
    yield p, plain(p, "suau"), None, False


@dataclass(frozen=True, slots=True)
class Structure:
    """What a template writes around messages, found by :func:`analyze`.

    Attributes:
        tokens: token-shaped strings the template wrote.
        labels: plain-text labels that open turns, and whether the template
            always writes each at the start of a line.
        outputs: the probe renders, with where each field's placeholder landed
            (for :meth:`turn_ends`).
    """

    tokens: frozenset[str]
    labels: dict[str, bool]
    outputs: tuple[tuple[str, tuple[tuple[int, int, _Field], ...]], ...]

    def control(self, extra: Iterable[str] = ()) -> ControlStrings:
        """The control strings: these tokens and labels, plus ``extra`` (matched anywhere)."""
        floating = [label for label, anchored in self.labels.items() if not anchored]
        anchored = [label for label, anchored in self.labels.items() if anchored]
        return ControlStrings([*self.tokens, *floating, *extra], anchored)

    def turn_ends(self, control: ControlStrings) -> list[str]:
        """What the template writes right after an assistant's turn, in order found.

        For each assistant message of the probes: the first control string
        after its last field, skipping those the template also writes between
        two tool calls of one message (``</tool_call>`` is not the end of a
        turn; gpt-oss's ``<|call|>`` is). A label gives ``"\\n" + label`` when
        the template writes it at line starts.
        """
        between: set[str] = set()
        found: list[str] = []
        for text, spots in self.outputs:
            for (_, end, f), (start, _, g) in itertools.pairwise(spots):
                same_message = f.message == g.message and g.call == f.call + 1
                if same_message and f.kind in _CALL_FIELDS and g.kind in _CALL_FIELDS:
                    between.update(control.find(text[end:start]))
        for text, spots in self.outputs:
            for msg in sorted({f.message for _, _, f in spots if f.kind in _ASSISTANT_FIELDS}):
                turn_end = self._turn_end(text, spots, msg, control, between)
                if turn_end is not None and turn_end not in found:
                    found.append(turn_end)
        return found

    @staticmethod
    def _turn_end(
        text: str,
        spots: tuple[tuple[int, int, _Field], ...],
        msg: int,
        control: ControlStrings,
        between: set[str],
    ) -> str | None:
        # Where the message's own fields end: a tool message that quotes the
        # call id is not the assistant's, so ids do not count here.
        later = [s for s, _, f in spots if f.message > msg and f.kind != _CALL_ID]
        stop_at = min(later, default=len(text))
        # A later message may repeat a field (gpt-oss names the function again
        # in the tool result): only where each field is first written counts.
        first: dict[int, tuple[int, int]] = {}
        for s, e, f in spots:
            first.setdefault(id(f), (s, e))
        ends = [
            e
            for s, e in {
                first[id(f)] for _, _, f in spots if f.message == msg and f.kind != _CALL_ID
            }
            if s < stop_at
        ]
        if not ends:
            return None
        pos = max(ends)
        following: list[tuple[int, int, _Field | None]] = [x for x in spots if x[0] >= pos]
        following.append((len(text), len(text), None))
        for start, stop, owner in following:
            for found in control.find(text[pos:start]):
                if found not in between:
                    return "\n" + found if found in control.anchored else found
            if owner is None or owner.kind != _CALL_ID or owner.message != msg:
                return None
            pos = stop  # the message's own call id (Mistral writes it last): read on
        return None


def analyze(render: Render, *, fatal: tuple[type[BaseException], ...] = ()) -> Structure:
    """Render a template with placeholder text and read its structure off the output.

    Args:
        render: ``render(messages, add_generation_prompt, tools)``; probes
            the template rejects (it raises) are skipped.
        fatal: exceptions that end the analysis instead (a time limit hit on
            a conversation of placeholders will not go better on real ones).
    """
    tokens: set[str] = set()
    labels: dict[str, bool] = {}
    outputs = []
    for probe, messages, tools, gen in _probes():
        try:
            text = render(messages, gen, tools)
        except fatal:
            raise
        except Exception:  # noqa: BLE001, S112 - a template may reject a shape; others will do
            continue
        spots = []
        for m in _SENTINEL.finditer(text):
            k = int(m.group(1))
            if k < len(probe.fields):
                spots.append((m.start(), m.end(), probe.fields[k]))
        outputs.append((text, tuple(spots)))
        bounds = [(0, 0, None), *spots, (len(text), len(text), None)]
        for (_, end, left), (start, _, right) in itertools.pairwise(bounds):
            chunk = text[end:start]
            tokens.update(_TOKEN.findall(chunk))
            if _is_tool_def(left) and _is_tool_def(right):
                continue  # inside the tool descriptions: not turn structure
            for label, anchored in _labels(
                chunk, at_start=left is None, before_name=_is_name(right)
            ):
                labels[label] = labels.get(label, True) and anchored
    return Structure(frozenset(tokens), labels, tuple(outputs))


def _is_tool_def(f: _Field | None) -> bool:
    return f is not None and f.kind == _TOOL_DEF


def _is_name(f: _Field | None) -> bool:
    return f is not None and f.kind == "name"


def _labels(chunk: str, *, at_start: bool, before_name: bool) -> Iterator[tuple[str, bool]]:
    """The label that introduces what follows a structure chunk, if any, and whether it starts a line.

    A label is the chunk's last piece of text (after its last token and line
    break), followed by nothing but spaces: ``"\n\nUser: "``, ``"Question:\n"``,
    ``"</s>USER: "``. A colon must end it (``User:``, ``用户：``), unless a
    speaker's name follows (``"User ("``). Text before a token or in the
    middle of a line of prose (``"...within <tools></tools> XML tags:"``) is
    not a label.
    """
    # "User (" + name: a space before the name would belong to the label
    tail = chunk if before_name else chunk.rstrip()
    if len(tail) > _TAIL:  # a label is short: only the end of a long chunk matters
        tail, at_start = tail[-_TAIL:], False
    cut = 0
    after_break = at_start
    for m in _PIECES.finditer(tail):
        cut = m.end()
        after_break = m.group() in _LINE_BREAKS
    piece = tail[cut:]
    label = piece.strip(" \t")
    if not label or any(c in label for c in _LINE_BREAKS):
        return
    starts_line = after_break and not piece[: len(piece) - len(piece.lstrip(" \t"))].strip(" \t")
    if (not before_name and _is_label(label)) or (
        before_name and len(label) <= _LABEL_MAX and label[0].isalpha()
    ):
        yield label, starts_line


# --- the builder's entry point -----------------------------------------------------


def control_markers(template: Any) -> tuple[str, ...]:
    """The control strings of any template: declared markers, stop sequences, bos/eos."""
    found = {
        *getattr(template, "markers", ()),
        *template.stop,
        template.bos_token,
        template.eos_token,
    }
    return tuple(sorted((m for m in found if m and m.strip()), key=len, reverse=True))


_CUSTOM: weakref.WeakKeyDictionary[Any, ControlStrings] = weakref.WeakKeyDictionary()


def _custom_control(template: Any) -> ControlStrings:
    try:
        return _CUSTOM[template]
    except (KeyError, TypeError):  # TypeError: not weak-referenceable; probe each time
        pass
    structure = analyze(
        lambda msgs, gen, tls: str(template.render(msgs, add_generation_prompt=gen, tools=tls))
    )
    control = structure.control(control_markers(template))
    try:
        _CUSTOM[template] = control
    except TypeError:
        pass
    return control


def render_prompt(
    template: Any, messages: Sequence[Message], *, tools: list[dict[str, Any]] | None = None
) -> str:
    """The completion prompt of ``messages``, no text able to write a control string.

    convo's templates neutralize in ``render`` themselves; any other
    :class:`~convo.PromptTemplate` gets messages and tool definitions with its
    declared markers, stop sequences, bos/eos and probed structure broken.
    """
    if getattr(template, "neutralizes_input", False):
        return str(template.render(messages, add_generation_prompt=True, tools=tools))
    control = _custom_control(template)
    safe = [neutralize_message(m, control) for m in messages]
    safe_tools = neutralize_value(tools, control) if tools else tools
    return str(template.render(safe, add_generation_prompt=True, tools=safe_tools))
