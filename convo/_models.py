"""The model registry: context windows, output limits and tokenizers of known models.

The built-in values are OpenAI's published limits (platform.openai.com/docs/models).
Every value can be overridden, and any model (a local one, a fine-tune, a new
release) can be added::

    convo.models.register("llama-3-8b-instruct", context_window=8192,
                          max_output_tokens=2048, encoding="cl100k_base")

Lookups accept dated snapshots and fine-tunes: ``gpt-4o-2024-08-06`` resolves
to ``gpt-4o`` (the longest registered name followed by ``-``), and
``ft:gpt-4o-mini-2024-07-18:org::id`` to ``gpt-4o-mini``. An exact registration
always wins over a prefix.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Literal, TypeAlias, overload

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ._exceptions import ConfigurationError, UnknownModelError

__all__ = [
    "DEFAULT_MARGIN",
    "DEFAULT_REPLY_RESERVE",
    "ModelInfo",
    "ModelMode",
    "ModelRegistry",
    "budget_for",
    "models",
]

ModelMode: TypeAlias = Literal["chat", "completion", "both"]

DEFAULT_REPLY_RESERVE = 4096
"""Tokens kept free for the reply when ``budget_for`` gets no ``reserve``, capped at
the model's ``max_output_tokens`` and at a quarter of its context window (so a
4k-window model still gets a prompt budget)."""

DEFAULT_MARGIN = 64
"""Safety margin of ``budget_for``: covers the few request-level tokens no
published rule accounts for (``tool_choice``, ``response_format`` wrappers)."""


class ModelInfo(BaseModel):
    """What convo knows about one model.

    Attributes:
        name: the model name (or name prefix, for dated snapshots).
        context_window: prompt + reply tokens the model accepts.
        max_output_tokens: the most tokens the model may generate in one reply.
        encoding: the tokenizer encoding (``"o200k_base"``, ``"cl100k_base"``, or
            a name given to :func:`~convo.register_encoding`); None to derive it
            from the model name.
        mode: whether the model serves chat requests, completion requests, or both.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    context_window: int = Field(gt=0)
    max_output_tokens: int = Field(gt=0)
    encoding: str | None = None
    mode: ModelMode = "chat"

    @model_validator(mode="after")
    def _check_limits(self) -> ModelInfo:
        if self.max_output_tokens > self.context_window:
            raise ValueError(
                f"max_output_tokens ({self.max_output_tokens}) exceeds "
                f"context_window ({self.context_window})"
            )
        return self


def _m(name: str, window: int, output: int, encoding: str, mode: ModelMode = "chat") -> ModelInfo:
    return ModelInfo(
        name=name, context_window=window, max_output_tokens=output, encoding=encoding, mode=mode
    )


_O200K = "o200k_base"
_CL100K = "cl100k_base"

BUILTIN_MODELS: tuple[ModelInfo, ...] = (
    # GPT-5 family
    _m("gpt-5", 400_000, 128_000, _O200K),
    _m("gpt-5-mini", 400_000, 128_000, _O200K),
    _m("gpt-5-nano", 400_000, 128_000, _O200K),
    _m("gpt-5-chat", 128_000, 16_384, _O200K),  # gpt-5-chat-latest
    # GPT-4.1 family
    _m("gpt-4.1", 1_047_576, 32_768, _O200K),
    _m("gpt-4.1-mini", 1_047_576, 32_768, _O200K),
    _m("gpt-4.1-nano", 1_047_576, 32_768, _O200K),
    _m("gpt-4.5-preview", 128_000, 16_384, _O200K),
    # GPT-4o family
    _m("gpt-4o", 128_000, 16_384, _O200K),
    _m("gpt-4o-2024-05-13", 128_000, 4_096, _O200K),
    _m("gpt-4o-mini", 128_000, 16_384, _O200K),
    _m("chatgpt-4o-latest", 128_000, 16_384, _O200K),
    # reasoning models
    _m("o1", 200_000, 100_000, _O200K),
    _m("o1-mini", 128_000, 65_536, _O200K),
    _m("o1-preview", 128_000, 32_768, _O200K),
    _m("o3", 200_000, 100_000, _O200K),
    _m("o3-mini", 200_000, 100_000, _O200K),
    _m("o4-mini", 200_000, 100_000, _O200K),
    # GPT-4 and GPT-3.5
    _m("gpt-4-turbo", 128_000, 4_096, _CL100K),
    _m("gpt-4-turbo-preview", 128_000, 4_096, _CL100K),
    _m("gpt-4-0125-preview", 128_000, 4_096, _CL100K),
    _m("gpt-4-1106-preview", 128_000, 4_096, _CL100K),
    _m("gpt-4", 8_192, 8_192, _CL100K),
    _m("gpt-4-32k", 32_768, 32_768, _CL100K),
    _m("gpt-3.5-turbo", 16_385, 4_096, _CL100K),
    _m("gpt-3.5-turbo-0613", 4_096, 4_096, _CL100K),
    _m("gpt-3.5-turbo-16k", 16_385, 4_096, _CL100K),
    # completion models (POST /v1/completions)
    _m("gpt-3.5-turbo-instruct", 4_096, 4_096, _CL100K, "completion"),
    _m("davinci-002", 16_384, 16_384, _CL100K, "completion"),
    _m("babbage-002", 16_384, 16_384, _CL100K, "completion"),
)


def base_model_name(model: str) -> str:
    """The base model of a fine-tune (``ft:gpt-4o-mini:org::id`` -> ``gpt-4o-mini``)."""
    if model.startswith("ft:"):
        return model[3:].split(":", 1)[0]
    return model


class ModelRegistry:
    """Known models, looked up by exact name, then by longest registered prefix.

    Args:
        infos: entries to add (after the built-ins, so they override them).
        include_builtins: start from convo's built-in OpenAI models.
    """

    def __init__(self, infos: Iterable[ModelInfo] = (), *, include_builtins: bool = True) -> None:
        self._lock = threading.Lock()
        self._infos: dict[str, ModelInfo] = {}
        self._prefixes: tuple[str, ...] = ()
        for info in (*(BUILTIN_MODELS if include_builtins else ()), *infos):
            self._infos[info.name] = info
        self._reindex()

    def _reindex(self) -> None:
        # Longest first, so "gpt-4o-mini-2024-07-18" finds gpt-4o-mini before gpt-4o.
        self._prefixes = tuple(sorted(self._infos, key=len, reverse=True))

    @overload
    def register(self, info: ModelInfo, /) -> ModelInfo: ...
    @overload
    def register(
        self,
        name: str,
        /,
        *,
        context_window: int,
        max_output_tokens: int,
        encoding: str | None = None,
        mode: ModelMode = "chat",
    ) -> ModelInfo: ...
    def register(
        self,
        info: ModelInfo | str,
        /,
        *,
        context_window: int | None = None,
        max_output_tokens: int | None = None,
        encoding: str | None = None,
        mode: ModelMode = "chat",
    ) -> ModelInfo:
        """Add a model, or override a built-in one; returns the stored entry.

        Call with a :class:`ModelInfo`, or with a name and keyword fields.

        Raises:
            ConfigurationError: invalid values (e.g. a non-positive window).
        """
        if isinstance(info, str):
            try:
                info = ModelInfo(
                    name=info,
                    context_window=context_window,
                    max_output_tokens=max_output_tokens,
                    encoding=encoding,
                    mode=mode,
                )
            except ValidationError as exc:
                details = "; ".join(
                    f"{'.'.join(map(str, e['loc'])) or 'model'}: "
                    f"{e['msg'].removeprefix('Value error, ')}"
                    for e in exc.errors(include_url=False)
                )
                raise ConfigurationError(f"invalid model entry {info!r}: {details}") from exc
        elif not isinstance(info, ModelInfo):
            raise TypeError(f"register() takes a ModelInfo or a name, not {type(info).__name__}")
        with self._lock:
            self._infos[info.name] = info
            self._reindex()
        return info

    def unregister(self, name: str) -> None:
        """Remove the entry registered under exactly ``name`` (no error if absent)."""
        with self._lock:
            if self._infos.pop(name, None) is not None:
                self._reindex()

    def find(self, model: str) -> ModelInfo | None:
        """The entry for ``model``, or None: exact name, then longest ``<name>-`` prefix.

        Fine-tunes (``ft:<base>:...``) resolve through their base model unless
        registered under their full name.
        """
        info = self._infos.get(model)
        if info is not None:
            return info
        base = base_model_name(model)
        info = self._infos.get(base)
        if info is not None:
            return info
        infos = self._infos
        for name in self._prefixes:
            if base.startswith(name) and base[len(name)] == "-":
                # .get: a concurrent unregister() may have removed it since the index was read
                info = infos.get(name)
                if info is not None:
                    return info
        return None

    def get(self, model: str) -> ModelInfo:
        """The entry for ``model`` (see :meth:`find`).

        Raises:
            UnknownModelError: no entry matches; the message says how to register one.
        """
        info = self.find(model)
        if info is None:
            raise UnknownModelError(
                f"model {model!r} is not in the model registry: register it with "
                f"convo.models.register({model!r}, context_window=..., "
                "max_output_tokens=..., encoding=...)"
            )
        return info

    def __contains__(self, model: object) -> bool:
        return isinstance(model, str) and self.find(model) is not None

    def __iter__(self) -> Iterator[ModelInfo]:
        return iter(list(self._infos.values()))

    def __len__(self) -> int:
        return len(self._infos)

    def __repr__(self) -> str:
        return f"<ModelRegistry with {len(self._infos)} models>"


models = ModelRegistry()
"""The default registry, used wherever convo needs a model's limits."""


def budget_for(
    model: str | ModelInfo,
    *,
    reserve: int | None = None,
    margin: int = DEFAULT_MARGIN,
    registry: ModelRegistry | None = None,
) -> int:
    """Prompt tokens available for ``model``: context window - reply reserve - margin.

    Args:
        model: a model name (looked up in ``registry``) or a :class:`ModelInfo`.
        reserve: tokens kept for the reply; default
            ``min(max_output_tokens, 4096, context_window // 4)``.
        margin: safety margin (default 64 tokens).
        registry: where to look the model up; default :data:`models`.

    Raises:
        UnknownModelError: the model is not registered.
        ConfigurationError: a negative reserve or margin, or nothing left for the prompt.
    """
    info = model if isinstance(model, ModelInfo) else (registry or models).get(model)
    if reserve is None:
        reserve = min(info.max_output_tokens, DEFAULT_REPLY_RESERVE, info.context_window // 4)
    if reserve < 0 or margin < 0:
        raise ConfigurationError(f"reserve ({reserve}) and margin ({margin}) must not be negative")
    budget = info.context_window - reserve - margin
    if budget <= 0:
        raise ConfigurationError(
            f"no prompt budget left for {info.name!r}: context window {info.context_window} "
            f"- reply reserve {reserve} - margin {margin} = {budget}"
        )
    return budget
