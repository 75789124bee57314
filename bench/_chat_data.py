"""A synthetic short-message chat, the data of bench_summaries.py and its test.

Deterministic (seeded): turn ``k`` of a thread depends only on the seed and
``k``. The sizes are those of a messaging-style assistant with concise
replies, the kind of thread a tight 1,500-token budget is meant for:

* user messages: 1 to 3 sentences of 5 to 14 words (26 tokens on average);
* assistant replies: 1 to 4 sentences of 8 to 20 words (42 tokens);
* a turn (user + reply) 68 tokens on average;
* summaries the fake model returns: 100 to 160 words (137 tokens).

(Tokens: gpt-4o-mini / o200k_base, OpenAI's per-message framing included;
seed 7, 300 turns.)

Words are drawn from a list of common English words, so tokens per word are
close to real prose (about 1.2 with o200k_base).
"""

from __future__ import annotations

import random

__all__ = ["SYSTEM", "summary_text", "turn"]

SYSTEM = "You are a concise assistant for a travel agency. Answer in a few sentences."

_WORDS = (  # noqa: SIM905 (one string reads better than 170 quoted words)
    "the a to and of in for is on that with you it this be are as at from have or can will "
    "your we not all but they more about if there what so up out time when which one would "
    "their do some how like just into day trip hotel train ticket city museum beach night "
    "room price booking flight morning dinner walk tour guide view river old town street "
    "market coffee lunch station airport bus car rental weather rain sun cold warm week "
    "weekend family friends kids bag passport visa change cancel refund late early quiet "
    "busy cheap nice best near far open close book check plan visit stay leave arrive need "
    "want think know help tell ask find see try take make get give good great small big "
    "local famous historic modern easy short long free extra included breakfast pool spa "
    "garden castle bridge square church park island lake mountain hike bike boat ferry"
).split()


def _sentence(rng: random.Random, lo: int, hi: int) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(lo, hi))]
    return " ".join(words).capitalize() + rng.choice((".", ".", ".", "?", "!"))


def _text(rng: random.Random, sentences: tuple[int, int], words: tuple[int, int]) -> str:
    return " ".join(_sentence(rng, *words) for _ in range(rng.randint(*sentences)))


def turn(seed: int, k: int, scale: float = 1.0) -> tuple[str, str]:
    """The user message and the assistant reply of turn ``k`` (``scale``: words per sentence x)."""
    rng = random.Random(f"{seed}:{k}")
    user = _text(rng, (1, 3), (int(5 * scale), int(14 * scale)))
    return user, _text(rng, (1, 4), (int(8 * scale), int(20 * scale)))


def summary_text(seed: int, k: int) -> str:
    """The ``k``-th summary the fake model returns."""
    rng = random.Random(f"{seed}:summary:{k}")
    words: list[str] = []
    while len(words) < rng.randint(100, 160):
        words += _sentence(rng, 8, 16).split()
    return " ".join(words)
