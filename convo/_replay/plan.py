"""The pure core of a replay, shared by :class:`~convo.Replayer` and :class:`~convo.AsyncReplayer`.

A replay re-sends every user turn of a stored conversation to one or more
*arms* (a model plus mode, template and parameters, optionally its own
server), in order:

* ``continue``: each arm has one replay branch (forked before the first user
  message, so it shares the system prompt); the user messages are appended
  there one by one and the arm's own replies feed the next turn.
* ``teacher-forcing``: each turn is answered on a branch forked right after
  that turn's original user message, so every arm answers the original
  history, turn by turn.

Replay branches are marked ``branch_kind="replay"`` and never made current,
so they do not show up as the user's own branches. Tool calls are answered
with the original conversation's recorded tool results (matched by tool name
and arguments, then by name in order): no tool is executed twice. Each new
run links to the original turn's run (``replays_id``). Every (conversation,
turn, arm) is stored as a :class:`~convo.ReplayItem` as soon as it is done,
so re-running an interrupted replay skips what is already ``ok``.

With a store that has a read replica, the conversations to replay are listed
and read there (:class:`SourceRead`); the branches, runs and items the replay
writes go to the primary, where its turns read them back.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from .._exceptions import ConfigurationError, StoreInputError
from .._messages import Message, ToolCall
from .._records import Run, StoredMessage
from .._store.inputs import check_json
from .._store.replays import Replay, ReplayItem
from .._turns.plan import StoreCall, TurnResult
from .reproduce import text_similarity

if TYPE_CHECKING:
    from .._render.chat import ChatProfile

__all__ = [
    "Arm",
    "JudgeTurn",
    "ReplayMode",
    "ReplayProgress",
    "ReplayReport",
    "RunTurn",
    "SourceRead",
    "SourceTurn",
    "plan_replay",
    "split_turns",
]

ReplayMode = Literal["continue", "teacher-forcing"]
#: Tool rounds a replayed turn may take (each answered from the recorded results).
MAX_REPLAY_ROUNDS = 8


@dataclass(slots=True)
class SourceRead(StoreCall):
    """A read of what the replay replays (the conversation's turns, their runs): the
    shells send it to the store's ``reader`` (its read replica, when it has one).
    What the replay writes, and reads back, goes to the primary (plain :class:`StoreCall`)."""


@dataclass(frozen=True)
class Arm:
    """A target of a replay: a model, how to address it, and its request parameters.

    ``client`` (an :class:`~convo.OpenAIClient` / :class:`~convo.AsyncOpenAIClient`)
    sends to another server; None uses the replayer's client. ``summarizer``
    summarizes what the arm's budget drops (as in a live thread). ``name``
    defaults to ``model[:mode[:template]]``.
    """

    model: str
    mode: Literal["chat", "completion"] = "chat"
    template: str | None = None
    name: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    budget: int | None = None
    encoding: str | None = None
    profile: ChatProfile | None = None
    client: Any = field(default=None, compare=False, repr=False)
    summarizer: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in ("chat", "completion"):
            raise ConfigurationError(f"arm mode must be 'chat' or 'completion', not {self.mode!r}")
        if self.mode == "chat" and self.template is not None:
            raise ConfigurationError("an arm's template only applies to mode='completion'")
        if not self.label or len(self.label) > 64:
            raise ConfigurationError("an arm's name must be 1..64 characters")

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        parts = [self.model]
        if self.mode != "chat" or self.template:
            parts.append(self.mode)
        if self.template:
            parts.append(self.template)
        return ":".join(parts)

    @classmethod
    def parse(cls, text: str, **kw: Any) -> Arm:
        """``MODEL[:chat|completion[:TEMPLATE]]``, as the CLI's ``--arm`` takes it."""
        model, _, rest = text.partition(":")
        mode, _, template = rest.partition(":")
        if not model:
            raise ConfigurationError(f"arm {text!r}: expected MODEL[:mode[:template]]")
        if mode not in ("", "chat", "completion"):
            raise ConfigurationError(f"arm {text!r}: mode must be chat or completion")
        resolved: Literal["chat", "completion"] = "completion" if mode == "completion" else "chat"
        if resolved == "completion" and not template:
            template = "transcript"
        return cls(model=model, mode=resolved, template=template or None, **kw)

    def spec(self) -> dict[str, Any]:
        """What a replay stores of the arm (to resume it; never the client)."""
        return {
            "name": self.label, "model": self.model, "mode": self.mode,
            "template": self.template, "params": dict(self.params), "budget": self.budget,
            "encoding": self.encoding,
        }


@dataclass(frozen=True, slots=True)
class SourceTurn:
    """One user turn of the original conversation and what answered it."""

    index: int
    user: StoredMessage
    responses: tuple[StoredMessage, ...]

    @property
    def reply(self) -> StoredMessage | None:
        """The turn's final assistant message (the answer after any tool rounds)."""
        for message in reversed(self.responses):
            if message.role == "assistant":
                return message
        return None

    def recorded_result(self, call: ToolCall, used: set[int]) -> str:
        """The original result for a call with the same tool and arguments (else same tool)."""
        calls: list[tuple[ToolCall, StoredMessage]] = []
        results = {m.tool_call_id: m for m in self.responses if m.role == "tool"}
        for message in self.responses:
            for original in message.tool_calls or ():
                if original.id in results:
                    calls.append((original, results[original.id]))
        wanted = (call.function.name, _canonical(call.function.arguments))
        for original, result in calls:
            key = (original.function.name, _canonical(original.function.arguments))
            if key == wanted and result.id not in used:
                used.add(result.id)
                return result.text
        for original, result in calls:
            if original.function.name == call.function.name and result.id not in used:
                used.add(result.id)
                return result.text
        return (
            f"error: the replayed conversation has no recorded result for "
            f"{call.function.name}; replays do not execute tools"
        )


def _canonical(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments), sort_keys=True, separators=(",", ":"))
    except ValueError:
        return arguments


def split_turns(messages: Sequence[StoredMessage]) -> list[SourceTurn]:
    """The user turns of a conversation, oldest first."""
    turns: list[SourceTurn] = []
    current: StoredMessage | None = None
    responses: list[StoredMessage] = []
    for message in messages:
        if message.role == "user":
            if current is not None:
                turns.append(SourceTurn(len(turns), current, tuple(responses)))
            current, responses = message, []
        elif current is not None:
            responses.append(message)
    if current is not None:
        turns.append(SourceTurn(len(turns), current, tuple(responses)))
    return turns


# --- effects ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunTurn:
    """Run one turn with an arm's chat on a branch; the shell answers with a
    :class:`~convo.TurnResult` or the exception that ended it."""

    arm: str
    conversation_id: str
    message: Message | None
    tool_results: tuple[Message, ...]
    key: str | None
    replays_id: str | None
    tools: list[dict[str, Any]] | None


@dataclass(frozen=True, slots=True)
class JudgeTurn:
    """Ask the judge to compare one turn's replies; the shell answers with a verdict dict."""

    user_text: str
    original: str | None
    candidates: dict[str, str | None]


def judge_messages(effect: JudgeTurn) -> list[dict[str, Any]]:
    """The judge's prompt: the user's message, the original reply and each arm's reply."""
    payload = {
        "user_message": effect.user_text,
        "original_reply": effect.original,
        "candidates": effect.candidates,
    }
    return [
        {
            "role": "system",
            "content": (
                "You compare assistant replies to the same user message. Answer with a JSON "
                'object: {"winner": <a candidate name, "original" or "tie">, '
                '"scores": {<name>: <1-10>}, "reason": <one sentence>}.'
            ),
        },
        {"role": "user", "content": json.dumps(payload, ensure_ascii=False)},
    ]


def parse_verdict(text: str, judge_model: str) -> dict[str, Any]:
    """The judge's JSON answer (or what went wrong with it), with the judge's model.

    A judge is a model, its answer untrusted: one the store refuses (a NUL, NaN, an
    integer beyond 64 bits...) becomes the verdict's error, so the replay goes on."""
    verdict: dict[str, Any]
    try:
        value = json.loads(text)
    except ValueError:
        verdict = {"model": judge_model, "error": "the judge's answer is not JSON",
                   "raw": text[:2000]}
    else:
        if not isinstance(value, dict):
            return {"model": judge_model, "error": "the judge's answer is not a JSON object"}
        verdict = {"model": judge_model, **value}
    try:
        check_json(verdict, "verdict")
    except StoreInputError as exc:
        return {"model": judge_model, "error": f"the judge's answer cannot be stored: {exc}"}
    return verdict


# --- the plan ---------------------------------------------------------------------------


def _turn_tools(run: Run | None) -> list[dict[str, Any]] | None:
    if run is None:
        return None
    tools = run.body().get("tools")
    return tools if isinstance(tools, list) and tools else None


def plan_replay(
    replay: Replay,
    conversation_id: str,
    arms: Sequence[str],
    *,
    judge: bool,
    owner: str | None,
) -> Generator[Any, Any, list[ReplayItem]]:
    """Replay one conversation against ``arms``; returns its items (old and new)."""
    messages: list[StoredMessage] = yield SourceRead(
        "messages", (conversation_id,), {"owner": owner}
    )
    turns = split_turns(messages)
    if not turns:
        return []
    done: dict[tuple[int, str], ReplayItem] = {
        (i.turn, i.arm): i
        for i in (yield StoreCall(
            "replay_items", (replay.id,), {"conversation_id": conversation_id, "owner": owner}
        ))
    }
    replies = [t.reply.id for t in turns if t.reply is not None]
    originals: dict[int, Run] = yield SourceRead(
        "runs_for_replies", (conversation_id, replies), {"owner": owner}
    )
    branches: dict[str, str] = {}
    broken: set[str] = set()  # continue mode: an arm whose trajectory failed
    out: list[ReplayItem] = []
    for turn in turns:
        reply = turn.reply
        original_run = originals.get(reply.id) if reply is not None else None
        original_text = reply.text if reply is not None else None
        turn_items: list[ReplayItem] = []
        for arm_index, arm in enumerate(arms):
            previous = done.get((turn.index, arm))
            if previous is not None and previous.status == "ok":
                if previous.branch_id:
                    branches[arm] = previous.branch_id
                turn_items.append(previous)
                continue
            base = {
                "replay_id": replay.id, "conversation_id": conversation_id, "turn": turn.index,
                "arm": arm, "user_seq": turn.user.seq, "original_text": original_text,
                "original_run_id": original_run.id if original_run else None,
            }
            if arm in broken:
                item = yield StoreCall("save_replay_item", (ReplayItem(
                    status="skipped", error="an earlier turn of this arm failed", **base,
                ),), {})
                turn_items.append(item)
                continue
            if replay.mode == "continue":
                branch = branches.get(arm) or (previous.branch_id if previous else None)
                if branch is None:
                    made = yield StoreCall("create_branch", (conversation_id,), {
                        "at": turns[0].user.seq - 1, "kind": "replay", "make_current": False,
                        "metadata": {"replay_id": replay.id, "arm": arm}, "owner": owner,
                    })
                    branch = made.id
                branches[arm] = branch
                message: Message | None = turn.user.as_message()
                key: str | None = f"replay:{replay.id}:{arm_index}:{turn.index}"
            else:
                made = yield StoreCall("create_branch", (conversation_id,), {
                    "at": turn.user.seq, "kind": "replay", "make_current": False,
                    "metadata": {"replay_id": replay.id, "arm": arm, "turn": turn.index},
                    "owner": owner,
                })
                branch, message, key = made.id, None, None
            tools = _turn_tools(original_run)
            outcome = yield RunTurn(arm, branch, message, (), key,
                                    original_run.id if original_run else None, tools)
            used: set[int] = set()
            rounds = 0
            while (
                isinstance(outcome, TurnResult)
                and outcome.pending_tool_calls
                and rounds < MAX_REPLAY_ROUNDS
            ):
                results = tuple(
                    Message.tool(turn.recorded_result(call, used), tool_call_id=call.id)
                    for call in outcome.pending_tool_calls
                )
                first = outcome
                outcome = yield RunTurn(arm, branch, None, results, key,
                                        original_run.id if original_run else None, tools)
                if isinstance(outcome, TurnResult):
                    outcome = outcome.model_copy(
                        update={"runs": [*first.runs, *outcome.runs]}
                    )
                rounds += 1
            item = _item(base, branch, outcome, original_text)
            if item.status != "ok" and replay.mode == "continue":
                broken.add(arm)
            item = yield StoreCall("save_replay_item", (item,), {})
            turn_items.append(item)
        if judge and any(i.status == "ok" for i in turn_items):
            already = all(i.verdict for i in turn_items if i.status == "ok")
            if not already:
                verdict = yield JudgeTurn(
                    turn.user.text, original_text,
                    {i.arm: i.text for i in turn_items if i.status == "ok"},
                )
                yield StoreCall("save_verdict", (replay.id, conversation_id, turn.index,
                                                 verdict), {})
                turn_items = [
                    i.model_copy(update={"verdict": verdict}) if i.status == "ok" else i
                    for i in turn_items
                ]
        out.extend(turn_items)
    return out


def _item(
    base: dict[str, Any], branch: str, outcome: TurnResult | BaseException,
    original_text: str | None,
) -> ReplayItem:
    if not isinstance(outcome, TurnResult):
        return ReplayItem(status="failed", branch_id=branch,
                          error=f"{type(outcome).__name__}: {outcome}"[:4000], **base)
    report = outcome.report
    runs = outcome.runs
    summary = report.summary if report is not None else None
    latencies = [r.latency_ms for r in runs if r.latency_ms is not None]
    text = outcome.reply.text
    return ReplayItem(
        status="ok",
        branch_id=outcome.conversation_id,
        run_id=outcome.run.id if outcome.run else None,
        text=text,
        similarity=text_similarity(original_text, text) if original_text is not None else None,
        prompt_tokens=sum(r.reported_prompt_tokens or 0 for r in runs) or None,
        completion_tokens=sum(r.completion_tokens or 0 for r in runs) or None,
        kept=len(report.kept_seqs) if report is not None else None,
        dropped=report.dropped_count if report is not None else None,
        # the summary covers exactly what was dropped (1..dropped_through)
        summarized=report.dropped_count if summary is not None and report is not None else 0,
        latency_ms=sum(latencies) if latencies else None,
        finish_reason=outcome.reply.reply.finish_reason if outcome.reply.reply else None,
        **base,
    )


def replay_spec(
    conversation_ids: Sequence[str],
    arms: Sequence[Arm],
    mode: ReplayMode,
    judge: str | None,
) -> dict[str, Any]:
    return {
        "conversations": list(conversation_ids),
        "arms": [a.spec() for a in arms],
        "mode": mode,
        "judge": judge,
    }


def arms_from_spec(spec: Mapping[str, Any], given: Sequence[Arm]) -> list[Arm]:
    """The arms of a stored replay (their clients: the given arms' of the same name)."""
    by_name = {a.label: a for a in given}
    out = []
    for entry in spec.get("arms", []):
        name = entry["name"]
        if name in by_name:
            out.append(by_name[name])
            continue
        out.append(Arm(
            model=entry["model"], mode=entry["mode"], template=entry.get("template"),
            name=name, params=entry.get("params") or {}, budget=entry.get("budget"),
            encoding=entry.get("encoding"),
        ))
    return out


def check_arms(arms: Sequence[Arm | str]) -> list[Arm]:
    resolved = [Arm.parse(a) if isinstance(a, str) else a for a in arms]
    if not resolved:
        raise ConfigurationError("a replay needs at least one arm")
    names = [a.label for a in resolved]
    if len(set(names)) != len(names):
        raise ConfigurationError(f"arm names must differ: {names}")
    return resolved


class ReplayProgress(BaseModel):
    """Reported after each conversation of a replay."""

    model_config = ConfigDict(frozen=True)

    replay_id: str
    conversation_id: str
    done: int
    total: int
    items: int


# --- the report -------------------------------------------------------------------------

_CSV_FIELDS = (
    "replay_id", "conversation_id", "turn", "arm", "status", "similarity", "prompt_tokens",
    "completion_tokens", "kept", "dropped", "summarized", "latency_ms", "finish_reason",
    "error", "original_text", "text", "branch_id", "run_id", "original_run_id", "verdict",
)


class ArmSummary(BaseModel):
    """Per-arm totals of a replay."""

    model_config = ConfigDict(frozen=True)

    arm: str
    turns: int
    ok: int
    failed: int
    skipped: int
    mean_similarity: float | None
    prompt_tokens: int
    completion_tokens: int
    mean_latency_ms: float | None
    wins: int


class ReplayReport(BaseModel):
    """A replay and its items (per conversation, turn and arm); exports to JSON and CSV."""

    model_config = ConfigDict(frozen=True)

    replay: Replay
    items: list[ReplayItem]

    def arms(self) -> list[ArmSummary]:
        """Totals per arm, in the replay's arm order."""
        arms = self.replay.spec.get("arms")
        order = [a.get("name") for a in arms if isinstance(a, dict)] if isinstance(arms, list) else []
        names = [n for n in order if isinstance(n, str)] or sorted({i.arm for i in self.items})
        out = []
        for name in names:
            mine = [i for i in self.items if i.arm == name]
            ok = [i for i in mine if i.status == "ok"]
            sims = [i.similarity for i in ok if i.similarity is not None]
            lat = [i.latency_ms for i in ok if i.latency_ms is not None]
            out.append(ArmSummary(
                arm=name, turns=len(mine), ok=len(ok),
                failed=sum(i.status == "failed" for i in mine),
                skipped=sum(i.status == "skipped" for i in mine),
                mean_similarity=sum(sims) / len(sims) if sims else None,
                prompt_tokens=sum(i.prompt_tokens or 0 for i in ok),
                completion_tokens=sum(i.completion_tokens or 0 for i in ok),
                mean_latency_ms=sum(lat) / len(lat) if lat else None,
                wins=sum(1 for i in ok if (i.verdict or {}).get("winner") == name),
            ))
        return out

    def to_json(self) -> str:
        """The replay, its per-arm totals and every item, as one JSON document."""
        return json.dumps({
            "replay": self.replay.model_dump(mode="json"),
            "arms": [a.model_dump(mode="json") for a in self.arms()],
            "items": [i.model_dump(mode="json") for i in self.items],
        }, ensure_ascii=False, indent=2)

    def to_csv(self) -> str:
        """One row per item (conversation, turn, arm); the verdict as JSON text."""
        import csv
        import io

        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=_CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        for item in self.items:
            row = item.model_dump(mode="json")
            row["verdict"] = json.dumps(row["verdict"]) if row["verdict"] is not None else ""
            writer.writerow({k: row.get(k) for k in _CSV_FIELDS})
        return buffer.getvalue()
