"""The async store's calls for threads: branches, replays and run records.

A part of :class:`convo.AsyncStore` (its base class): the async twin of
:mod:`convo._store.threads`, over the same plans.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar

from .._messages import Message
from .._records import Conversation, ReplyInfo, Run, RunPage, StoredMessage
from . import branches, context, replays, runs
from .branches import Branch
from .core import Mode, Plan
from .replays import Replay, ReplayItem, ReplayPage
from .runs import FinishedRun

__all__ = ["AsyncStoreThreads"]

T = TypeVar("T")


class AsyncStoreThreads:
    """Branches, replays and run records: the part of :class:`convo.AsyncStore` that
    turns and replays use (see :class:`convo.AsyncStore`)."""

    _dialect: str

    async def _run(self, plan: Plan[T], mode: Mode = "read") -> T:
        raise NotImplementedError  # the store's shell (convo.AsyncStore._run)

    # --- branches ------------------------------------------------------------------------

    async def create_branch(
        self,
        conversation_id: str,
        *,
        at: int,
        kind: Literal["regenerate", "edit", "replay", "branch"] = "branch",
        make_current: bool = True,
        title: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        owner: str | None = None,
    ) -> Conversation:
        """Fork ``conversation_id`` after message ``at`` as a branch of its thread.

        The branch shares the history up to ``at`` (nothing is copied or
        overwritten); with ``make_current`` the thread's root points at it,
        so turns sent to the root go there. Replays use ``kind="replay"``.

        Raises:
            ConversationNotFound: no such conversation (for this owner).
            MessageNotFound: ``at`` is beyond the conversation's last message.
        """
        return await self._run(
            branches.create_branch(conversation_id, at=at, kind=kind, make_current=make_current,
                                   title=title, metadata=metadata, owner=owner),
            "write",
        )

    async def set_current_branch(
        self, root_id: str, branch_id: str | None, *, owner: str | None = None
    ) -> Conversation:
        """Make a branch of the thread ``root_id`` current (``None`` or the root: the root)."""
        return await self._run(branches.set_current_branch(root_id, branch_id, owner=owner), "write")

    async def list_branches(
        self, conversation_id: str, *, include_replays: bool = False, owner: str | None = None
    ) -> list[Branch]:
        """The thread of ``conversation_id``: its root, then its branches, each with its
        last message and whether it is current. Replay branches only with ``include_replays``."""
        return await self._run(
            branches.list_branches(conversation_id, include_replays=include_replays, owner=owner)
        )

    async def find_by_key(
        self, conversation_id: str, idempotency_key: str, *, owner: str | None = None
    ) -> StoredMessage | None:
        """The message stored under ``idempotency_key`` in this conversation's view,
        inherited ones included (a branch sees its thread's keys up to its fork point)."""
        return await self._run(branches.find_by_key(conversation_id, idempotency_key, owner=owner))

    # --- replays -------------------------------------------------------------------------

    async def create_replay(
        self,
        replay_id: str,
        *,
        mode: Literal["continue", "teacher-forcing"],
        spec: Mapping[str, Any],
        owner: str | None = None,
    ) -> Replay:
        """Record a new replay (``running``); :class:`~convo.Replayer` calls this."""
        return await self._run(
            replays.create_replay(replay_id, mode=mode, spec=spec, owner=owner), "write"
        )

    async def get_replay(self, replay_id: str, *, owner: str | None = None) -> Replay:
        """One replay. Raises :class:`~convo.ReplayNotFound` if there is none."""
        return await self._run(replays.get_replay(replay_id, owner=owner))

    async def set_replay_status(
        self,
        replay_id: str,
        status: Literal["running", "done", "failed", "interrupted"],
        *,
        owner: str | None = None,
    ) -> Replay:
        """Set a replay's status."""
        return await self._run(replays.set_replay_status(replay_id, status, owner=owner), "write")

    async def list_replays(
        self, *, owner: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> ReplayPage:
        """Replays, newest first (keyset paging with ``cursor``)."""
        return await self._run(replays.list_replays(owner=owner, limit=limit, cursor=cursor))

    async def replay_items(
        self,
        replay_id: str,
        *,
        conversation_id: str | None = None,
        owner: str | None = None,
    ) -> list[ReplayItem]:
        """A replay's items (by conversation, turn, arm)."""
        return await self._run(
            replays.replay_items(replay_id, conversation_id=conversation_id, owner=owner)
        )

    async def save_replay_item(self, item: ReplayItem) -> ReplayItem:
        """Store (or replace) one replay item."""
        return await self._run(replays.save_replay_item(item), "write")

    async def save_verdict(
        self, replay_id: str, conversation_id: str, turn: int, verdict: Mapping[str, Any]
    ) -> None:
        """Store a judge's verdict on every item of one turn."""
        await self._run(replays.save_verdict(replay_id, conversation_id, turn, verdict), "write")

    # --- run records ---------------------------------------------------------------------

    async def start_run(
        self,
        conversation_id: str,
        *,
        endpoint: Literal["chat.completions", "completions"],
        mode: Literal["chat", "completion"],
        model: str,
        request: str | bytes | Mapping[str, Any],
        base_url: str | None = None,
        stream: bool = False,
        settings: Mapping[str, Any] | None = None,
        kept_seqs: Sequence[int] = (),
        summary_id: int | None = None,
        input_seq: int | None = None,
        idempotency_key: str | None = None,
        round: int = 0,
        estimated_prompt_tokens: int | None = None,
        reproduces_id: str | None = None,
        replays_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        owner: str | None = None,
        token_counts: tuple[str, context.TokenCounts] | None = None,
    ) -> Run:
        """Record a request about to be sent, as a ``pending`` run (its own transaction).

        ``request`` is the body exactly as it will be sent (JSON text is kept
        byte for byte; a mapping is serialized as the client serializes it).
        The turn layer calls this for you; call it yourself to record requests
        you send by other means.
        ``token_counts``: ``(encoding, {message id: tokens})`` counted by the
        context build for this request, stored in the same transaction (existing
        counts are kept), so a turn's build needs no write transaction of its own.

        Raises:
            ConversationNotFound: no such conversation (for this owner).
            StoreInputError: a field of the wrong type or shape.
        """
        return await self._run(
            runs.start_run(
                conversation_id, endpoint=endpoint, mode=mode, model=model, request=request,
                base_url=base_url, stream=stream, settings=settings, kept_seqs=kept_seqs,
                summary_id=summary_id, input_seq=input_seq, idempotency_key=idempotency_key,
                round=round, estimated_prompt_tokens=estimated_prompt_tokens,
                reproduces_id=reproduces_id, replays_id=replays_id, metadata=metadata,
                owner=owner, token_counts=token_counts, dialect=self._dialect,
            ),
            "write",
        )

    async def finish_run(
        self,
        run_id: str,
        *,
        status: Literal["ok", "failed", "cancelled", "incomplete"],
        reply: Message | Mapping[str, Any] | None = None,
        reply_info: ReplyInfo | None = None,
        reply_key: str | None = None,
        owner: str | None = None,
        started: Run | None = None,
        **outcome: Any,
    ) -> FinishedRun:
        """Record how a pending run ended; with ``reply``, store it in the same transaction.

        ``outcome`` fields: ``reported_prompt_tokens``, ``completion_tokens``,
        ``usage``, ``attempts``, ``ttfb_ms``, ``latency_ms``, ``finish_reason``,
        ``system_fingerprint``, ``seed``, ``response``, ``error_type``,
        ``error_message``, ``reply_message_id``. With ``reply_key``, a reply
        already stored under that key (a concurrent send of the same turn) is
        kept instead, and this run is recorded as ``cancelled``
        (``FinishedRun.duplicate``).
        ``started``: the :class:`~convo.Run` :meth:`start_run` returned for this
        run; the finished run is built from it and the outcome instead of being
        read back (a pending run changes nowhere else). The turn layer passes it.

        Raises:
            RunNotFound: no such run (for this owner).
            StoreInputError: the run is not pending, or a field is invalid.
        """
        return await self._run(
            runs.finish_run(run_id, status=status, reply=reply, reply_info=reply_info,
                            reply_key=reply_key, outcome=outcome, owner=owner,
                            started=started, dialect=self._dialect),
            "write",
        )

    async def get_run(self, run_id: str, *, owner: str | None = None) -> Run:
        """One run record. Raises :class:`~convo.RunNotFound`."""
        return await self._run(runs.get_run(run_id, owner=owner))

    async def list_runs(
        self,
        conversation_id: str,
        *,
        owner: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunPage:
        """The runs of a conversation, newest first (keyset paging with ``cursor``)."""
        return await self._run(
            runs.list_runs(conversation_id, owner=owner, limit=limit, cursor=cursor)
        )


    async def turn_runs(
        self, conversation_id: str, idempotency_key: str, *, owner: str | None = None
    ) -> list[Run]:
        """The runs of the turn sent with ``idempotency_key``, oldest first."""
        return await self._run(runs.turn_runs(conversation_id, idempotency_key, owner=owner))

    async def runs_for_replies(
        self, conversation_id: str, message_ids: Sequence[int], *, owner: str | None = None
    ) -> dict[int, Run]:
        """Reply message id -> the ``ok`` run that produced it (replies that have one)."""
        return await self._run(runs.runs_for_replies(conversation_id, message_ids, owner=owner))
