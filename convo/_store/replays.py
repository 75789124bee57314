"""Store plans for replays (``replays``, ``replay_items``), shared by both store shells.

A replay's items are keyed by (replay, conversation, turn, arm): saving an
item again replaces it, which is what lets an interrupted replay resume by
skipping the items already ``ok``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Final, Literal, cast

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from .._exceptions import ReplayNotFound, StoreInputError
from .core import Op, Plan, newest_first, now
from .inputs import check_text, check_values
from .rows import check_short, construct, damaged
from .schema import ReplayItemRow, ReplayRow

__all__ = [
    "Replay",
    "ReplayItem",
    "ReplayPage",
    "create_replay",
    "get_replay",
    "list_replays",
    "replay_items",
    "save_replay_item",
    "save_verdict",
    "set_replay_status",
]

RP = cast(sa.Table, ReplayRow.__table__)
RI = cast(sa.Table, ReplayItemRow.__table__)

REPLAY_STATUSES: Final = ("running", "done", "failed", "interrupted")
ITEM_STATUSES: Final = ("ok", "failed", "skipped")


class Replay(BaseModel):
    """A replay of stored conversations against arms; ``spec`` holds what is needed to resume."""

    model_config = ConfigDict(frozen=True)

    id: str
    owner: str | None = None
    mode: Literal["continue", "teacher-forcing"]
    status: Literal["running", "done", "failed", "interrupted"]
    spec: dict[str, JsonValue] = Field(default_factory=dict)
    created_at: Any
    updated_at: Any


class ReplayItem(BaseModel):
    """One (conversation, user turn, arm) of a replay, side by side with the original."""

    model_config = ConfigDict(frozen=True)

    replay_id: str
    conversation_id: str
    turn: int = Field(description="0-based index of the user turn in the conversation")
    arm: str
    status: Literal["ok", "failed", "skipped"]
    branch_id: str | None = Field(default=None, description="the replay branch the reply is on")
    run_id: str | None = Field(default=None, description="the new reply's (last) run")
    original_run_id: str | None = None
    user_seq: int
    original_text: str | None = None
    text: str | None = None
    similarity: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    kept: int | None = Field(default=None, description="messages of history sent")
    dropped: int | None = Field(default=None, description="messages of history dropped")
    summarized: int | None = Field(default=None, description="messages a summary stood in for")
    latency_ms: float | None = None
    finish_reason: str | None = None
    error: str | None = None
    verdict: dict[str, JsonValue] | None = None
    created_at: Any = None


class ReplayPage(BaseModel):
    """One page of replays, newest first; pass ``next_cursor`` back as ``cursor``."""

    model_config = ConfigDict(frozen=True)

    items: list[Replay]
    next_cursor: str | None = None


_REPLAY_COLUMNS = tuple(c.name for c in RP.c)
_ITEM_COLUMNS = tuple(c.name for c in RI.c)
assert set(_REPLAY_COLUMNS) == set(Replay.model_fields)
assert set(_ITEM_COLUMNS) == set(ReplayItem.model_fields)


def _replay(row: Any) -> Replay:
    values = dict(zip(_REPLAY_COLUMNS, row, strict=True))
    spec = values["spec"]
    if spec is not None and type(spec) is not dict:  # (a row changed outside convo)
        raise damaged("replays", "spec", spec, "not a JSON object", row_id=values["id"])
    values["spec"] = spec or {}
    return construct(Replay, values)


def _item(row: Any) -> ReplayItem:
    values = dict(zip(_ITEM_COLUMNS, row, strict=True))
    verdict = values["verdict"]
    if verdict is not None and type(verdict) is not dict:  # (a row changed outside convo)
        raise damaged("replay_items", "verdict", verdict, "not a JSON object",
                      conversation_id=values["conversation_id"])  # (an item has no id)
    return construct(ReplayItem, values)


def _strict_json(value: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise StoreInputError(f"{what} must be JSON: {exc}") from None


def create_replay(
    replay_id: str, *, mode: str, spec: Mapping[str, Any], owner: str | None
) -> Plan[Replay]:
    if mode not in ("continue", "teacher-forcing"):
        raise StoreInputError("replay mode must be 'continue' or 'teacher-forcing'")
    check_short(owner, "owner")
    stamp = now()
    values = {
        "id": replay_id, "owner": owner, "mode": mode, "status": "running",
        "spec": _strict_json(dict(spec), "replay spec"), "created_at": stamp, "updated_at": stamp,
    }
    check_values(values, "replay")
    yield Op(sa.insert(RP), values, "none")
    return construct(Replay, values)


def get_replay(replay_id: str, *, owner: str | None) -> Plan[Replay]:
    check_text(replay_id, "replay id")
    stmt = sa.select(RP).where(RP.c.id == replay_id)
    if owner is not None:
        stmt = stmt.where(RP.c.owner == owner)
    row = yield Op(stmt, None, "first")
    if row is None:
        scope = f" for owner {owner!r}" if owner is not None else ""
        raise ReplayNotFound(f"replay {replay_id!r} not found{scope}")
    return _replay(row)


def set_replay_status(replay_id: str, status: str, *, owner: str | None) -> Plan[Replay]:
    if status not in REPLAY_STATUSES:
        raise StoreInputError(f"replay status must be one of {REPLAY_STATUSES}")
    yield from get_replay(replay_id, owner=owner)
    row = yield Op(
        sa.update(RP).where(RP.c.id == replay_id)
        .values(status=status, updated_at=now()).returning(*RP.c),
        None,
        "first",
    )
    return _replay(row)


def list_replays(*, owner: str | None, limit: int, cursor: str | None) -> Plan[ReplayPage]:
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 10_000:
        raise StoreInputError("limit must be an integer in 1..10000")
    stmt = sa.select(RP)
    if owner is not None:
        stmt = stmt.where(RP.c.owner == owner)
    items, next_cursor = yield from newest_first(
        stmt, RP.c.created_at, RP.c.id, cursor, limit, _replay, "created_at"
    )
    return ReplayPage(items=items, next_cursor=next_cursor)


def replay_items(
    replay_id: str, *, conversation_id: str | None, owner: str | None
) -> Plan[list[ReplayItem]]:
    yield from get_replay(replay_id, owner=owner)
    stmt = sa.select(RI).where(RI.c.replay_id == replay_id)
    if conversation_id is not None:
        stmt = stmt.where(RI.c.conversation_id == conversation_id)
    rows = yield Op(stmt.order_by(RI.c.conversation_id, RI.c.turn, RI.c.arm))
    return [_item(r) for r in rows]


def save_replay_item(item: ReplayItem) -> Plan[ReplayItem]:
    values = item.model_dump()
    if values["status"] not in ITEM_STATUSES:
        raise StoreInputError(f"replay item status must be one of {ITEM_STATUSES}")
    for name in ("similarity", "latency_ms"):
        v = values[name]
        if v is not None and not math.isfinite(v):
            raise StoreInputError(f"replay item {name} must be finite")
    values["verdict"] = _strict_json(values["verdict"], "verdict")
    values["created_at"] = now()
    if not values["arm"] or len(values["arm"]) > 64:
        raise StoreInputError("an arm name is 1..64 characters")
    check_values(values, "replay item")
    same = (RI.c.replay_id == item.replay_id) & (RI.c.conversation_id == item.conversation_id) & (
        RI.c.turn == item.turn
    ) & (RI.c.arm == item.arm)
    # Delete + insert in one transaction: portable "upsert" of the item.
    yield Op(sa.delete(RI).where(same), None, "none")
    yield Op(sa.insert(RI), values, "none")
    return construct(ReplayItem, values)


def save_verdict(
    replay_id: str, conversation_id: str, turn: int, verdict: Mapping[str, Any]
) -> Plan[None]:
    yield Op(
        sa.update(RI).where(
            RI.c.replay_id == replay_id, RI.c.conversation_id == conversation_id,
            RI.c.turn == turn,
        ).values(verdict=_strict_json(dict(verdict), "verdict")),
        None,
        "none",
    )
