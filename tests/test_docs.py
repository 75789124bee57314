"""The docs stay true: the site builds (``mkdocs build --strict``) with every page of its nav,
every public name has an API reference entry, every CLI command and option is documented,
the exception tree on the docs page is the code's, README commands are what CI runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

import convo
import convo._exceptions
import convo.testing
from convo.cli import app

ROOT = Path(__file__).resolve().parents[1]


def _commands(typer_app: typer.Typer, prefix: str = "") -> list[str]:
    out = []
    for cmd in typer_app.registered_commands:
        name = cmd.name or (cmd.callback.__name__ if cmd.callback else "")
        out.append(f"{prefix}{name.replace('_', '-')}")
    for group in typer_app.registered_groups:
        assert group.typer_instance is not None
        out += _commands(group.typer_instance, f"{prefix}{group.name} ")
    return out


def test_every_cli_command_is_documented() -> None:
    doc = (ROOT / "docs" / "cli.md").read_text()
    commands = _commands(app)
    assert len(commands) >= 12
    missing = [c for c in commands if f"### convo {c}\n" not in doc]
    assert not missing, f"document these in docs/cli.md: {missing}"


def _cli_sections(doc: str) -> dict[str, str]:
    """docs/cli.md cut at its ``### convo CMD`` headings; "" is the text before the first."""
    parts = re.split(r"^### convo (.+)\n", doc, flags=re.MULTILINE)
    sections = {"": parts[0]}
    for i in range(1, len(parts), 2):
        sections[parts[i].strip()] = parts[i + 1]
    return sections


def _cli_options(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, list[str]]]:
    """``(command path, its long options)`` for the root group and every command under it."""
    # typer >= 0.2x vendors click (typer._click): duck-typed, not isinstance(click.Group).
    options = [
        name
        for param in command.params
        if param.param_type_name == "option" and not getattr(param, "hidden", False)
        for name in [*param.opts, *param.secondary_opts]
        if name.startswith("--")
    ]
    yield " ".join(path), options
    for name, sub in getattr(command, "commands", {}).items():
        yield from _cli_options(sub, (*path, name))


def _undocumented_options(doc: str) -> tuple[int, list[str]]:
    """(options checked, ``convo CMD --option`` missing from its section of ``doc``)."""
    sections = _cli_sections(doc)
    checked, missing = 0, []
    for command, options in _cli_options(typer.main.get_command(app)):
        if command not in sections:  # a group (`db`, `run`): its commands have the sections
            assert not options, f"the group `convo {command}` has options but no section"
            continue
        for option in options:
            checked += 1
            if not re.search(re.escape(option) + r"(?![\w-])", sections[command]):
                missing.append(f"convo {command} {option}".replace("convo  ", "convo "))
    return checked, missing


def test_every_cli_option_is_documented() -> None:
    """Each command's section of docs/cli.md names each of its options (the root's: the intro)."""
    checked, missing = _undocumented_options((ROOT / "docs" / "cli.md").read_text())
    assert checked >= 60, checked  # the walk found the options (it cannot pass vacuously)
    assert not missing, f"document these options in their section of docs/cli.md: {missing}"


def test_the_cli_option_check_sees_a_missing_option() -> None:
    doc = (ROOT / "docs" / "cli.md").read_text()
    head, runs = doc.split("### convo runs\n")
    runs, tail = runs.split("\n### ", 1)
    doc = f"{head}### convo runs\n{runs.replace('--cursor', '')}\n### {tail}"
    assert _undocumented_options(doc)[1] == ["convo runs --cursor"]


# --- the docs site ------------------------------------------------------------------------


def _nav_pages(nav: Any) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [page for item in nav for page in _nav_pages(item)]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in _nav_pages(value)]
    raise AssertionError(f"unexpected nav entry {nav!r}")


NAV = _nav_pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"])


def test_every_nav_page_exists_and_every_page_is_in_the_nav() -> None:
    docs = ROOT / "docs"
    assert len(NAV) >= 25 and len(set(NAV)) == len(NAV)
    missing = [page for page in NAV if not (docs / page).is_file()]
    assert not missing, f"mkdocs.yml's nav lists pages that do not exist: {missing}"
    pages = {p.relative_to(docs).as_posix() for p in docs.rglob("*.md")}
    assert not pages - set(NAV), f"pages missing from mkdocs.yml's nav: {sorted(pages - set(NAV))}"


def _reference_entries() -> dict[str, str]:
    """``{"convo.Name": "reference/page.md"}`` for every ``::: convo.Name`` line."""
    entries: dict[str, str] = {}
    for page in sorted((ROOT / "docs" / "reference").glob("*.md")):
        for name in re.findall(r"^::: (convo[\w.]*)\s*$", page.read_text(), flags=re.MULTILINE):
            assert name not in entries, f"{name} is in {entries[name]} and {page.name}"
            entries[name] = f"reference/{page.name}"
    return entries


def test_every_public_name_has_an_api_reference_entry() -> None:
    entries = _reference_entries()
    # __version__ is a string, not an API to document.
    wanted = [f"convo.{name}" for name in convo.__all__ if not name.startswith("__")]
    wanted += [f"convo.testing.{name}" for name in convo.testing.__all__]
    missing = [name for name in wanted if name not in entries]
    assert not missing, f"add `::: NAME` entries to docs/reference/*.md for: {missing}"
    unknown = [name for name in entries if name not in wanted]
    assert not unknown, f"docs/reference/*.md documents names that are not public: {unknown}"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The docs site, built once with ``mkdocs build --strict`` (a few seconds)."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=300,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stderr}"
    return out


def _built(site: Path, page: str) -> Path:
    # use_directory_urls: docs/x.md -> x/index.html, docs/index.md -> index.html
    stem = page.removesuffix(".md")
    return site / ("index.html" if stem == "index" else f"{stem}/index.html")


def test_the_site_builds_with_every_page(site: Path) -> None:
    missing = [page for page in NAV if not _built(site, page).is_file()]
    assert not missing, f"not built: {missing}"


def test_every_api_reference_entry_is_rendered(site: Path) -> None:
    missing = []
    for name, page in _reference_entries().items():
        html = _built(site, page).read_text(encoding="utf-8")
        if f'id="{name}"' not in html:
            missing.append(name)
    assert not missing, f"mkdocstrings rendered no heading for: {missing}"


def test_every_code_block_renders_as_code(site: Path) -> None:
    """A fence MkDocs does not understand (```` ```python skip ````) becomes a paragraph."""
    fence = re.compile(r"^```[^\n]*\n.*?^```[ \t]*$", re.MULTILINE | re.DOTALL)
    wrong = []
    for page in NAV:
        if page.startswith("reference/"):
            continue  # mkdocstrings adds <pre> blocks of its own
        source = (ROOT / "docs" / page).read_text(encoding="utf-8")
        html = _built(site, page).read_text(encoding="utf-8")
        if len(fence.findall(source)) != html.count("<pre"):
            wrong.append(f"{page}: {len(fence.findall(source))} fences, {html.count('<pre')} <pre>")
    assert not wrong, wrong


# --- the exception tree -------------------------------------------------------------------


def _docstring_tree() -> str:
    doc = convo._exceptions.__doc__
    assert doc is not None
    return textwrap.dedent(doc.split("::\n\n", 1)[1].split("\n\n", 1)[0]).strip("\n")


def test_the_exception_page_shows_the_code_tree() -> None:
    page = (ROOT / "docs" / "exceptions.md").read_text(encoding="utf-8")
    found = re.search(
        r"<!-- exception-tree:start -->\n```text\n(.*?)\n```\n<!-- exception-tree:end -->", page, re.DOTALL
    )
    assert found, "docs/exceptions.md needs the tree in a ```text block between its markers"
    assert found[1] == _docstring_tree(), (
        "docs/exceptions.md's exception tree differs from convo/_exceptions.py's docstring: copy it"
    )


def test_the_exception_tree_is_the_class_hierarchy() -> None:
    """The docstring tree names every exception of convo once, under its real parent."""
    parents: list[str] = []
    seen = []
    for line in _docstring_tree().splitlines():
        name_at = re.search(r"[A-Z]", line)
        assert name_at, line
        depth = name_at.start() // 4
        name = line[name_at.start():].split()[0]
        del parents[depth:]
        cls = getattr(convo, name)
        if parents:
            assert getattr(convo, parents[-1]) in cls.__bases__, f"{name} is not under {parents[-1]}"
        parents.append(name)
        seen.append(name)
    errors = sorted(
        name for name in convo.__all__
        if isinstance(getattr(convo, name), type) and issubclass(getattr(convo, name), convo.ConvoError)
    )
    assert sorted(seen) == errors


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.DOTALL)
    test_cmd = next(b.strip() for b in blocks if "pytest" in b)
    main_cmd = next(b.strip() for b in blocks if "convo demo" in b)
    assert test_cmd in (ROOT / ".ci" / "run").read_text()
    assert main_cmd == "python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/convo demo"


def test_quickstart_example_runs(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "TIKTOKEN_"))}
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), f"sqlite:///{tmp_path / 'q.db'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "completion prompt:" in out.stdout and "<|im_start|>assistant" in out.stdout
    assert "assistant (seq 3): Start in Alfama" in out.stdout


def test_readme_python_block_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (ROOT / "README.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README is ours
    chat, flat = namespace["chat"], namespace["flat"]
    assert chat.request()["messages"][0]["role"] == "system"  # type: ignore[attr-defined]
    assert flat.prompt.endswith("<|im_start|>assistant\n")  # type: ignore[attr-defined]
