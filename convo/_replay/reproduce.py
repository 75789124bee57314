"""Reproduce a run: re-send its recorded body byte for byte and compare the answers.

OpenAI's reproducible-outputs guidance: with the same ``seed`` and the same
``system_fingerprint`` (the backend configuration), answers should mostly
match; a changed fingerprint means the backend changed under you. A
:class:`Reproduction` puts the two side by side.

The pure part (texts, comparison, run outcome fields) is here; the sync and
async shells are :class:`~convo.Replayer` and :class:`~convo.AsyncReplayer`.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .._client.types import ChatCompletion, Completion
from .._records import Run

__all__ = ["Reproduction", "compare_runs", "outcome_of", "run_text", "text_similarity"]


class Reproduction(BaseModel):
    """A run re-sent, side by side with the original.

    ``similarity`` is difflib's ratio of the two reply texts (1.0: equal).
    ``same_fingerprint`` is None when either answer carried no
    ``system_fingerprint`` (many local servers send none).
    """

    model_config = ConfigDict(frozen=True)

    original: Run
    run: Run = Field(description="the new run (reproduces_id is the original's id)")
    original_text: str | None
    text: str | None
    same_text: bool
    similarity: float
    same_finish_reason: bool
    same_fingerprint: bool | None
    seed: int | None = Field(description="the seed both requests carried, if any")


def run_text(run: Run) -> str | None:
    """The reply text a run received (tool calls as JSON when there is no text)."""
    response = run.response
    if not response:
        return None
    choices = response.get("choices") or []
    if not choices:
        return None
    choice = choices[0]
    if run.endpoint == "completions":
        text = choice.get("text")
        return text if isinstance(text, str) else None
    message = choice.get("message") or {}
    content = message.get("content")
    if isinstance(content, str) and content:
        return content
    calls = message.get("tool_calls")
    if calls:
        return json.dumps(
            [c.get("function") for c in calls], sort_keys=True, separators=(",", ":")
        )
    if isinstance(message.get("refusal"), str):
        return str(message["refusal"])
    return content if isinstance(content, str) else None


def text_similarity(a: str | None, b: str | None) -> float:
    """0..1: difflib's ratio of two texts (two missing texts are equal: 1.0)."""
    if a is None or b is None:
        return 1.0 if a == b else 0.0
    if a == b:
        return 1.0
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def outcome_of(response: ChatCompletion | Completion, seed: int | None) -> dict[str, Any]:
    """The fields :meth:`~convo.Store.finish_run` records for a successful answer."""
    info = response.reply_info(seed=seed)
    usage = response.usage
    return {
        "reported_prompt_tokens": usage.prompt_tokens if usage else None,
        "completion_tokens": usage.completion_tokens if usage else None,
        "usage": info.usage,
        "finish_reason": info.finish_reason,
        "system_fingerprint": response.system_fingerprint,
        "seed": seed,
        "response": response.model_dump(mode="json", exclude_none=True),
    }


def compare_runs(original: Run, new: Run) -> Reproduction:
    a, b = run_text(original), run_text(new)
    fa, fb = original.system_fingerprint, new.system_fingerprint
    seed = original.body().get("seed")
    return Reproduction(
        original=original,
        run=new,
        original_text=a,
        text=b,
        same_text=a == b,
        similarity=text_similarity(a, b),
        same_finish_reason=original.finish_reason == new.finish_reason,
        same_fingerprint=None if fa is None or fb is None else fa == fb,
        seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
    )
