"""The public surface: a curated ``__all__`` that names everything public, and nothing else."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import convo


def test_all_is_complete_and_unique() -> None:
    assert len(convo.__all__) == len(set(convo.__all__))
    public = {n for n in vars(convo) if not n.startswith("_")} - {
        m.name for m in pkgutil.iter_modules(convo.__path__)
    }
    assert public == set(convo.__all__) - {"__version__"}
    for name in convo.__all__:
        assert getattr(convo, name) is not None


def test_every_exception_is_exported_and_rooted() -> None:
    exc = importlib.import_module("convo._exceptions")
    for name in exc.__all__:
        cls = getattr(convo, name)
        assert issubclass(cls, convo.ConvoError)


def test_import_convo_does_not_import_the_cli_or_test_dependencies() -> None:
    code = (
        "import sys, convo; print(sorted(m for m in "
        "('typer', 'transformers', 'openai', 'pgserver', 'jinja2') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # (rich is not checked: httpx imports it for its own CLI when it is installed)
    assert out.stdout.strip() == "[]"
