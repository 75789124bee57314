"""Replayer: reproduce recorded runs (and, with replays, re-run stored threads) (sync).

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
    from ._client import OpenAIClient
    from ._store import Store

__all__ = ["Replayer"]


class Replayer:
    """Reproduces runs against a client (the original server, or another one).

    Example::

        replayer = Replayer(store, client)
        rep = replayer.reproduce(run_id)
        rep.same_text, rep.similarity, rep.same_fingerprint
    """

    def __init__(self, store: Store, client: OpenAIClient) -> None:
        self.store = store
        self.client = client

    def __repr__(self) -> str:
        return f"Replayer(base_url={self.client.base_url!r})"

    def reproduce(self, run_id: str, *, owner: str | None = None) -> Reproduction:
        """Re-send run ``run_id``'s exact body; the new run links to it (``reproduces_id``).

        Raises:
            RunNotFound: no such run (for this owner).
            APIError: the request failed (the new run is recorded as failed).
        """
        original = self.store.get_run(run_id, owner=owner)
        run = self.store.start_run(
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
                stream = self.client.send(original.endpoint, original.request, stream=True,
                                          stats=stats)
                for _ in stream:
                    if ttfb is None:
                        ttfb = (time.perf_counter() - start) * 1000
                response = stream.final()
            else:
                response = self.client.send(original.endpoint, original.request, stats=stats)
                ttfb = stats.headers_ms
        except APIError as exc:
            partial = partial_response(stream.snapshot) if stream is not None else None
            self.store.finish_run(
                run.id, status="failed", error_type=type(exc).__name__,
                error_message=str(exc)[:4000], response=partial, attempts=stats.attempts,
                latency_ms=(time.perf_counter() - start) * 1000, owner=owner,
            )
            raise
        finally:
            if stream is not None:
                stream.close()
        seed = original.body().get("seed")
        finished = self.store.finish_run(
            run.id, status="ok", attempts=stats.attempts, ttfb_ms=ttfb,
            latency_ms=(time.perf_counter() - start) * 1000, owner=owner,
            **outcome_of(response, seed if isinstance(seed, int) else None),
        )
        return compare_runs(original, finished.run)
