"""Every ```python block of docs/*.md runs as written, on its own.

A reader copies one block, not a page: so each block runs ALONE, in a fresh
namespace (a throwaway module) and a fresh temporary directory, with no
``OPENAI_*`` variables; SQLite files and convo's FakeBackend stand in for real
servers. Its imports and setup must be inside it.

Three info strings change that (the braces are the attribute syntax of
pymdownx.superfences: a bare word after the language, ```` ```python skip ````,
would make MkDocs render the block as a paragraph):

* ``python {.continued}`` runs after the block before it in the same file, in
  that block's namespace and directory. The docs use it sparingly, where a
  page walks through one object step by step and repeating the setup would
  bury the point; the first block of such a chain still runs alone.
* ``python {.skip}`` is not run (configuration for a real server).
* ``python title="app.py"`` is a file of a small project the page builds
  (MkDocs shows the name above the block): every such block of a page is
  written into one fresh directory, which must contain tests
  (``test_*.py``), and pytest runs them there in a subprocess, as the reader
  would. ``DATABASE_URL`` points at a brand-new, unmigrated PostgreSQL
  database (pgserver), so a page's project runs on the database it is about;
  its own fixtures do the deploy step (migrations).

Any other info string on a python fence fails the test, so a typo cannot
silently turn a block off. Tracebacks point at the doc's own line numbers.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import convo
from convo._tokens import encodings as _encodings

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

_FENCE = re.compile(
    r"^```(?P<lang>py\w*)(?P<info>[^\n]*)\n(?P<code>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL
)
_KINDS = {"": "alone", "{.continued}": "continued", "{.skip}": "skip"}
_TEST_FUNCTION = re.compile(r"^(?:async )?def test_\w+\(", re.MULTILINE)
_TITLE = re.compile(r'title="(?P<name>[A-Za-z_][\w/]*\.py)"')


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # the first line of the code, 1-based
    kind: str  # "alone", "continued", "skip" or "file"
    code: str
    name: str = ""  # the file name of a "file" block


def blocks(path: Path) -> list[Block]:
    """Every python block of ``path``, with its kind."""
    text = path.read_text(encoding="utf-8")
    out = []
    for match in _FENCE.finditer(text):
        line = text.count("\n", 0, match.start("code")) + 1
        info = match["info"].strip()
        if info.startswith("{"):
            info = info.replace(" ", "")
        title = _TITLE.fullmatch(info)
        if match["lang"] == "python" and title:
            out.append(Block(path, line, "file", match["code"], title["name"]))
            continue
        if match["lang"] != "python" or info not in _KINDS:
            raise AssertionError(
                f"{path.name}:{line}: fence ```{match['lang']}{match['info']}: use ```python,"
                ' ```python {.continued}, ```python {.skip} or ```python title="name.py"'
            )
        out.append(Block(path, line, _KINDS[info], match["code"]))
    return out


def files(path: Path) -> dict[str, list[Block]]:
    """The ``title="..."`` blocks of ``path`` by file name: a file may come in several
    blocks (a walkthrough shows it part by part); they are its parts, in page order."""
    out: dict[str, list[Block]] = {}
    for block in blocks(path):
        if block.kind == "file":
            out.setdefault(block.name, []).append(block)
    return out


def file_text(parts: list[Block], *, padded: bool = False) -> str:
    """A file from its blocks, two blank lines between parts (PEP 8's between definitions).

    ``padded``: blank lines first, so that its line numbers are the page's (for tracebacks).
    """
    if not padded:
        return "\n\n".join(part.code for part in parts)
    text = ""
    for part in parts:
        text += "\n" * (part.line - 1 - text.count("\n")) + part.code
    return text


def chains(path: Path) -> list[list[Block]]:
    """The runnable blocks of ``path``: each standalone block with the ``continued`` ones after it."""
    out: list[list[Block]] = []
    previous: Block | None = None
    for block in blocks(path):
        if block.kind == "alone":
            out.append([block])
        elif block.kind == "continued":
            if previous is None or previous.kind in ("skip", "file"):
                raise AssertionError(
                    f"{path.name}:{block.line}: a continued block must follow a runnable block"
                )
            out[-1].append(block)
        previous = block
    return out


PAGES = sorted(DOCS.glob("*.md"))
CHAINS = [chain for path in PAGES for chain in chains(path)]
PROJECTS = [path for path in PAGES if files(path)]


def _chain_id(chain: list[Block]) -> str:
    first = chain[0]
    more = f"+{len(chain) - 1}" if len(chain) > 1 else ""
    return f"{first.path.name}:{first.line}{more}"


def test_the_user_guides_have_examples() -> None:
    names = {chain[0].path.name for chain in CHAINS}
    assert {"store.md", "context.md", "client.md", "testing.md", "turns.md"} <= names
    # Standalone is the rule, continued the exception.
    alone = len(CHAINS)
    continued = sum(len(chain) - 1 for chain in CHAINS)
    assert alone > 3 * continued, (alone, continued)


def test_fences_are_checked(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("```python {.skip}\nx\n```\n\n```python { .continued }\ny\n```\n")
    with pytest.raises(AssertionError, match="must follow a runnable block"):
        chains(page)
    page.write_text("```python skip\nx\n```\n")  # MkDocs would render a paragraph
    with pytest.raises(AssertionError, match="page.md:2"):
        chains(page)
    page.write_text("```py\nx\n```\n")
    with pytest.raises(AssertionError, match="use ```python"):
        chains(page)
    page.write_text("```python\na = 1\n```\n\n```python {.continued}\nb = a\n```\n\n```python\nc\n```\n")
    assert [[b.line for b in chain] for chain in chains(page)] == [[2, 6], [10]]
    page.write_text('```python title="app.py"\nx\n```\n\n```python {.continued}\ny\n```\n')
    with pytest.raises(AssertionError, match="must follow a runnable block"):
        chains(page)
    page.write_text('```python title="app.py"\nx = 1\n```\n\n```python title="app.py"\ny = 2\n```\n')
    (parts,) = files(page).values()
    assert file_text(parts) == "x = 1\n\n\ny = 2\n"
    assert file_text(parts, padded=True) == "\nx = 1\n\n\n\ny = 2\n"  # lines 2 and 6, as in the page
    page.write_text('```python title="app.py"\nx\n```\n\n```python\ny\n```\n')
    assert list(files(page)) == ["app.py"] and [[b.line for b in c] for c in chains(page)] == [[6]]


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


def run_chain(chain: list[Block], directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run ``chain`` in a fresh module namespace with ``directory`` as the working directory."""
    monkeypatch.setenv("CONVO_DATABASE_URL", f"sqlite:///{directory / 'convo.db'}")
    monkeypatch.chdir(directory)
    first = chain[0]
    # A real module, so that classes and dataclasses defined in the docs resolve their module.
    module = types.ModuleType(f"doc_example_{first.path.stem}_{first.line}")
    module.__file__ = str(first.path)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for block in chain:
        source = "\n" * (block.line - 1) + block.code  # the doc's line numbers in tracebacks
        exec(compile(source, str(block.path), "exec"), module.__dict__)  # noqa: S102 - our docs


@pytest.mark.usefixtures("_restore_registries")
@pytest.mark.parametrize("chain", CHAINS, ids=_chain_id)
def test_doc_block_runs_alone(
    chain: list[Block], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_chain(chain, tmp_path, monkeypatch)


@pytest.mark.parametrize("path", PROJECTS, ids=lambda p: p.name)
def test_doc_project_tests_pass(path: Path, tmp_path: Path, make_db: Callable[..., Any]) -> None:
    project = files(path)
    tests = [name for name in project if Path(name).name.startswith("test_")]
    assert tests, f"{path.name}: its files have no test_*.py to run them"
    for name, parts in project.items():
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(file_text(parts, padded=True), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PYTEST_"))}
    env["DATABASE_URL"] = make_db("postgresql", migrated=False).render_as_string(hide_password=False)
    env.pop("CONVO_DATABASE_URL", None)
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=600,
    )
    assert out.returncode == 0, f"{path.name}: its project's tests failed\n{out.stdout}\n{out.stderr}"
    wanted = sum(len(_TEST_FUNCTION.findall(file_text(project[name]))) for name in tests)
    assert f"{wanted} passed" in out.stdout, out.stdout


def test_the_fastapi_page_is_the_fastapi_example() -> None:
    """docs/fastapi.md walks through examples/fastapi_app/ file by file: the same code."""
    project = files(DOCS / "fastapi.md")
    example = ROOT / "examples" / "fastapi_app"
    shown = {name: file_text(parts) for name, parts in project.items() if (example / name).exists()}
    assert sorted(shown) == sorted(p.name for p in example.glob("*.py"))
    for name, text in shown.items():
        assert text == (example / name).read_text(encoding="utf-8"), f"docs/fastapi.md's {name} differs"
