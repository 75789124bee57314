"""Export stored conversations as JSON Lines: convo's native format or fine-tuning data.

Three formats, one pass over the store:

* ``native``: lossless, one record per conversation (see :mod:`convo._transfer.native`);
  :func:`~convo.import_conversations` reads it back.
* ``chat``: OpenAI's chat fine-tuning format, ``{"messages": [...]}`` per
  conversation (its view through its fork lineage), with ``tools`` (and
  ``parallel_tool_calls``) when the conversation's runs sent them.
* ``completion``: ``{"prompt": ..., "completion": ...}`` per assistant
  message, the history before it flattened with a completion template.

The logic is one pure plan (:func:`export_plan`) that yields the store's
statement ops (:mod:`convo._store.core`) and hands finished lines to a
``emit`` callback; :func:`export_conversations` and
:func:`export_conversations_async` only run it. The whole export reads one
database snapshot (PostgreSQL: a REPEATABLE READ transaction; SQLite: one
read transaction, which in WAL mode blocks no writer), so a conversation
written to meanwhile is exported as it was when the export began. Reads are
keyset pages: memory stays flat whatever the number of conversations; a
chat or completion example holds one conversation at a time. A store with a
read replica (``read_url``) is exported from the replica (``store.reader``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, TextIO, TypeAlias, cast

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.dialects import postgresql

from .._exceptions import ConfigurationError, ConversationNotFound, StoreInputError, TemplateError
from .._messages import InputAudioPart, Message
from .._records import StoredMessage
from .._render.control import _custom_control, neutralize_message
from .._store import sql
from .._store.core import Lineage, Op, Plan, _lineage, _read_segments
from .._store.lineage import forks_below, tree_order
from .._store.rows import message_from_row
from .._store.runs import R
from . import native

if TYPE_CHECKING:
    from .._render.templates import PromptTemplate
    from .._store.async_store import AsyncStore
    from .._store.store import Store

__all__ = [
    "ExportFormat",
    "ExportStats",
    "chat_example",
    "completion_examples",
    "export_conversations",
    "export_conversations_async",
    "export_plan",
]

ExportFormat: TypeAlias = Literal["native", "chat", "completion"]
FORMATS: Final = ("native", "chat", "completion")

C, M, TK, S = sql.C, sql.M, sql.TK, sql.S

_PAGE: Final = 500  # messages (and conversations) per read
_RUN_PAGE: Final = 100  # runs carry whole request bodies: smaller pages
_ROOT_PAGE: Final = 100
_MAX_SKIPPED: Final = 100


class ExportStats(BaseModel):
    """What an export wrote.

    ``conversations``: conversations exported; ``lines``: JSON lines written
    (native: records, chat: examples, completion: examples); ``messages``:
    messages written (native: own rows; chat / completion: messages of the
    written examples). ``skipped`` counts conversations (chat) or assistant
    messages (completion) left out, ``skipped_reasons`` names the first 100 as
    ``(conversation id, reason)``.
    """

    model_config = ConfigDict(frozen=True)

    format: ExportFormat
    conversations: int = 0
    lines: int = 0
    messages: int = 0
    skipped: int = 0
    skipped_reasons: list[tuple[str, str]] = Field(default_factory=list)


@dataclass(slots=True)
class _Tally:
    conversations: int = 0
    lines: int = 0
    messages: int = 0
    skipped: int = 0
    reasons: list[tuple[str, str]] = field(default_factory=list)

    def skip(self, conversation_id: str, reason: str) -> None:
        self.skipped += 1
        if len(self.reasons) < _MAX_SKIPPED:
            self.reasons.append((conversation_id, reason))

    def stats(self, fmt: ExportFormat) -> ExportStats:
        return ExportStats(format=fmt, conversations=self.conversations, lines=self.lines,
                           messages=self.messages, skipped=self.skipped,
                           skipped_reasons=self.reasons)


@dataclass(frozen=True, slots=True)
class ExportOptions:
    """What to export and how (checked by :func:`options`)."""

    format: ExportFormat
    ids: tuple[str, ...] | None
    owner: str | None
    include_replays: bool
    tokens: bool
    train_on: Literal["all", "last"]
    template: Any = None  # PromptTemplate (completion)
    count: Callable[[str], int] | None = None  # token counter (completion with a model)
    budget: int | None = None


def options(
    *,
    format: str,
    ids: Sequence[str] | None,
    owner: str | None,
    include_replays: bool,
    tokens: bool,
    train_on: str,
    template: PromptTemplate | str | None,
    model: str | None,
    budget: int | None,
) -> ExportOptions:
    if format not in FORMATS:
        raise ConfigurationError(f"format must be one of {', '.join(FORMATS)}, not {format!r}")
    if train_on not in ("all", "last"):
        raise ConfigurationError(f"train_on must be 'all' or 'last', not {train_on!r}")
    if isinstance(ids, str):
        raise ConfigurationError("ids must be a list of conversation ids, not one string")
    if format != "completion" and (template is not None or model is not None or budget is not None):
        raise ConfigurationError("template=, model= and budget= only apply to format='completion'")
    tpl = count = None
    if format == "completion":
        from .._render.templates import get_template

        tpl = get_template(template if template is not None else "transcript")
        if model is not None:
            from .._models import budget_for
            from .._tokens.counter import TokenCounter

            count = TokenCounter.for_model(model).count
            budget = budget if budget is not None else budget_for(model)
        elif budget is not None:
            raise ConfigurationError("budget= needs model= (its tokenizer counts the prompt)")
    if budget is not None and budget < 1:
        raise ConfigurationError(f"budget must be >= 1 (got {budget})")
    return ExportOptions(
        format=cast(ExportFormat, format), ids=tuple(ids) if ids is not None else None,
        owner=owner, include_replays=include_replays, tokens=tokens,
        train_on=cast(Literal["all", "last"], train_on), template=tpl, count=count, budget=budget,
    )


# --- the plan -------------------------------------------------------------------------------


def export_plan(opts: ExportOptions, emit: Callable[[str], None], *, dialect: str) -> Plan[ExportStats]:
    """Read the selected conversations and ``emit`` one JSON line (no newline) at a time."""
    tally = _Tally()
    if opts.format == "native":
        yield from _native_export(opts, emit, tally)
    else:
        yield from _example_export(opts, emit, tally, dialect)
    return tally.stats(opts.format)


# Conversations with no parent (thread roots and plain conversations), by id.
def _roots_stmt(scoped: bool) -> sa.Select[Any]:
    stmt = sa.select(C).where(C.c.parent_id.is_(None), C.c.id > sa.bindparam("after"))
    if scoped:
        stmt = stmt.where(C.c.owner == sa.bindparam("owner"))
    return stmt.order_by(C.c.id).limit(sa.bindparam("limit"))


_ROOTS = {scoped: _roots_stmt(scoped) for scoped in (False, True)}


def _trees(roots: list[Any], owner: str | None) -> Plan[list[Any]]:
    """Every conversation of the fork trees of ``roots`` (rows), tree by tree, parents
    before children (walked down level by level: no recursive query); with
    ``owner``, only that owner's."""
    levels = yield from forks_below([r.id for r in roots], full=True)
    rows = tree_order(roots, levels)
    return rows if owner is None else [r for r in rows if r.owner == owner]


def _scoped(params: dict[str, Any], owner: str | None) -> bool:
    if owner is None:
        return False
    params["owner"] = owner
    return True


def _tree_of(cid: str, owner: str | None, seen: set[str]) -> Plan[list[Any]]:
    """The whole fork tree of ``cid`` (its topmost ancestor and every fork below it),
    unless an earlier id already brought that tree."""
    lineage = yield from _lineage(cid, owner)
    root = lineage.segments[-1][0]
    if root in seen:
        return []
    seen.add(root)
    row = yield Op(sql.select_conversation(False), {"cid": root}, "first")
    return [] if row is None else (yield from _trees([row], owner))


# --- native ---------------------------------------------------------------------------------

_COUNT_MESSAGES = sa.select(sa.func.count()).select_from(M).where(M.c.conversation_id == sa.bindparam("cid"))
_COUNT_SUMMARIES = sa.select(sa.func.count()).select_from(S).where(S.c.conversation_id == sa.bindparam("cid"))
_COUNT_RUNS = sa.select(sa.func.count()).select_from(R).where(R.c.conversation_id == sa.bindparam("cid"))
_OWN_MESSAGES = (
    sa.select(*M.c)
    .where(M.c.conversation_id == sa.bindparam("cid"), M.c.seq > sa.bindparam("after"))
    .order_by(M.c.seq)
    .limit(sa.bindparam("limit"))
)
_OWN_TOKENS = (
    sa.select(TK.c.message_id, TK.c.encoding, TK.c.tokens)
    .join(M, (M.c.conversation_id == TK.c.conversation_id) & (M.c.id == TK.c.message_id))
    .where(M.c.conversation_id == sa.bindparam("cid"), M.c.seq > sa.bindparam("lo"),
           M.c.seq <= sa.bindparam("hi"))
    .order_by(TK.c.message_id, TK.c.encoding)
)
_OWN_SUMMARIES = (
    sa.select(S)
    .where(S.c.conversation_id == sa.bindparam("cid"), S.c.id > sa.bindparam("after"))
    .order_by(S.c.id)
    .limit(sa.bindparam("limit"))
)
_REPLY = M.alias("reply")
_OWN_RUNS = (
    sa.select(R, _REPLY.c.seq.label("reply_seq"))
    .outerjoin(_REPLY, (_REPLY.c.id == R.c.reply_message_id)
               & (_REPLY.c.conversation_id == R.c.conversation_id))
    .where(R.c.conversation_id == sa.bindparam("cid"))
    .order_by(R.c.created_at, R.c.id)
    .limit(sa.bindparam("limit"))
)
_OWN_RUNS_AFTER = _OWN_RUNS.where(
    sa.tuple_(R.c.created_at, R.c.id)
    > sa.tuple_(sa.bindparam("t", type_=R.c.created_at.type), sa.bindparam("rid"))
)


class _RecordWriter:
    """Packs one conversation's items into a record and its parts, as JSON text.

    Items are encoded as they come, so memory holds at most one record.
    """

    def __init__(self, emit: Callable[[str], None], head: str, part_head: str, tally: _Tally) -> None:
        self._emit = emit
        self._head = head
        self._part_head = part_head
        self._tally = tally
        self._sections: dict[str, list[str]] = {"messages": [], "summaries": [], "runs": []}
        self._items = 0
        self._size = 0
        self._started = False

    def add(self, section: str, item: dict[str, Any]) -> None:
        text = native.dumps(item)
        self._sections[section].append(text)
        self._items += 1
        self._size += len(text)
        if self._items >= native.CHUNK_ITEMS or self._size >= native.CHUNK_BYTES:
            self.flush()

    def flush(self, *, last: bool = False) -> None:
        if not self._items and (self._started or not last):
            return  # a record always goes out; a part only with items
        body = ",".join(f'"{k}":[{",".join(v)}]' for k, v in self._sections.items())
        self._emit(f"{self._head},{body}}}")
        self._tally.lines += 1
        self._started = True
        self._head = self._part_head
        for items in self._sections.values():
            items.clear()
        self._items = self._size = 0


def _native_export(opts: ExportOptions, emit: Callable[[str], None], tally: _Tally) -> Plan[None]:
    """Whole fork trees, parents before children: forks share their ancestors'
    messages and a thread's root points at its current branch, so a tree is the
    smallest self-contained unit. With ids, each id brings its tree."""
    if opts.ids is not None:
        seen: set[str] = set()
        for cid in opts.ids:
            for row in (yield from _tree_of(cid, opts.owner, seen)):
                yield from _native_conversation(row, opts, emit, tally)
        return
    after = ""
    while True:
        params: dict[str, Any] = {"after": after, "limit": _ROOT_PAGE}
        roots = yield Op(_ROOTS[_scoped(params, opts.owner)], params)
        if not roots:
            return
        for row in (yield from _trees(roots, opts.owner)):
            yield from _native_conversation(row, opts, emit, tally)
        if len(roots) < _ROOT_PAGE:
            return
        after = roots[-1].id


def _native_conversation(
    row: Any, opts: ExportOptions, emit: Callable[[str], None], tally: _Tally
) -> Plan[None]:
    cid = row.id
    counts = {
        "messages": (yield Op(_COUNT_MESSAGES, {"cid": cid}, "scalar")),
        "summaries": (yield Op(_COUNT_SUMMARIES, {"cid": cid}, "scalar")),
        "runs": (yield Op(_COUNT_RUNS, {"cid": cid}, "scalar")),
    }
    prefix = f'{{"format":"{native.FORMAT}","version":{native.VERSION},'
    head = (f'{prefix}"type":"conversation","conversation":'
            f"{native.dumps(native.conversation_json(row))},\"counts\":{native.dumps(counts)}")
    part_head = f'{prefix}"type":"part","conversation_id":{native.dumps(cid)}'
    writer = _RecordWriter(emit, head, part_head, tally)
    tally.conversations += 1
    after = 0
    while True:
        rows = yield Op(_OWN_MESSAGES, {"cid": cid, "after": after, "limit": _PAGE}, driver=True)
        if not rows:
            break
        tokens: dict[int, dict[str, int]] = {}
        if opts.tokens:
            hi = rows[-1][2]
            for message_id, encoding, n in (
                yield Op(_OWN_TOKENS, {"cid": cid, "lo": after, "hi": hi})
            ):
                tokens.setdefault(message_id, {})[encoding] = n
        for r in rows:
            writer.add("messages", native.message_json(r, tokens.get(r[0])))
        tally.messages += len(rows)
        after = rows[-1][2]
        if len(rows) < _PAGE:
            break
    summary_after = 0
    while True:
        rows = yield Op(_OWN_SUMMARIES, {"cid": cid, "after": summary_after, "limit": _PAGE})
        for r in rows:
            writer.add("summaries", native.summary_json(r))
        if len(rows) < _PAGE:
            break
        summary_after = rows[-1].id
    params: dict[str, Any] = {"cid": cid, "limit": _RUN_PAGE}
    stmt = _OWN_RUNS
    while True:
        rows = yield Op(stmt, params)
        for r in rows:
            writer.add("runs", native.run_json(r, r.reply_seq))
        if len(rows) < _RUN_PAGE:
            break
        stmt = _OWN_RUNS_AFTER
        params = {**params, "t": rows[-1].created_at, "rid": rows[-1].id}
    writer.flush(last=True)


# --- chat and completion examples -------------------------------------------------------------

_CONVERSATIONS_AFTER = (
    sa.select(C).where(C.c.id > sa.bindparam("after")).order_by(C.c.id).limit(sa.bindparam("limit"))
)


def _one(cid: str, owner: str | None) -> Plan[Any]:
    params: dict[str, Any] = {"cid": cid}
    scoped = owner is not None
    if scoped:
        params["b_owner"] = owner
    row = yield Op(sql.select_conversation(scoped), params, "first")
    if row is None:
        raise ConversationNotFound(cid, owner=owner)
    return row


def _view(lineage: Lineage) -> Plan[list[StoredMessage]]:
    """The conversation's messages through its lineage, oldest first, page by page."""
    out: list[StoredMessage] = []
    after: int | None = None
    while True:
        rows = yield from _read_segments(lineage, after=after, before=None, limit=_PAGE,
                                         newest_first=False)
        out.extend(message_from_row(r) for r in rows)
        if len(rows) < _PAGE:
            return out
        after = out[-1].seq


def _tools_stmt(dialect: str) -> sa.Select[Any]:
    """The distinct ``tools`` / ``parallel_tool_calls`` of a conversation's chat runs
    up to a seq, oldest first (the database extracts them: bodies can be large)."""
    if dialect == "postgresql":
        # json, not jsonb: the definitions come back as sent (key order kept)
        body = sa.cast(R.c.request, postgresql.JSON)
        tools: Any = sa.cast(body.op("->")(sa.literal("tools")), sa.Text)
        parallel: Any = sa.cast(body.op("->")(sa.literal("parallel_tool_calls")), sa.Text)
    else:
        tools = sa.func.json_extract(R.c.request, "$.tools")
        # json_type says 'true' / 'false' (json_extract would answer 1 / 0)
        parallel = sa.func.json_type(R.c.request, "$.parallel_tool_calls")
    inner = (
        sa.select(tools.label("tools"), parallel.label("parallel"), R.c.created_at)
        .where(R.c.conversation_id == sa.bindparam("cid"), R.c.mode == "chat",
               sa.or_(R.c.input_seq.is_(None), R.c.input_seq <= sa.bindparam("hi")))
        .subquery()
    )
    return (
        sa.select(inner.c.tools, inner.c.parallel, sa.func.max(inner.c.created_at).label("last"))
        .group_by(inner.c.tools, inner.c.parallel)
        .order_by(sa.func.min(inner.c.created_at))
    )


_TOOLS = {d: _tools_stmt(d) for d in ("sqlite", "postgresql")}


def _tools_of(lineage: Lineage, dialect: str) -> Plan[tuple[list[dict[str, Any]], bool | None]]:
    """The tool definitions the lineage's runs sent (by function name, the newest
    definition of each, in order of first use) and their last ``parallel_tool_calls``."""
    found: list[tuple[Any, Any, Any]] = []
    for cid, _lo, hi in lineage.segments:
        found.extend((yield Op(_TOOLS[dialect], {"cid": cid, "hi": hi})))
    tools: dict[str, dict[str, Any]] = {}
    parallel: bool | None = None
    last = None
    for text, par, stamp in found:
        if text is not None:
            value = json.loads(text)
            for tool in value if isinstance(value, list) else ():
                if isinstance(tool, dict) and tool.get("type") == "function":
                    name = (tool.get("function") or {}).get("name")
                    if isinstance(name, str):
                        tools[name] = tool
        if par in ("true", "false") and (last is None or stamp >= last):
            parallel, last = par == "true", stamp
    return list(tools.values()), parallel


def _example_export(
    opts: ExportOptions, emit: Callable[[str], None], tally: _Tally, dialect: str
) -> Plan[None]:
    if opts.ids is not None:
        for cid in opts.ids:
            row = yield from _one(cid, opts.owner)
            yield from _examples(row.id, opts, emit, tally, dialect)
        return
    stmt = _CONVERSATIONS_AFTER
    if opts.owner is not None:
        stmt = stmt.where(C.c.owner == opts.owner)
    if not opts.include_replays:
        stmt = stmt.where(sa.or_(C.c.branch_kind.is_(None), C.c.branch_kind != "replay"))
    after = ""
    while True:
        rows = yield Op(stmt, {"after": after, "limit": _PAGE})
        for row in rows:
            yield from _examples(row.id, opts, emit, tally, dialect)
        if len(rows) < _PAGE:
            return
        after = rows[-1].id


def _examples(
    cid: str, opts: ExportOptions, emit: Callable[[str], None], tally: _Tally, dialect: str
) -> Plan[None]:
    lineage = yield from _lineage(cid, None)
    messages = yield from _view(lineage)
    tools, parallel = yield from _tools_of(lineage, dialect)
    if opts.format == "chat":
        line, reason = chat_example(messages, tools=tools, parallel_tool_calls=parallel,
                                    train_on=opts.train_on)
        if line is None:
            tally.skip(cid, reason or "")
            return
        emit(native.dumps(line))
        tally.lines += 1
        tally.messages += len(line["messages"])
    else:
        examples, reasons = completion_examples(
            messages, opts.template, tools=tools, train_on=opts.train_on,
            count=opts.count, budget=opts.budget,
        )
        for reason in reasons:
            tally.skip(cid, reason)
        if not examples:
            return
        for example in examples:
            emit(native.dumps(example))
        tally.lines += len(examples)
        tally.messages += len(messages)
    tally.conversations += 1


def chat_example(
    messages: Sequence[Message],
    *,
    tools: Sequence[dict[str, Any]] = (),
    parallel_tool_calls: bool | None = None,
    train_on: Literal["all", "last"] = "all",
) -> tuple[dict[str, Any] | None, str | None]:
    """One chat fine-tuning line for ``messages``, or None and why it cannot be one.

    Follows OpenAI's supervised format: ``developer`` messages become
    ``system`` (the format has no developer role), metadata and store identity
    are left out, and with ``train_on="last"`` every assistant message but the
    last gets ``"weight": 0``. A conversation is left out when it has no
    assistant message, holds audio (fine-tuning takes text and images only),
    or has a tool call that a later user or assistant message leaves unanswered.
    """
    last = max((i for i, m in enumerate(messages) if m.role == "assistant"), default=None)
    if last is None:
        return None, "no assistant message"
    out: list[dict[str, Any]] = []
    pending: dict[str, bool] = {}  # call id -> answered, for the last assistant's calls
    for i, m in enumerate(messages):
        if m.role == "tool":
            if m.tool_call_id not in pending:
                return None, f"message {i + 1}: tool result without its call"
            pending[m.tool_call_id or ""] = True
        elif m.role in ("user", "assistant"):
            unanswered = [cid for cid, done in pending.items() if not done]
            if unanswered:
                return None, f"message {i + 1}: tool call {unanswered[0]!r} has no result"
            pending = {c.id: False for c in m.tool_calls or ()}
        if isinstance(m.content, list) and any(isinstance(p, InputAudioPart) for p in m.content):
            return None, f"message {i + 1}: audio is not supported in fine-tuning data"
        wire = m.to_openai()
        if wire["role"] == "developer":
            wire["role"] = "system"
        if train_on == "last" and m.role == "assistant":
            wire["weight"] = 1 if i == last else 0
        out.append(wire)
    line: dict[str, Any] = {"messages": out}
    if tools:
        line["tools"] = list(tools)
    if parallel_tool_calls is not None and tools:
        line["parallel_tool_calls"] = parallel_tool_calls
    return line, None


def completion_examples(
    messages: Sequence[Message],
    template: PromptTemplate,
    *,
    tools: Sequence[dict[str, Any]] = (),
    train_on: Literal["all", "last"] = "all",
    count: Callable[[str], int] | None = None,
    budget: int | None = None,
) -> tuple[list[dict[str, str]], list[str]]:
    """``{"prompt", "completion"}`` examples, one per assistant message, and why any was left out.

    The prompt is the history before the assistant message rendered by
    ``template`` with its generation cue (what a completion request for that
    turn sends); the completion is what the template writes for the reply,
    end-of-turn marker included, so a model trained on it learns to stop.
    Message text is made inert against the template's control strings exactly
    as the context builder does. With ``count`` and ``budget``, the oldest
    whole turns (from one user message to the next; leading system messages
    stay) are dropped until the prompt fits; an example that cannot fit is
    left out.
    """
    if getattr(template, "neutralizes_input", False):
        safe = list(messages)  # convo's templates make text inert in render() itself
    else:
        control = _custom_control(template)
        safe = [neutralize_message(m, control) for m in messages]
    targets = [i for i, m in enumerate(safe) if m.role == "assistant"]
    if train_on == "last":
        targets = targets[-1:]
    tool_list = list(tools) or None
    examples: list[dict[str, str]] = []
    reasons: list[str] = []
    for i in targets:
        history = safe[:i]
        try:
            prompt = template.render(history, add_generation_prompt=True, tools=tool_list)
            if count is not None and budget is not None:
                fitted = _fit(history, prompt, template, tool_list, count, budget)
                if fitted is None:
                    reasons.append(f"message {i + 1}: the prompt does not fit {budget} tokens")
                    continue
                history, prompt = fitted
            full = template.render([*history, safe[i]], add_generation_prompt=False,
                                   tools=tool_list)
        except TemplateError as exc:
            reasons.append(f"message {i + 1}: {exc}")
            continue
        if full.startswith(prompt):
            completion = full[len(prompt):]
        else:
            # A template that renders earlier turns differently once a reply
            # follows (some strip reasoning, some re-open turns): the reply's
            # text and the end-of-sequence token stand in.
            completion = (safe[i].text or safe[i].refusal or "") + template.eos_token
        examples.append({"prompt": prompt, "completion": completion})
    return examples, reasons


def _fit(
    history: list[Message],
    prompt: str,
    template: PromptTemplate,
    tools: list[dict[str, Any]] | None,
    count: Callable[[str], int],
    budget: int,
) -> tuple[list[Message], str] | None:
    head = 0
    while head < len(history) and history[head].role in ("system", "developer"):
        head += 1
    system, rest = history[:head], history[head:]
    while count(prompt) > budget:
        # drop the oldest turn: up to (not including) the next user message
        nxt = next((k for k in range(1, len(rest)) if rest[k].role == "user"), None)
        if nxt is None:
            return None
        rest = rest[nxt:]
        prompt = template.render([*system, *rest], add_generation_prompt=True, tools=tools)
    return [*system, *rest], prompt


# --- the shells -----------------------------------------------------------------------------


@contextmanager
def _output(out: str | os.PathLike[str] | TextIO) -> Iterator[Callable[[str], None]]:
    """A line writer for ``out``. A path is written through a temporary file beside
    it and renamed at the end, so a failed export never leaves half a file there."""
    if not isinstance(out, (str, os.PathLike)):
        stream = out
        def write_stream(line: str) -> None:
            stream.write(line + "\n")

        yield write_stream
        return
    path = os.fspath(out)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        handle = open(tmp, "w", encoding="utf-8", newline="\n")  # noqa: SIM115
    except OSError as exc:
        raise StoreInputError(f"cannot write {path!r}: {exc.strerror}") from None
    try:
        def write_file(line: str) -> None:
            handle.write(line + "\n")

        with handle:
            yield write_file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _snapshot(engine: Any) -> Any:
    """The engine with one consistent snapshot per connection (see the module docs).

    SQLite: convo's engines begin a plain (deferred) transaction unless told
    otherwise, and its first read fixes the snapshot.
    """
    if engine.dialect.name == "postgresql":
        return engine.execution_options(isolation_level="REPEATABLE READ",
                                        postgresql_readonly=True)
    return engine


def export_conversations(
    store: Store,
    out: str | os.PathLike[str] | TextIO,
    *,
    format: ExportFormat = "native",
    ids: Sequence[str] | None = None,
    owner: str | None = None,
    include_replays: bool = False,
    tokens: bool = True,
    train_on: Literal["all", "last"] = "all",
    template: PromptTemplate | str | None = None,
    model: str | None = None,
    budget: int | None = None,
) -> ExportStats:
    """Write conversations to ``out`` (a path or a text stream) as JSON Lines.

    Args:
        store: the store to read (its read replica, when it has one).
        out: a file path, or an open text stream (written to, not closed).
        format: ``"native"`` (lossless, for :func:`~convo.import_conversations`),
            ``"chat"`` (OpenAI chat fine-tuning lines) or ``"completion"``
            (prompt / completion pairs flattened with ``template``).
        ids: the conversations to export; None for all (of ``owner``, if given).
            Native exports each id's whole fork tree (ancestors, forks and
            branches, parents first); chat and completion export exactly these.
        owner: only this owner's conversations (ids of others: not found).
        include_replays: chat / completion without ids: also replay branches
            (other models' answers, left out by default).
        tokens: native: include the stored token counts.
        train_on: chat / completion: ``"all"`` assistant messages, or only each
            conversation's ``"last"`` (chat: the others get ``weight`` 0).
        template: completion: a template name, file or object (default ``transcript``).
        model: completion: cut prompts to fit this model's tokenizer and prompt
            budget (or ``budget`` tokens).
        budget: completion: the prompt token budget (default: the model's).

    Returns:
        What was written.

    Raises:
        ConversationNotFound: an id does not exist (for this owner).
        ConfigurationError: a bad format or option.
    """
    opts = options(format=format, ids=ids, owner=owner, include_replays=include_replays,
                   tokens=tokens, train_on=train_on, template=template, model=model,
                   budget=budget)
    from .._store.store import _drive, database_error

    reader = store.reader  # the read replica, when the store has one
    reader.check_schema()
    engine = _snapshot(reader.engine)
    with _output(out) as emit:
        try:
            with engine.connect() as conn:
                conn.begin()  # before the first read: driver reads would not begin one
                try:
                    return _drive(conn, export_plan(opts, emit, dialect=engine.dialect.name))
                finally:
                    conn.rollback()
        except sa.exc.DBAPIError as exc:
            raise database_error(exc) from exc


async def export_conversations_async(
    store: AsyncStore,
    out: str | os.PathLike[str] | TextIO,
    *,
    format: ExportFormat = "native",
    ids: Sequence[str] | None = None,
    owner: str | None = None,
    include_replays: bool = False,
    tokens: bool = True,
    train_on: Literal["all", "last"] = "all",
    template: PromptTemplate | str | None = None,
    model: str | None = None,
    budget: int | None = None,
) -> ExportStats:
    """:func:`export_conversations` on an :class:`~convo.AsyncStore` (writes to ``out``
    are plain file writes)."""
    opts = options(format=format, ids=ids, owner=owner, include_replays=include_replays,
                   tokens=tokens, train_on=train_on, template=template, model=model,
                   budget=budget)
    from .._store.async_store import _drive
    from .._store.store import database_error

    reader = store.reader
    await reader.check_schema()
    engine = _snapshot(reader.engine)
    with _output(out) as emit:
        try:
            async with engine.connect() as conn:
                await conn.begin()
                try:
                    return await _drive(conn, export_plan(opts, emit, dialect=engine.dialect.name))
                finally:
                    await conn.rollback()
        except sa.exc.DBAPIError as exc:
            raise database_error(exc) from exc
