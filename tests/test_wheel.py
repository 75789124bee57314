"""The built wheel works on its own: migrations ship inside it, the CLI runs from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: build with this environment's hatchling instead of fetching one
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
        check=True, capture_output=True, text=True,
    )
    (found,) = out.glob("convo-*.whl")
    return found


def test_wheel_ships_migrations_and_type_marker(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "convo/_migrations/env.py" in names
    assert any(n.startswith("convo/_migrations/versions/") and n.endswith(".py") for n in names)
    assert "convo/py.typed" in names
    assert not any(n.startswith("tests/") for n in names)


def test_the_cli_needs_no_extra(wheel: Path) -> None:
    (meta,) = [n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".dist-info/METADATA")]
    lines = zipfile.ZipFile(wheel).read(meta).decode().splitlines()
    required = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Requires-Dist:")]
    # typer and rich come with a plain install; `convo[cli]` stays a valid (empty) extra
    assert any(r.startswith("typer") and "extra" not in r for r in required)
    assert any(r.startswith("rich") and "extra" not in r for r in required)
    assert "Provides-Extra: cli" in lines and not any("extra == 'cli'" in r for r in required)


def test_fresh_venv_runs_db_upgrade_and_new(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py, convo = venv / "bin" / "python", venv / "bin" / "convo"
    pip = subprocess.run(  # a plain install, no extra: the `convo` command must work
        [str(py), "-m", "pip", "install", "-q", str(wheel)], capture_output=True, text=True, check=False
    )
    assert pip.returncode == 0, pip.stderr[-2000:]
    work = tmp_path / "elsewhere"  # not the checkout: only the installed package can be used
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVO_", "OPENAI_", "TIKTOKEN_"))}
    db = f"sqlite:///{work / 'fresh.db'}"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(convo), "--db", db, *args], cwd=work, env=env, capture_output=True, text=True, check=False)

    never = cli("new")
    assert never.returncode == 1 and f"run `convo --db {db} db upgrade`" in never.stderr
    up = cli("db", "upgrade", "--json")
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout)["revision"]
    new = cli("new", "--title", "from the wheel", "--json")
    assert new.returncode == 0, new.stderr
    cid = json.loads(new.stdout)["id"]
    assert cli("add", cid, "hello").returncode == 0
    # the offline tokenizer data is part of the install too: no TIKTOKEN_CACHE_DIR here
    ctx = cli("context", cid, "--model", "gpt-4o", "--json")
    assert ctx.returncode == 0, ctx.stderr
    assert json.loads(ctx.stdout)["report"]["prompt_tokens"] > 0
    where = subprocess.run(
        [str(py), "-c", "import convo._store.migrate as m; print(m.script_location())"],
        cwd=work, env=env, capture_output=True, text=True, check=True,
    )
    assert str(venv) in where.stdout
