"""Offline tokenizer encodings: loading without network, hash checks, equality with tiktoken."""

from __future__ import annotations

import hashlib
import random
import socket
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path
from typing import Any

import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st
from tiktoken_ext import openai_public

import convo
from convo._exceptions import EncodingUnavailableError
from convo._tokens import encodings as _encodings
from convo._tokens.encodings import (
    get_encoding,
    parse_quicktok_vocab,
    quicktok_data_dir,
    register_encoding,
    tiktoken_cache_path,
    tiktoken_file_bytes,
    unregister_encoding,
)

SHARED_CACHE = Path(__file__).resolve().parents[2] / "shared" / "tiktoken-cache"
TIKTOKEN_SHA256 = {
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
}
VOCAB_FILES = {"cl100k_base": "cl100k.vocab", "o200k_base": "o200k.vocab"}

# Token ids published in tiktoken's own tests (github.com/openai/tiktoken, tests/test_encoding.py)
# and in openai/harmony's tests (o200k "hello world", harmony "<|start|>").
KNOWN_IDS: list[tuple[str, str, list[int]]] = [
    ("cl100k_base", "hello world", [15339, 1917]),
    ("cl100k_base", "rer", [38149]),
    ("cl100k_base", "'rer", [2351, 81]),
    ("cl100k_base", "today\n \n", [31213, 27907]),
    ("cl100k_base", "today\n  \n", [31213, 14211]),
    ("cl100k_base", "👍", [9468, 239, 235]),
    ("cl100k_base", " \x850", [220, 126, 227, 15]),
    # OpenAI cookbook, "How to count tokens with tiktoken"
    ("cl100k_base", "tiktoken is great!", [83, 1609, 5963, 374, 2294, 0]),
    ("cl100k_base", "antidisestablishmentarianism", [519, 85342, 34500, 479, 8997, 2191]),
    (
        "cl100k_base",
        "お誕生日おめでとう",
        [33334, 45918, 243, 21990, 9080, 33334, 62004, 16556, 78699],
    ),
    ("o200k_base", "hello world", [24912, 2375]),
    ("o200k_harmony", "hello world", [24912, 2375]),
]


@pytest.fixture
def fresh_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget every encoding convo loaded in this process, so the next load is a first load."""
    monkeypatch.setattr(_encodings, "_cache", {})
    monkeypatch.setattr(_encodings, "_ranks_cache", {})
    monkeypatch.setattr(_encodings, "_registered", {})


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fresh_cache: None) -> Path:
    """An empty TIKTOKEN_CACHE_DIR, downloads not allowed, and no socket may connect."""
    empty = tmp_path / "empty-tiktoken-cache"
    empty.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(empty))
    monkeypatch.delenv(_encodings.ALLOW_DOWNLOAD_ENV, raising=False)

    def no_network(self: socket.socket, *args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    return empty


def _tiktoken_reference(name: str, monkeypatch: pytest.MonkeyPatch) -> tiktoken.Encoding:
    """tiktoken's own encoding, loaded by tiktoken's own constructor from the shared cache."""
    if not SHARED_CACHE.is_dir():
        pytest.skip(f"no shared tiktoken cache at {SHARED_CACHE}")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(SHARED_CACHE))
    params = openai_public.ENCODING_CONSTRUCTORS[name]()
    return tiktoken.Encoding(**params)


# --- offline loading ------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "text", "ids"), KNOWN_IDS)
def test_offline_encodings_produce_published_ids(
    offline: Path, name: str, text: str, ids: list[int]
) -> None:
    enc = get_encoding(name)
    assert isinstance(enc, tiktoken.Encoding)
    assert enc.name == name
    assert enc.encode(text) == ids
    assert enc.decode(ids) == text
    assert list(offline.iterdir()) == []  # nothing was downloaded into the cache


def test_offline_special_tokens(offline: Path) -> None:
    cl100k, o200k, harmony = (
        get_encoding(n) for n in ("cl100k_base", "o200k_base", "o200k_harmony")
    )
    # tiktoken's tests: "hello <|endoftext|>" with specials allowed
    assert cl100k.encode("hello <|endoftext|>", allowed_special="all") == [15339, 220, 100257]
    assert o200k.encode("<|endoftext|>", allowed_special="all") == [199999]
    assert harmony.encode("<|start|>", allowed_special="all") == [200006]
    with pytest.raises(ValueError):
        o200k.encode("<|endoftext|>")  # tiktoken's own default still refuses it


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base", "o200k_harmony"])
def test_constructor_parameters_equal_tiktokens(
    name: str, monkeypatch: pytest.MonkeyPatch, offline: Path
) -> None:
    """Our Encoding is built from exactly what tiktoken_ext.openai_public would pass."""
    ours = get_encoding(name)
    seen_hashes: list[str | None] = []

    def fake_load(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        seen_hashes.append(expected_hash)
        return ours._mergeable_ranks

    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", fake_load)
    params = openai_public.ENCODING_CONSTRUCTORS[name]()
    assert params["name"] == ours.name
    assert params["pat_str"] == ours._pat_str
    assert params["special_tokens"] == ours._special_tokens
    assert "explicit_n_vocab" not in params
    assert seen_hashes == [TIKTOKEN_SHA256[name.replace("_harmony", "_base")]]


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_quicktok_vocab_reproduces_tiktoken_file(name: str) -> None:
    """The full check behind the pinned hashes: quicktok's file -> tiktoken's exact file."""
    data_dir = quicktok_data_dir()
    assert data_dir is not None, "quicktok-v1 (a convo dependency) is not installed"
    raw = (data_dir / VOCAB_FILES[name]).read_bytes()
    spec = _encodings._OFFLINE[name]
    assert hashlib.sha256(raw).hexdigest() == spec.vocab_sha256
    ranks = parse_quicktok_vocab(raw)
    assert hashlib.sha256(tiktoken_file_bytes(ranks)).hexdigest() == TIKTOKEN_SHA256[name]


def test_quicktok_is_not_imported() -> None:
    code = (
        "import sys, convo; convo.get_encoding('o200k_base'); "
        "assert 'quicktok' not in sys.modules, 'quicktok was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unpinned_vocab_is_accepted_when_it_reproduces_tiktoken(
    offline: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _encodings._OFFLINE["cl100k_base"]
    monkeypatch.setattr(spec, "vocab_sha256", "0" * 64)  # e.g. a rebuilt quicktok wheel
    assert get_encoding("cl100k_base").encode("hello world") == [15339, 1917]


def _fake_data_dir(tmp_path: Path, raw: bytes) -> Path:
    data = tmp_path / "quicktok-data"
    data.mkdir()
    (data / "cl100k.vocab").write_bytes(raw)
    return data


def test_tampered_vocab_is_refused(offline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = quicktok_data_dir()
    assert real is not None
    ranks = parse_quicktok_vocab((real / "cl100k.vocab").read_bytes())
    # Swap the ranks of two tokens: a valid file, but a different tokenizer.
    a, b = b"hello", b" world"
    ranks[a], ranks[b] = ranks[b], ranks[a]
    raw = len(ranks).to_bytes(4, "little") + b"".join(
        len(t).to_bytes(2, "little") + t + r.to_bytes(4, "little") for t, r in ranks.items()
    )
    monkeypatch.setattr(_encodings, "quicktok_data_dir", lambda: _fake_data_dir(offline, raw))
    with pytest.raises(EncodingUnavailableError) as info:
        get_encoding("cl100k_base")
    message = str(info.value)
    assert "does not reproduce tiktoken's cl100k_base" in message
    assert "TIKTOKEN_CACHE_DIR" in message and _encodings.ALLOW_DOWNLOAD_ENV in message


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x02\x00\x00\x00\x01\x00a", b"\x01\x00\x00\x00\x01\x00a\x05\x00\x00\x00"],
    ids=["empty", "truncated", "rank-gap"],
)
def test_malformed_vocab(raw: bytes) -> None:
    with pytest.raises(ValueError):
        parse_quicktok_vocab(raw)


def test_missing_quicktok_and_empty_cache_is_a_clear_error(
    offline: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_encodings, "quicktok_data_dir", lambda: None)
    with pytest.raises(EncodingUnavailableError) as info:
        get_encoding("o200k_base")
    message = str(info.value)
    assert "quicktok-v1" in message
    assert str(offline) in message  # where it looked for tiktoken's cache file
    assert "TIKTOKEN_CACHE_DIR" in message and "register_encoding" in message


def test_other_tiktoken_encodings_need_a_cache_file(offline: Path) -> None:
    with pytest.raises(EncodingUnavailableError) as info:
        get_encoding("p50k_base")
    assert "p50k_base" in str(info.value) and "TIKTOKEN_CACHE_DIR" in str(info.value)


def test_corrupt_cache_file_is_refused_not_redownloaded(offline: Path) -> None:
    url = _encodings._TIKTOKEN_FILES["r50k_base"][0][0]
    path = tiktoken_cache_path(url)
    assert path is not None and path.parent == offline
    path.write_bytes(b"not the file\n")
    with pytest.raises(EncodingUnavailableError, match="does not match sha256"):
        get_encoding("r50k_base")
    assert path.read_bytes() == b"not the file\n"  # tiktoken would have deleted it


def test_tiktoken_cache_is_used_without_quicktok(
    monkeypatch: pytest.MonkeyPatch, fresh_cache: None
) -> None:
    if not SHARED_CACHE.is_dir():
        pytest.skip(f"no shared tiktoken cache at {SHARED_CACHE}")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(SHARED_CACHE))
    monkeypatch.setattr(_encodings, "quicktok_data_dir", lambda: None)
    monkeypatch.setattr(socket.socket, "connect", lambda *a: pytest.fail("network"))
    assert get_encoding("o200k_base").encode("hello world") == [24912, 2375]


def test_unknown_encoding(offline: Path) -> None:
    with pytest.raises(EncodingUnavailableError, match="register_encoding"):
        get_encoding("no_such_encoding")


def test_loaded_once_per_process_thread_safe(
    offline: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = _encodings._build_offline

    def counting(spec: Any) -> tiktoken.Encoding:
        calls.append(spec.name)
        return real(spec)

    monkeypatch.setattr(_encodings, "_build_offline", counting)
    results: list[object] = []
    threads = [
        threading.Thread(target=lambda: results.append(get_encoding("cl100k_base")))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["cl100k_base"]
    assert len({id(r) for r in results}) == 1


# --- registered encodings ---------------------------------------------------------------------


class WordTokenizer:
    """A toy tokenizer for a local model: one id per whitespace-separated word."""

    def encode(self, text: str) -> list[int]:
        return [len(word) for word in text.split()]


def test_register_object_and_factory(fresh_cache: None) -> None:
    register_encoding("words", WordTokenizer())
    assert get_encoding("words").encode("a bb ccc") == [1, 2, 3]
    made: list[int] = []
    register_encoding("words2", lambda: made.append(1) or WordTokenizer())
    assert get_encoding("words2") is get_encoding("words2")
    assert made == [1]  # the factory runs once
    register_encoding("words3", WordTokenizer)  # a class is a factory too
    assert isinstance(get_encoding("words3"), WordTokenizer)
    unregister_encoding("words")
    with pytest.raises(EncodingUnavailableError):
        get_encoding("words")


def test_register_rejects_bad_values(fresh_cache: None) -> None:
    with pytest.raises(TypeError):
        register_encoding("bad", 42)  # type: ignore[arg-type]
    register_encoding("broken", lambda: 42)  # type: ignore[arg-type, return-value]
    with pytest.raises(EncodingUnavailableError, match="no .encode"):
        get_encoding("broken")
    register_encoding("failing", lambda: 1 / 0)  # type: ignore[arg-type, return-value]
    with pytest.raises(EncodingUnavailableError, match="failed"):
        get_encoding("failing")
    register_encoding("cl100k_base", WordTokenizer())
    with pytest.raises(EncodingUnavailableError, match="tiktoken.Encoding"):
        get_encoding("cl100k_base")


def test_public_names() -> None:
    assert convo.get_encoding is get_encoding
    assert convo.register_encoding is register_encoding


# --- equality with tiktoken's own encodings ---------------------------------------------------


def _corpus() -> list[str]:
    """A few hundred KB of varied text: source code, many scripts, emoji, whitespace runs."""
    rng = random.Random(20240613)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code = [
        (stdlib / name).read_text(encoding="utf-8")
        for name in ("json/decoder.py", "textwrap.py", "difflib.py", "string.py")
    ]
    alphabets = [
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "0123456789",
        "äöüßéèêçñÅØÆ",
        "абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГД",
        "αβγδεζηθικλμνξοπρστυφχψω",
        "日本語のテキストとカタカナ漢字中文字符한국어",
        "العربيةעברית",
        "हिन्दीதமிழ்",
        "😀👍🏽🎉👨‍👩‍👧‍👦🇫🇷",
        "'\"`~!@#$%^&*()-_=+[]{};:,.<>/?\\|",
        " \t\n\r\u00a0\u3000",
    ]
    words: list[str] = []
    for _ in range(40_000):
        alphabet = rng.choice(alphabets)
        words.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 9))))
        if rng.random() < 0.05:
            words.append(rng.choice([" " * rng.randint(2, 40), "\n" * rng.randint(2, 6), "\t\t"]))
        if rng.random() < 0.01:
            words.append("<|endoftext|>")
    prose = " ".join(words)
    return code + [prose[i : i + 4096] for i in range(0, len(prose), 4096)]


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_offline_equals_tiktoken_on_corpus(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = _tiktoken_reference(name, monkeypatch)
    ours = get_encoding(name)
    assert ours._mergeable_ranks == reference._mergeable_ranks
    assert ours._special_tokens == reference._special_tokens
    corpus = _corpus()
    assert sum(len(t.encode()) for t in corpus) > 300_000
    for text in corpus:
        assert ours.encode_ordinary(text) == reference.encode_ordinary(text)
        assert ours.encode(text, disallowed_special=()) == reference.encode(
            text, disallowed_special=()
        )


@pytest.fixture(scope="module")
def references() -> dict[str, tiktoken.Encoding]:
    if not SHARED_CACHE.is_dir():
        pytest.skip(f"no shared tiktoken cache at {SHARED_CACHE}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", str(SHARED_CACHE))
        return {
            n: tiktoken.Encoding(**openai_public.ENCODING_CONSTRUCTORS[n]())
            for n in ("cl100k_base", "o200k_base")
        }


@settings(max_examples=200, deadline=None)
@given(text=st.text())
def test_offline_equals_tiktoken_on_random_text(
    references: dict[str, tiktoken.Encoding], text: str
) -> None:
    for name, reference in references.items():
        assert get_encoding(name).encode_ordinary(text) == reference.encode_ordinary(text)
