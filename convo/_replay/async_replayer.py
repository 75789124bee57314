"""AsyncReplayer: reproduce recorded runs (and, with replays, re-run stored threads) (async).

A thin shell over :mod:`convo._replay.reproduce` (pure): read the run, record a new
one, re-send the recorded body byte for byte, record the answer, compare.
Nothing is added to the conversation: a reproduction is a run, not a turn.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._client.core import RequestStats
from .._exceptions import APIError, ConfigurationError, ConvoError
from .._store.replays import ReplayItem
from .._store.runs import new_run_id
from .._turns.async_chat import AsyncChat, _afinish
from .._turns.plan import StoreCall, TurnResult, partial_response, plan_turn
from .plan import (
    Arm,
    JudgeTurn,
    ReplayMode,
    ReplayProgress,
    ReplayReport,
    RunTurn,
    SourceRead,
    arms_from_spec,
    check_arms,
    judge_messages,
    parse_verdict,
    plan_replay,
    replay_spec,
)
from .reproduce import Reproduction, compare_runs, outcome_of

if TYPE_CHECKING:
    from .._client.async_client import AsyncOpenAIClient
    from .._store.async_store import AsyncStore

__all__ = ["AsyncReplayer"]


class AsyncReplayer:
    """Reproduces runs, as :class:`~convo.Replayer` does, over an async store and client.

    Example::

        replayer = AsyncReplayer(store, client)
        rep = await replayer.reproduce(run_id)
        rep.same_text, rep.similarity, rep.same_fingerprint
    """

    def __init__(self, store: AsyncStore, client: AsyncOpenAIClient) -> None:
        self.store = store
        self.client = client

    def __repr__(self) -> str:
        return f"AsyncReplayer(base_url={self.client.base_url!r})"

    async def reproduce(self, run_id: str, *, owner: str | None = None) -> Reproduction:
        """Re-send run ``run_id``'s exact body; the new run links to it (``reproduces_id``).

        Raises:
            RunNotFound: no such run (for this owner).
            APIError: the request failed (the new run is recorded as failed).
        """
        original = await self.store.get_run(run_id, owner=owner)
        run = await self.store.start_run(
            original.conversation_id, endpoint=original.endpoint, mode=original.mode,
            model=original.model, request=original.request, base_url=self.client.base_url,
            stream=original.stream, settings=original.settings, kept_seqs=original.kept_seqs,
            summary_id=original.summary_id, input_seq=original.input_seq,
            reproduces_id=original.id, owner=owner,
        )
        stats = RequestStats()
        start = time.perf_counter()
        ttfb: float | None = None
        stream: Any = None
        try:
            if original.stream:
                stream = await self.client.send(original.endpoint, original.request, stream=True,
                                          stats=stats)
                async for _ in stream:
                    if ttfb is None:
                        ttfb = (time.perf_counter() - start) * 1000
                response = await stream.final()
            else:
                response = await self.client.send(
                    original.endpoint, original.request, stats=stats
                )
                ttfb = stats.headers_ms
        except APIError as exc:
            partial = partial_response(stream.snapshot) if stream is not None else None
            await self.store.finish_run(
                run.id, status="failed", error_type=type(exc).__name__,
                error_message=str(exc)[:4000], response=partial, attempts=stats.attempts,
                latency_ms=(time.perf_counter() - start) * 1000, owner=owner,
            )
            raise
        finally:
            if stream is not None:
                await stream.close()
        seed = original.body().get("seed")
        finished = await self.store.finish_run(
            run.id, status="ok", attempts=stats.attempts, ttfb_ms=ttfb,
            latency_ms=(time.perf_counter() - start) * 1000, owner=owner,
            **outcome_of(response, seed if isinstance(seed, int) else None),
        )
        return compare_runs(original, finished.run)

    # --- replays -----------------------------------------------------------------------

    async def replay(
        self,
        conversations: str | Sequence[str] | None = None,
        *,
        arms: Sequence[Arm | str] = (),
        mode: ReplayMode = "continue",
        judge: str | None = None,
        judge_client: AsyncOpenAIClient | None = None,
        where: Mapping[str, Any] | None = None,
        replay_id: str | None = None,
        owner: str | None = None,
        on_progress: Callable[[ReplayProgress], None] | None = None,
        concurrency: int = 8,
    ) -> ReplayReport:
        """Re-run stored conversations against ``arms``; see :mod:`the replay docs <convo>`.

        Args:
            conversations: an id or ids; or None with ``where`` (``owner``,
                ``metadata``, ``created_after``, ``created_before``: the
                filters of :meth:`~convo.Store.list_conversations`).
            arms: :class:`~convo.Arm` values or ``"MODEL[:mode[:template]]"``.
            mode: ``"continue"`` (each arm's replies feed its next turn) or
                ``"teacher-forcing"`` (each turn answers the original history).
            judge: a model that compares each turn's replies (through
                ``judge_client``, default the replayer's client).
            replay_id: resume that replay: items already ``ok`` are skipped.
            on_progress: called after each conversation.
            concurrency: conversations replayed at once (turns of one
                conversation always run in order).
        """
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
            raise ConfigurationError("concurrency must be an integer >= 1")
        replay, arm_list, ids = await self._start(conversations, arms, mode, judge, where,
                                            replay_id, owner)
        chats = {a.label: self._chat(a) for a in arm_list}
        gate = asyncio.Semaphore(concurrency)
        finished = 0

        async def one(cid: str) -> None:
            nonlocal finished
            async with gate:
                plan = plan_replay(replay, cid, list(chats), judge=replay.spec.get("judge")
                                   is not None, owner=owner)
                items = await self._drive(plan, chats, replay.spec.get("judge"), judge_client,
                                          owner)
            finished += 1
            if on_progress is not None:
                on_progress(ReplayProgress(replay_id=replay.id, conversation_id=cid,
                                           done=finished, total=len(ids), items=len(items)))

        try:
            async with asyncio.TaskGroup() as group:
                for cid in ids:
                    group.create_task(one(cid))
        except BaseException:
            await asyncio.shield(self.store.set_replay_status(replay.id, "interrupted",
                                                              owner=owner))
            raise
        replay = await self.store.set_replay_status(replay.id, "done", owner=owner)
        return ReplayReport(
            replay=replay, items=await self.store.replay_items(replay.id, owner=owner)
        )

    async def report(self, replay_id: str, *, owner: str | None = None) -> ReplayReport:
        """A stored replay and its items."""
        replay = await self.store.get_replay(replay_id, owner=owner)
        return ReplayReport(
            replay=replay, items=await self.store.replay_items(replay_id, owner=owner)
        )

    async def _start(
        self,
        conversations: str | Sequence[str] | None,
        arms: Sequence[Arm | str],
        mode: ReplayMode,
        judge: str | None,
        where: Mapping[str, Any] | None,
        replay_id: str | None,
        owner: str | None,
    ) -> tuple[Any, list[Arm], list[str]]:
        if replay_id is not None:
            replay = await self.store.get_replay(replay_id, owner=owner)
            given = check_arms(arms) if arms else []
            arm_list = arms_from_spec(replay.spec, given)
            ids = [str(c) for c in replay.spec.get("conversations", [])]  # type: ignore[union-attr]
            replay = await self.store.set_replay_status(replay.id, "running", owner=owner)
            return replay, arm_list, ids
        if mode not in ("continue", "teacher-forcing"):
            raise ConfigurationError("mode must be 'continue' or 'teacher-forcing'")
        arm_list = check_arms(arms)
        ids = await self._conversation_ids(conversations, where, owner)
        replay = await self.store.create_replay(
            new_run_id(), mode=mode, spec=replay_spec(ids, arm_list, mode, judge), owner=owner
        )
        return replay, arm_list, ids

    async def _conversation_ids(
        self,
        conversations: str | Sequence[str] | None,
        where: Mapping[str, Any] | None,
        owner: str | None,
    ) -> list[str]:
        if conversations is not None:
            ids = [conversations] if isinstance(conversations, str) else list(conversations)
            for cid in ids:
                await self.store.reader.get_conversation(cid, owner=owner)  # exists, visible
            return ids
        filters = dict(where or {})
        if owner is not None:
            filters.setdefault("owner", owner)
        ids, cursor = [], None
        while True:
            page = await self.store.reader.list_conversations(limit=500, cursor=cursor, **filters)
            ids.extend(c.id for c in page.items if c.branch_kind is None)
            if page.next_cursor is None:
                return ids[::-1]  # oldest first
            cursor = page.next_cursor

    def _chat(self, arm: Arm) -> AsyncChat:
        return AsyncChat(
            self.store, arm.client or self.client, model=arm.model, mode=arm.mode,
            template=arm.template, encoding=arm.encoding, profile=arm.profile,
            budget=arm.budget, params=arm.params, summarizer=arm.summarizer,
        )

    async def _drive(
        self,
        plan: Generator[Any, Any, list[ReplayItem]],
        chats: dict[str, AsyncChat],
        judge: Any,
        judge_client: AsyncOpenAIClient | None,
        owner: str | None,
    ) -> list[ReplayItem]:
        value: Any = None
        try:
            effect = plan.send(None)
            while True:
                if isinstance(effect, StoreCall):
                    # the replayed conversation's own reads: from the replica, if any
                    store = self.store.reader if isinstance(effect, SourceRead) else self.store
                    value = await getattr(store, effect.method)(*effect.args, **effect.kwargs)
                elif isinstance(effect, RunTurn):
                    value = await self._run_turn(chats[effect.arm], effect, owner)
                elif isinstance(effect, JudgeTurn):
                    value = await self._judge(effect, str(judge), judge_client or self.client)
                effect = plan.send(value)
        except StopIteration as stop:
            items: list[ReplayItem] = stop.value
            return items

    async def _run_turn(
        self, chat: AsyncChat, effect: RunTurn, owner: str | None
    ) -> TurnResult | ConvoError:
        spec = chat._spec(
            effect.conversation_id, effect.message, tool_results=effect.tool_results,
            idempotency_key=effect.key, owner=owner, response_format=None, stream=False,
            params={}, resolve_branch=False,
        )
        spec.replays_id = effect.replays_id
        if effect.tools:
            spec.tool_definitions = effect.tools
        try:
            return await _afinish(chat._drive(plan_turn(spec), events=False))
        except ConvoError as exc:  # recorded on the item; the replay goes on
            return exc

    async def _judge(
        self, effect: JudgeTurn, model: str, client: AsyncOpenAIClient
    ) -> dict[str, Any]:
        try:
            reply = await client.chat(model=model, messages=judge_messages(effect),
                                response_format={"type": "json_object"}, temperature=0)
        except ConvoError as exc:
            return {"model": model, "error": f"{type(exc).__name__}: {exc}"[:2000]}
        return parse_verdict(reply.text, model)
