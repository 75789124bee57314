"""AsyncReplayer: reproduce recorded runs (and, with replays, re-run stored threads) (async).

A thin shell over :mod:`convo._reproduce` (pure): read the run, record a new
one, re-send the recorded body byte for byte, record the answer, compare.
Nothing is added to the conversation: a reproduction is a run, not a turn.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ._client_core import RequestStats
from ._exceptions import APIError
from ._reproduce import Reproduction, compare_runs, outcome_of
from ._turn_plan import partial_response

if TYPE_CHECKING:
    from ._async_client import AsyncOpenAIClient
    from ._async_store import AsyncStore

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
