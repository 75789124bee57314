"""Token costs of image and audio content parts, by OpenAI's published rules.

Images (platform.openai.com/docs/guides/images-vision, "Calculating costs"):

* tile models (GPT-4o, GPT-4.1, GPT-4.5, GPT-4 Turbo, GPT-5, o1/o3): ``detail: low``
  costs a fixed base; ``high`` scales the image to fit 2048x2048, then so its
  shortest side is at most 768px, and adds a per-tile cost for each 512px tile.
  GPT-4o: 85 + 170/tile, GPT-4o mini: 2833 + 5667/tile, GPT-5: 70 + 140/tile,
  o1/o3: 75 + 150/tile.
* patch models (GPT-4.1 mini/nano, GPT-5 mini/nano, o4-mini): 32px patches,
  at most 1536 (larger images are scaled down), times a multiplier
  (1.62 / 2.46 / 1.72).

The size of an image is read from the header of a ``data:`` URL (PNG, JPEG,
GIF, WebP). A remote URL's size is unknown, so the largest cost the rule
allows is counted (an upper bound: 8 tiles, or 1536 patches) and flagged as
an estimate. ``detail: auto`` (the default) lets the server choose, so it is
counted as ``high`` and flagged as an estimate.

Exact (not flagged) are only the rules checked against published API
measurements: the 85/170 family and GPT-4o mini, with ``detail: low``, or
``detail: high`` and a readable size.

Audio input is billed by duration; OpenAI publishes no chat-completions rule,
so convo counts 10 tokens per second (the Realtime API's published user-audio
rate) from the WAV header, or from the MP3 size at an assumed 32 kbit/s, and
always flags it as an estimate.
"""

from __future__ import annotations

import binascii
import math
from dataclasses import dataclass
from typing import Literal

__all__ = ["ImageRule", "audio_tokens", "image_rule_for_model", "image_size", "image_tokens"]


@dataclass(frozen=True, slots=True)
class ImageRule:
    """How one model family bills images."""

    kind: Literal["tile", "patch"]
    base: int = 0
    tile: int = 0
    multiplier: float = 1.0
    verified: bool = False  # matches published API measurements


_GPT4O = ImageRule("tile", 85, 170, verified=True)
_GPT4O_MINI = ImageRule("tile", 2833, 5667, verified=True)
_GPT5 = ImageRule("tile", 70, 140)
_O_SERIES = ImageRule("tile", 75, 150)
# Unknown models (local servers, custom encodings): GPT-4o's rule, never exact.
DEFAULT_IMAGE_RULE = ImageRule("tile", 85, 170)

_FAMILIES: dict[str, ImageRule] = {
    "gpt-5": _GPT5,
    "gpt-5-chat": _GPT5,
    "gpt-5-mini": ImageRule("patch", multiplier=1.62),
    "gpt-5-nano": ImageRule("patch", multiplier=2.46),
    "gpt-4.1": _GPT4O,
    "gpt-4.1-mini": ImageRule("patch", multiplier=1.62),
    "gpt-4.1-nano": ImageRule("patch", multiplier=2.46),
    "gpt-4.5": _GPT4O,
    "gpt-4o": _GPT4O,
    "gpt-4o-mini": _GPT4O_MINI,
    "chatgpt-4o": _GPT4O,
    "gpt-4-turbo": _GPT4O,
    "gpt-4-vision-preview": _GPT4O,
    "gpt-4-1106-vision-preview": _GPT4O,
    "o1": _O_SERIES,
    "o1-pro": _O_SERIES,
    "o3": _O_SERIES,
    "o4-mini": ImageRule("patch", multiplier=1.72),
    "computer-use-preview": _O_SERIES,
}
_FAMILY_KEYS = tuple(sorted(_FAMILIES, key=len, reverse=True))

_MAX_PATCHES = 1536
_MAX_TILES = 8  # 768 x 2048 after scaling: 2 x 4 tiles


def image_rule_for_model(model: str | None) -> ImageRule:
    """The image rule of ``model``'s family (dated snapshots and fine-tunes included)."""
    if model is None:
        return DEFAULT_IMAGE_RULE
    if model.startswith("ft:"):
        model = model[3:].split(":", 1)[0]
    rule = _FAMILIES.get(model)
    if rule is not None:
        return rule
    for key in _FAMILY_KEYS:
        if model.startswith(key) and model[len(key)] == "-":
            return _FAMILIES[key]
    return DEFAULT_IMAGE_RULE


def image_tokens(rule: ImageRule, url: str, detail: str | None) -> tuple[int, bool]:
    """Tokens of one image and whether that number is exact (not an estimate)."""
    size = image_size(url) if url.startswith("data:") else None
    if rule.kind == "patch":
        patches = _MAX_PATCHES if size is None else _patches(*size)
        return math.ceil(patches * rule.multiplier), False
    if detail == "low":
        return rule.base, rule.verified
    if size is None:
        return rule.base + rule.tile * _MAX_TILES, False
    exact = rule.verified and detail == "high"
    return rule.base + rule.tile * _tiles(*size), exact


def _tiles(width: int, height: int) -> int:
    w, h = float(width), float(height)
    if max(w, h) > 2048:
        scale = 2048 / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > 768:
        scale = 768 / min(w, h)
        w, h = w * scale, h * scale
    return math.ceil(w / 512) * math.ceil(h / 512)


def _patches(width: int, height: int) -> int:
    patches = math.ceil(width / 32) * math.ceil(height / 32)
    if patches <= _MAX_PATCHES:
        return patches
    r = math.sqrt(32 * 32 * _MAX_PATCHES / (width * height))
    r *= min(
        math.floor(width * r / 32) / (width * r / 32),
        math.floor(height * r / 32) / (height * r / 32),
    )
    return min(_MAX_PATCHES, math.ceil(width * r / 32) * math.ceil(height * r / 32))


# --- image headers ------------------------------------------------------------------------


def _data_url_bytes(url: str) -> bytes | None:
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        return None
    try:
        return binascii.a2b_base64(payload)
    except (binascii.Error, ValueError):
        return None


def image_size(url: str) -> tuple[int, int] | None:
    """(width, height) of a base64 ``data:`` URL image (PNG, JPEG, GIF, WebP), else None."""
    data = _data_url_bytes(url)
    if data is None:
        return None
    size: tuple[int, int] | None
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        size = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    elif data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        size = int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        size = _webp_size(data)
    elif data[:2] == b"\xff\xd8":
        size = _jpeg_size(data)
    else:
        size = None
    if size is None or size[0] <= 0 or size[1] <= 0:
        return None
    return size


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30:
        return (
            int.from_bytes(data[26:28], "little") & 0x3FFF,
            int.from_bytes(data[28:30], "little") & 0x3FFF,
        )
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        return (
            int.from_bytes(data[24:27], "little") + 1,
            int.from_bytes(data[27:30], "little") + 1,
        )
    return None


# Start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) are not frames.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in _SOF:
            if i + 9 > n:
                return None
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            return width, height
        if length < 2:
            return None
        i += 2 + length
    return None


# --- audio ----------------------------------------------------------------------------------

_AUDIO_TOKENS_PER_SECOND = 10
_MP3_ASSUMED_BITS_PER_SECOND = 32_000


def audio_tokens(data_b64: str, fmt: str) -> int:
    """An estimate of the tokens of a base64 audio clip (always an estimate)."""
    try:
        raw = binascii.a2b_base64(data_b64)
    except (binascii.Error, ValueError):
        raw = b""
    seconds: float | None = None
    if fmt == "wav" and raw[:4] == b"RIFF" and raw[8:12] == b"WAVE" and len(raw) >= 44:
        byte_rate = int.from_bytes(raw[28:32], "little")
        if byte_rate > 0:
            seconds = (len(raw) - 44) / byte_rate
    if seconds is None:
        seconds = len(raw) * 8 / _MP3_ASSUMED_BITS_PER_SECOND
    return max(1, math.ceil(seconds * _AUDIO_TOKENS_PER_SECOND))
