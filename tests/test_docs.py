"""The docs stay true: every CLI command documented, README commands are what CI runs, examples run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer

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
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
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
