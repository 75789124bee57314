"""Store plans for branches: forks made by regenerating or editing a turn, or by a replay.

A thread is a root conversation plus its branches. A branch is an ordinary
fork (it shares the history before its fork point, copying nothing) marked
with ``branch_kind`` and ``branch_of`` (the root). The root's
``current_branch_id`` names the branch new turns go to: the conversation id
a backend keeps for a user's thread never changes, and nothing stored is
ever overwritten (the old reply stays on its branch).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict

from .._exceptions import ConversationNotFound, MessageNotFound, StoreInputError
from .._records import Conversation, StoredMessage
from . import sql
from .core import Op, Plan, _fork_source, _lineage, _read_segments, get_conversation, now
from .inputs import check_values
from .lineage import extend
from .rows import (
    construct,
    conversation_from_row,
    message_from_row,
    new_conversation_id,
    validate_json_dict,
)

__all__ = [
    "BRANCH_KINDS", "Branch", "create_branch", "find_by_key", "list_branches",
    "set_current_branch",
]

C = sql.C
M = sql.M

#: The kinds convo makes; replays are hidden from :meth:`list_branches` unless asked.
BRANCH_KINDS: Final = ("regenerate", "edit", "replay", "branch")


class Branch(BaseModel):
    """One branch of a thread, as :meth:`~convo.Store.list_branches` lists it."""

    model_config = ConfigDict(frozen=True)

    conversation: Conversation
    last_message: StoredMessage | None = None
    current: bool = False


def thread_root(conversation: Conversation) -> str:
    return conversation.branch_of or conversation.id


def create_branch(
    conversation_id: str,
    *,
    at: int,
    kind: str,
    make_current: bool,
    title: str | None,
    metadata: Mapping[str, Any] | None,
    owner: str | None,
) -> Plan[Conversation]:
    """Fork ``conversation_id`` after message ``at`` as a branch of its thread."""
    if kind not in BRANCH_KINDS:
        raise StoreInputError(f"branch kind must be one of {BRANCH_KINDS}, got {kind!r}")
    if not isinstance(at, int) or isinstance(at, bool):
        raise StoreInputError(f"at must be an integer, got {at!r}")
    meta = validate_json_dict(metadata, "conversation metadata")
    source, chain = yield from _fork_source(conversation_id, owner)
    if not 0 <= at <= source.last_seq:
        raise MessageNotFound(
            f"cannot branch conversation {conversation_id!r} at {at}: "
            f"it has messages 1..{source.last_seq}"
        )
    root = thread_root(source)
    stamp = now()
    values = {
        "id": new_conversation_id(),
        "title": title if title is not None else source.title,
        "owner": source.owner,
        "metadata": meta,
        "created_at": stamp,
        "updated_at": stamp,
        "parent_id": source.id,
        "fork_seq": at,
        "last_seq": at,
        "branch_kind": kind,
        "branch_of": root,
        "current_branch_id": None,
    }
    row = {**values, "lineage": extend(source.id, at, chain)}
    check_values(row, "branch")
    try:
        yield Op(sql.INSERT_CONVERSATION, row, "none")
    except sa.exc.IntegrityError as exc:  # the source was deleted meanwhile
        raise ConversationNotFound(conversation_id, owner=owner) from exc
    if make_current:
        yield Op(
            sa.update(C).where(C.c.id == root).values(current_branch_id=values["id"]),
            None,
            "none",
        )
    return construct(Conversation, {**values, "metadata": meta or {}})


def set_current_branch(
    root_id: str, branch_id: str | None, *, owner: str | None
) -> Plan[Conversation]:
    """Make ``branch_id`` (a branch of ``root_id``, or the root itself / None) current."""
    root = yield from get_conversation(root_id, owner=owner)
    if root.branch_of is not None:
        raise StoreInputError(
            f"{root_id!r} is a branch of {root.branch_of!r}; set the current branch on the root"
        )
    target = None if branch_id in (None, root_id) else branch_id
    if target is not None:
        branch = yield from get_conversation(target, owner=owner)
        if branch.branch_of != root_id:
            raise StoreInputError(f"{target!r} is not a branch of {root_id!r}")
    row = yield Op(
        sa.update(C).where(C.c.id == root_id).values(current_branch_id=target).returning(*C.c),
        None,
        "first",
    )
    if row is None:
        raise ConversationNotFound(root_id, owner=owner)
    return conversation_from_row(row)


def list_branches(
    conversation_id: str, *, include_replays: bool, owner: str | None
) -> Plan[list[Branch]]:
    """The thread of ``conversation_id`` (the root first, then branches oldest first)."""
    conversation = yield from get_conversation(conversation_id, owner=owner)
    root_id = thread_root(conversation)
    root = conversation if root_id == conversation.id else (
        yield from get_conversation(root_id, owner=owner)
    )
    stmt = sa.select(C).where(C.c.branch_of == root_id).order_by(C.c.created_at, C.c.id)
    if not include_replays:
        stmt = stmt.where(C.c.branch_kind != "replay")
    rows = yield Op(stmt)
    members = [root, *(conversation_from_row(r) for r in rows)]
    current = root.current_branch_id or root.id
    out = []
    for member in members:
        last = None
        if member.last_seq:
            lineage = yield from _lineage(member.id, None)
            found = yield from _read_segments(
                lineage, after=None, before=None, limit=1, newest_first=True
            )
            last = message_from_row(found[0]) if found else None
        out.append(Branch(conversation=member, last_message=last, current=member.id == current))
    return out


def find_by_key(
    conversation_id: str, key: str, *, owner: str | None
) -> Plan[StoredMessage | None]:
    """The message stored under idempotency ``key`` in this conversation's view
    (its own rows, or an ancestor's up to the fork point)."""
    lineage = yield from _lineage(conversation_id, owner)
    for cid, lo, hi in lineage.live():
        row = yield Op(
            sa.select(M).where(
                M.c.conversation_id == cid, M.c.idempotency_key == key,
                M.c.seq > lo, M.c.seq <= hi,
            ),
            None,
            "first",
        )
        if row is not None:
            return message_from_row(row)
    return None
