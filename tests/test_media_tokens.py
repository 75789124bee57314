"""Image and audio costs: image headers byte by byte, OpenAI's sizing rules at their edges.

The pure functions of convo._tokens.media, fed headers built here byte by byte (the
layouts are the formats' own: PNG IHDR, GIF logical screen, WebP VP8/VP8L/VP8X, JPEG
markers and segments, RIFF WAVE).
"""

from __future__ import annotations

import base64

import pytest

from convo._tokens.media import audio_tokens, image_rule_for_model, image_size, image_tokens


def data_url(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(raw).decode()


def png(width: int, height: int, extra: bytes = b"") -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR" + width.to_bytes(4, "big") + height.to_bytes(4, "big") + extra


def gif(width: int, height: int, version: bytes = b"89a", extra: bytes = b"") -> bytes:
    return b"GIF" + version + width.to_bytes(2, "little") + height.to_bytes(2, "little") + extra


def riff(kind: bytes, chunk: bytes, payload: bytes) -> bytes:
    return b"RIFF" + (4 + 8 + len(payload)).to_bytes(4, "little") + kind + chunk + len(payload).to_bytes(4, "little") + payload


def segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def sof(width: int, height: int, marker: int = 0xC0) -> bytes:
    return segment(marker, b"\x08" + height.to_bytes(2, "big") + width.to_bytes(2, "big") + b"\x03")


SOI = b"\xff\xd8"


# --- which rule a model follows -------------------------------------------------------------------


@pytest.mark.parametrize(("model", "base", "tile", "verified"), [
    ("gpt-4o-mini", 2833, 5667, True),
    ("gpt-4o-mini-2024-07-18", 2833, 5667, True),
    ("ft:gpt-4o-mini-2024-07-18:my-org:custom:9xY", 2833, 5667, True),
    ("ft:gpt-4o-mini:acme::abc123", 2833, 5667, True),
    ("ft:o1:acme", 75, 150, False),
    ("gpt-4o", 85, 170, True),
    ("FT:gpt-4o-mini:acme", 85, 170, False),
    (None, 85, 170, False),
])
def test_fine_tunes_follow_their_base_model(model: str | None, base: int, tile: int, verified: bool) -> None:
    rule = image_rule_for_model(model)
    assert (rule.base, rule.tile, rule.verified) == (base, tile, verified)


# --- images: tiles --------------------------------------------------------------------------------


GPT4O = image_rule_for_model("gpt-4o")


def tiles(width: int, height: int) -> int:
    tokens, exact = image_tokens(GPT4O, data_url(png(width, height)), "high")
    assert exact
    return (tokens - 85) // 170


@pytest.mark.parametrize(("width", "height", "count"), [
    (512, 512, 1), (513, 512, 2), (100, 513, 2), (1024, 1024, 4),  # OpenAI's example: 4 tiles
    (2048, 4096, 6),  # OpenAI's example: 1024 x 2048 after scaling, then 768 x 1536: 6 tiles
    (2049, 100, 4),   # wider than 2048: scaled to 2048 x 99.95
    (4096, 100, 4),   # scaled to 2048 x 50
    (769, 1537, 6),   # shortest side 769: scaled to 768 x 1535
    (768, 1600, 8),   # shortest side exactly 768: not scaled
])
def test_high_detail_tiles(width: int, height: int, count: int) -> None:
    assert tiles(width, height) == count


def test_unknown_sizes_cost_the_most_and_are_estimates() -> None:
    assert image_tokens(GPT4O, "https://example.com/cat.png", "high") == (85 + 170 * 8, False)
    assert image_tokens(GPT4O, "https://example.com/cat.png", "low") == (85, True)
    assert image_tokens(GPT4O, data_url(png(512, 512)), None) == (85 + 170, False)  # auto


# --- images: patches ---------------------------------------------------------------------------------


MINI = image_rule_for_model("gpt-4.1-mini")


def patches(width: int, height: int) -> int:
    tokens, exact = image_tokens(MINI, data_url(png(width, height)), "high")
    assert not exact
    return tokens


@pytest.mark.parametrize(("width", "height", "count"), [
    (1024, 1024, 1024),  # OpenAI's example
    (1800, 2400, 1452),  # OpenAI's example: scaled to 1056 x 1408, 33 x 44 patches
    (2400, 1800, 1452),  # the same, the other way round
    (33, 32, 2), (32, 33, 2),
    (1536, 1024, 1536),  # exactly the cap: not scaled
    (1505, 993, 1536),   # 48 x 32 patches, exactly the cap: not scaled either
])
def test_patches(width: int, height: int, count: int) -> None:
    assert patches(width, height) == -(-count * 162 // 100)  # times 1.62, rounded up


def test_a_remote_image_costs_the_patch_cap() -> None:
    assert image_tokens(MINI, "https://example.com/cat.png", "low") == (-(-1536 * 162 // 100), False)


# --- image headers --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "size"), [
    (png(640, 480), (640, 480)),
    (png(2**24 + 5, 2**24 + 7), (2**24 + 5, 2**24 + 7)),
    (png(640, 480, b"\x00" * 20), (640, 480)),
    (png(0, 480), None), (png(640, 0), None), (png(640, 480)[:23], None),
    (gif(320, 200), (320, 200)),
    (gif(320, 200, b"87a"), (320, 200)),
    (gif(320, 200, extra=b"\xff\xff\xff"), (320, 200)),
    (gif(320, 200)[:9], None),
    (gif(320, 200, b"87A"), None),
    (riff(b"WEBP", b"VP8 ", b"\x00\x00\x00\x9d\x01\x2a" + (300).to_bytes(2, "little") + (150).to_bytes(2, "little")), (300, 150)),
    (riff(b"WEBP", b"VP8L", b"\x2f" + ((300 - 1) | (150 - 1) << 14).to_bytes(4, "little")), (300, 150)),
    (riff(b"WEBP", b"VP8X", b"\x00" * 4 + (299).to_bytes(3, "little") + (149).to_bytes(3, "little") + b"\xff\xff"), (300, 150)),
    (riff(b"WEBP", b"ABCD", b"\x00" * 20), None),
    (b"XXXX" + riff(b"WEBP", b"VP8X", b"\x00" * 4 + (299).to_bytes(3, "little") + (149).to_bytes(3, "little"))[4:], None),
    (riff(b"WAVE", b"fmt ", b"\x00" * 20), None),
    (b"not an image at all, not at all", None),
])
def test_image_sizes_from_headers(raw: bytes, size: tuple[int, int] | None) -> None:
    assert image_size(data_url(raw)) == size


@pytest.mark.parametrize(("raw", "size"), [
    (SOI + segment(0xE0, b"JFIF\x00" + b"\x00" * 9) + sof(640, 480), (640, 480)),
    (SOI + sof(640, 480, marker=0xC2), (640, 480)),                           # progressive
    (SOI + b"\xff" + sof(640, 480), (640, 480)),                              # a fill byte
    (SOI + b"\xff\xff" + sof(640, 480), (640, 480)),                          # two
    (SOI + b"\xff\x01" + b"\xff\xd0" + b"\xff\xd7" + sof(640, 480), (640, 480)),  # no-length markers
    (SOI + segment(0xE1, b"\x00" * 300) + sof(640, 480), (640, 480)),        # a long segment
    (SOI + segment(0xE1, b"") + sof(640, 480), (640, 480)),                  # an empty one
    (SOI + segment(0xC4, b"\x00" * 10) + sof(640, 480), (640, 480)),         # DHT is not a frame
    (SOI + sof(640, 480)[:9], (640, 480)),                                    # ends right after the size
    (SOI + sof(640, 480)[:8], None),                                          # cut inside the size
    (SOI + segment(0xE0, b"\x00" * 30), None),                               # no frame at all
    (SOI + segment(0xE0, b"\x00" * 30)[:10], None),                          # cut inside a segment
    (SOI + b"\xff\xe0\x00\x01" + sof(640, 480), None),                        # a length below 2
    (SOI + b"\x00\x00" + sof(640, 480), None),                                # not a marker
])
def test_jpeg_sizes_from_markers(raw: bytes, size: tuple[int, int] | None) -> None:
    assert image_size(data_url(raw, "image/jpeg")) == size


@pytest.mark.parametrize("url", [
    "data:image/png," + base64.b64encode(png(640, 480)).decode(),               # not base64-marked
    "data:image/png;x=a,b;base64," + base64.b64encode(png(640, 480)).decode(),  # data starts at the first comma
    "data:image/png;base64,***",
    "data:image/png;base64",
])
def test_data_urls_that_hold_no_readable_image(url: str) -> None:
    assert image_size(url) is None


# --- audio ----------------------------------------------------------------------------------------------


def wav(samples: bytes, byte_rate: int) -> str:
    fmt = (1).to_bytes(2, "little") + (1).to_bytes(2, "little") + (8000).to_bytes(4, "little")
    fmt += byte_rate.to_bytes(4, "little") + (2).to_bytes(2, "little") + (16).to_bytes(2, "little")
    raw = riff(b"WAVE", b"fmt ", fmt) + b"data" + len(samples).to_bytes(4, "little") + samples
    assert len(raw) == 44 + len(samples)
    return base64.b64encode(raw).decode()


@pytest.mark.parametrize(("data", "fmt", "tokens"), [
    (wav(b"\x01" * 16000, 16000), "wav", 10),      # 1 s: 10 tokens a second
    (wav(b"\x01" * 10, 10), "wav", 10),            # 1 s of a very slow rate
    (wav(b"\x01" * 100, 1), "wav", 1000),          # 100 s at one byte a second
    (wav(b"\x01" * 4000, 0), "wav", 11),           # no byte rate: 4044 bytes at 32 kbit/s
    (base64.b64encode(b"\x07" * 4000).decode(), "mp3", 10),  # 32 kbit/s assumed: 1 s
    (base64.b64encode(b"\x07" * 8000).decode(), "mp3", 20),
    (base64.b64encode(b"\x07" * 4000).decode(), "wav", 10),  # not RIFF: sized like mp3
    (base64.b64encode(b"RIFF" + b"\x07" * 3996).decode(), "wav", 10),  # RIFF but not WAVE
    (wav(b"\x01" * 16000, 16000), "mp3", 41),      # a WAV said to be mp3 is sized like mp3
    ("!!! not base64", "mp3", 1),
    ("", "wav", 1),
])
def test_audio_tokens(data: str, fmt: str, tokens: int) -> None:
    assert audio_tokens(data, fmt) == tokens
