"""The model registry and prompt budgets."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

import convo
from convo import ModelInfo, ModelRegistry, budget_for, encoding_for_model, get_encoding, models
from convo._exceptions import ConfigurationError, UnknownModelError
from convo._models import BUILTIN_MODELS


@pytest.fixture
def registry() -> ModelRegistry:
    """A private registry with the built-ins, so tests never change the global one."""
    return ModelRegistry()


@pytest.mark.parametrize(
    ("model", "entry", "window", "output"),
    [
        ("gpt-5", "gpt-5", 400_000, 128_000),
        ("gpt-5-2025-08-07", "gpt-5", 400_000, 128_000),
        ("gpt-5-mini-2025-08-07", "gpt-5-mini", 400_000, 128_000),
        ("gpt-5-chat-latest", "gpt-5-chat", 128_000, 16_384),
        ("gpt-4.1", "gpt-4.1", 1_047_576, 32_768),
        ("gpt-4.1-nano-2025-04-14", "gpt-4.1-nano", 1_047_576, 32_768),
        ("gpt-4o", "gpt-4o", 128_000, 16_384),
        ("gpt-4o-2024-08-06", "gpt-4o", 128_000, 16_384),
        ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13", 128_000, 4_096),  # exact beats prefix
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini", 128_000, 16_384),  # longest prefix
        ("ft:gpt-4o-mini-2024-07-18:my-org:custom:abc123", "gpt-4o-mini", 128_000, 16_384),
        ("ft:gpt-4o-mini:my-org::abc123", "gpt-4o-mini", 128_000, 16_384),
        ("o1", "o1", 200_000, 100_000),
        ("o1-mini-2024-09-12", "o1-mini", 128_000, 65_536),
        ("o3-mini", "o3-mini", 200_000, 100_000),
        ("o4-mini-2025-04-16", "o4-mini", 200_000, 100_000),
        ("gpt-4-turbo-2024-04-09", "gpt-4-turbo", 128_000, 4_096),
        ("gpt-4-0613", "gpt-4", 8_192, 8_192),
        ("gpt-4-32k-0613", "gpt-4-32k", 32_768, 32_768),
        ("gpt-3.5-turbo-0125", "gpt-3.5-turbo", 16_385, 4_096),
        ("gpt-3.5-turbo-instruct", "gpt-3.5-turbo-instruct", 4_096, 4_096),
    ],
)
def test_lookup(registry: ModelRegistry, model: str, entry: str, window: int, output: int) -> None:
    info = registry.get(model)
    assert (info.name, info.context_window, info.max_output_tokens) == (entry, window, output)
    assert model in registry


@pytest.mark.parametrize("model", ["gpt-3.5-turbo-instruct", "davinci-002", "babbage-002"])
def test_completion_models(registry: ModelRegistry, model: str) -> None:
    assert registry.get(model).mode == "completion"


@pytest.mark.parametrize("model", ["llama-3-8b-instruct", "gpt-4o1", "gpt-5.9", "", "ft:"])
def test_unknown_model(registry: ModelRegistry, model: str) -> None:
    assert registry.find(model) is None
    assert model not in registry
    with pytest.raises(UnknownModelError) as info:
        registry.get(model)
    assert "register" in str(info.value)


def test_register_overrides_and_adds(registry: ModelRegistry) -> None:
    stored = registry.register("gpt-4o", context_window=64_000, max_output_tokens=2_000)
    assert registry.get("gpt-4o-2024-08-06") is stored
    assert stored.encoding is None and stored.mode == "chat"
    local = ModelInfo(
        name="llama-3-8b-instruct",
        context_window=8_192,
        max_output_tokens=2_048,
        encoding="cl100k_base",
        mode="both",
    )
    assert registry.register(local) is local
    assert registry.get("llama-3-8b-instruct") == local
    assert registry.get("llama-3-8b-instruct-q4") == local  # prefix rule applies to it too
    registry.unregister("llama-3-8b-instruct")
    assert "llama-3-8b-instruct" not in registry
    # The default registry is untouched.
    assert models.get("gpt-4o").context_window == 128_000


@pytest.mark.parametrize(
    "fields",
    [
        {"context_window": 0, "max_output_tokens": 10},
        {"context_window": 100, "max_output_tokens": -1},
        {"context_window": 100, "max_output_tokens": 200},
        {"context_window": "lots", "max_output_tokens": 10},
    ],
)
def test_register_invalid(registry: ModelRegistry, fields: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError, match="invalid model entry 'bad'"):
        registry.register("bad", **fields)  # type: ignore[arg-type]
    assert "bad" not in registry


def test_registry_without_builtins() -> None:
    empty = ModelRegistry(include_builtins=False)
    assert len(empty) == 0
    with pytest.raises(UnknownModelError):
        empty.get("gpt-4o")
    custom = ModelRegistry([ModelInfo(name="gpt-4o", context_window=1000, max_output_tokens=100)])
    assert custom.get("gpt-4o").context_window == 1000
    assert len(custom) == len(BUILTIN_MODELS)


def test_model_info_is_frozen() -> None:
    info = models.get("gpt-4o")
    with pytest.raises(ValidationError):
        info.context_window = 1  # type: ignore[misc]


@pytest.mark.parametrize("info", BUILTIN_MODELS, ids=lambda i: i.name)
def test_builtin_encodings_agree_and_load_offline(info: ModelInfo) -> None:
    assert info.encoding is not None
    assert encoding_for_model(info.name) == info.encoding
    assert get_encoding(info.encoding).name == info.encoding


# --- budgets -------------------------------------------------------------------------------


def test_budget_defaults() -> None:
    assert budget_for("gpt-4o") == 128_000 - 4_096 - 64
    assert budget_for("gpt-4") == 8_192 - 2_048 - 64  # reserve capped at a quarter window
    assert budget_for("gpt-3.5-turbo-instruct") == 4_096 - 1_024 - 64
    assert budget_for("gpt-4.1") == 1_047_576 - 4_096 - 64


def test_budget_reserve_capped_by_max_output(registry: ModelRegistry) -> None:
    registry.register("tiny", context_window=2_000, max_output_tokens=500)
    assert budget_for("tiny", registry=registry) == 2_000 - 500 - 64
    registry.register("short-reply", context_window=100_000, max_output_tokens=1_000)
    assert budget_for("short-reply", registry=registry) == 100_000 - 1_000 - 64
    assert budget_for("tiny", reserve=0, margin=0, registry=registry) == 2_000
    assert budget_for("tiny", reserve=1_000, margin=10, registry=registry) == 990


def test_budget_accepts_model_info() -> None:
    info = ModelInfo(name="x", context_window=10_000, max_output_tokens=1_000)
    assert budget_for(info) == 10_000 - 1_000 - 64


def test_budget_exhausted_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError) as info:
        budget_for("gpt-3.5-turbo-instruct", reserve=4_096)  # 4096 window
    message = str(info.value)
    assert "4096" in message and "gpt-3.5-turbo-instruct" in message
    with pytest.raises(ConfigurationError):
        budget_for("gpt-4", reserve=8_000, margin=192)
    with pytest.raises(ConfigurationError, match="negative"):
        budget_for("gpt-4o", reserve=-1)
    with pytest.raises(UnknownModelError):
        budget_for("llama-3-8b-instruct")


def test_public_names() -> None:
    for name in ("ModelInfo", "ModelRegistry", "models", "budget_for"):
        assert name in convo.__all__
    assert convo.models is models
