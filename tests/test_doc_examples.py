"""Every ```python block of docs/*.md runs as written.

The blocks of one file run top to bottom in one namespace (a throwaway
module), in a temporary directory, with no ``OPENAI_*`` variables: SQLite
files and convo's FakeBackend stand in for real servers. A block whose info
string is ``python skip`` (configuration for a real server) is not run.
Tracebacks point at the doc's own line numbers.
"""

from __future__ import annotations

import os
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

import convo
from convo import _encodings

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

_FENCE = re.compile(
    r"^```python(?P<info>[^\n]*)\n(?P<code>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL
)


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """``(first line number, code)`` of each runnable python block of ``path``."""
    text = path.read_text(encoding="utf-8")
    blocks = []
    for match in _FENCE.finditer(text):
        if "skip" in match["info"].split():
            continue
        line = text.count("\n", 0, match.start("code")) + 1
        blocks.append((line, match["code"]))
    return blocks


DOC_FILES = sorted(p for p in DOCS.glob("*.md") if python_blocks(p))


def test_the_user_guides_have_examples() -> None:
    names = {p.name for p in DOC_FILES}
    assert {"store.md", "context.md", "client.md", "testing.md", "turns.md"} <= names


@pytest.fixture
def _restore_registries() -> Iterator[None]:
    """Docs may register encodings or models: undo it, other tests share the process."""
    encodings = set(_encodings._registered)
    models = {info.name: info for info in convo.models}
    yield
    for name in set(_encodings._registered) - encodings:
        _encodings.unregister_encoding(name)
    for info in list(convo.models):
        if models.get(info.name) != info:
            convo.models.unregister(info.name)
            if info.name in models:
                convo.models.register(models[info.name])


@pytest.mark.usefixtures("_restore_registries")
@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.name)
def test_doc_examples_run(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OPENAI_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CONVO_DATABASE_URL", f"sqlite:///{tmp_path / 'convo.db'}")
    monkeypatch.chdir(tmp_path)
    # A real module, so that classes and dataclasses defined in the docs resolve their module.
    module = types.ModuleType(f"doc_example_{path.stem}")
    module.__file__ = str(path)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for line, code in python_blocks(path):
        source = "\n" * (line - 1) + code  # keep the doc's line numbers in tracebacks
        exec(compile(source, str(path), "exec"), module.__dict__)  # noqa: S102 - our own docs
