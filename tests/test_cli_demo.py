"""``convo demo``: the main job, offline, end to end in a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa


def test_the_demo_runs_offline_and_shows_every_stage(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["COLUMNS"] = "120"
    convo = Path(sys.executable).with_name("convo")
    result = subprocess.run(
        [str(convo), "demo"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for stage in ("1. a conversation that outgrows its budget",
                  "2. the same stored conversation, two dispatch shapes",
                  "3. run records", "4. replay the thread against a second arm"):
        assert stage in out
    assert "fake server on loopback (offline)" in out
    assert "POST /v1/chat/completions" in out and "POST /v1/completions" in out
    assert "made" in out and "reused" in out  # a summary made, then serving later turns
    assert "Traceback" not in out + result.stderr

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'convo-demo.db'}")
    with engine.connect() as conn:
        count = lambda sql: conn.exec_driver_sql(sql).scalar()
        assert count("SELECT count(*) FROM summaries") >= 1
        assert count("SELECT count(*) FROM messages WHERE role = 'tool'") == 1
        assert count("SELECT count(*) FROM runs WHERE endpoint = 'completions'") >= 1
        assert count("SELECT count(*) FROM runs WHERE status != 'ok'") == 0
        assert count("SELECT count(*) FROM replays WHERE status = 'done'") == 1
        assert count("SELECT count(*) FROM replay_items WHERE status = 'ok'") >= 6
    engine.dispose()
