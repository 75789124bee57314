"""The programs in examples/ run, against convo's fake backend (no network, no API key).

The FastAPI chatbot is tested twice: in process through FastAPI's TestClient
(on SQLite and PostgreSQL), and as deployed: ``migrate.py`` as its own
command, then a real uvicorn server on loopback, read by an httpx client as a
server-sent event stream.
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from convo import NotMigratedError, Store
from convo.testing import FakeBackend

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
FASTAPI_APP = EXAMPLES / "fastapi_app"


def _env(**extra: str) -> dict[str, str]:
    """The environment of an example run: no OPENAI_* or CONVO_* from the developer's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CONVO_", "PYTEST_"))}
    return {**env, **extra}


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    """``(event, data)`` of each server-sent event in ``text``."""
    events = []
    for chunk in text.split("\n\n"):
        if not chunk.strip():
            continue
        fields = dict(line.split(": ", 1) for line in chunk.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


# --- the FastAPI chatbot, in process ------------------------------------------------------


@pytest.fixture(scope="module")
def fastapi_app() -> ModuleType:
    return _load(FASTAPI_APP / "app.py", "convo_example_fastapi_app")


def test_fastapi_app_refuses_an_unmigrated_database(fastapi_app: ModuleType, tmp_path: Path) -> None:
    """Workers do not migrate: that is the deploy step's job (migrate.py)."""
    app = fastapi_app.create_app(f"sqlite:///{tmp_path / 'new.db'}", llm_transport=FakeBackend().transport())
    with pytest.raises(NotMigratedError), TestClient(app):
        pass


def test_fastapi_app_through_its_test_client(fastapi_app: ModuleType, db_url: sa.URL) -> None:
    fake = FakeBackend()
    app = fastapi_app.create_app(db_url.render_as_string(hide_password=False), llm_transport=fake.transport())
    with TestClient(app) as http:
        u1, u2 = {"X-User": "u1"}, {"X-User": "u2"}
        cid = http.post("/conversations", json={"title": "Lisbon"}, headers=u1).json()["id"]

        # An idempotent post: the retry stores no second message and makes no second model call.
        sent = {**u1, "Idempotency-Key": "req-1"}
        first = http.post(f"/conversations/{cid}/messages", json={"text": "Hello"}, headers=sent)
        assert first.status_code == 200 and first.json()["reply"] == "You said: Hello"
        assert not first.json()["from_store"] and len(fake.requests) == 1
        again = http.post(f"/conversations/{cid}/messages", json={"text": "Hello"}, headers=sent)
        assert again.json() == {**first.json(), "from_store": True}
        assert len(fake.requests) == 1
        history = http.get(f"/conversations/{cid}/messages", headers=u1).json()
        assert [(m["role"], m["text"]) for m in history] == [("user", "Hello"), ("assistant", "You said: Hello")]

        # Conversations are per user: another user's id does not exist for them.
        assert http.get(f"/conversations/{cid}/messages", headers=u2).status_code == 404
        other = http.post(f"/conversations/{cid}/messages", json={"text": "hi"}, headers=u2)
        assert other.status_code == 404 and len(fake.requests) == 1
        assert [c["id"] for c in http.get("/conversations", headers=u1).json()["items"]] == [cid]
        assert http.get("/conversations", headers=u2).json()["items"] == []

        # Streamed, as server-sent events; a retry of the finished turn answers from the store.
        fake.reply("Start in Alfama, then take tram 28.")
        streamed = {**u1, "Idempotency-Key": "req-2"}
        answer = http.post(f"/conversations/{cid}/messages/stream", json={"text": "Lisbon?"}, headers=streamed)
        assert answer.headers["content-type"].startswith("text/event-stream")
        events = parse_sse(answer.text)
        deltas = [data["text"] for event, data in events if event == "delta"]
        assert len(deltas) > 1 and "".join(deltas) == "Start in Alfama, then take tram 28."
        assert events[-1][0] == "done" and not events[-1][1]["from_store"]
        retry = parse_sse(http.post(f"/conversations/{cid}/messages/stream", json={"text": "Lisbon?"},
                                    headers=streamed).text)
        assert retry == [("delta", {"text": "Start in Alfama, then take tram 28."}),
                         ("done", {**events[-1][1], "from_store": True})]
        assert len(fake.requests) == 2

        # The model fails: a 502, the user message stays stored; the retry completes the turn.
        for _ in range(3):
            fake.fail(503, headers={"retry-after-ms": "1"})
        failing = {**u1, "Idempotency-Key": "req-3"}
        assert http.post(f"/conversations/{cid}/messages", json={"text": "Sintra?"},
                         headers=failing).status_code == 502
        fake.reply("Take the train from Rossio.")
        done = http.post(f"/conversations/{cid}/messages", json={"text": "Sintra?"}, headers=failing)
        assert done.json()["reply"] == "Take the train from Rossio."
        texts = [m["text"] for m in http.get(f"/conversations/{cid}/messages", headers=u1).json()]
        assert texts.count("Sintra?") == 1 and texts[-1] == "Take the train from Rossio."


# --- the FastAPI chatbot, deployed: migrate.py, then uvicorn on loopback -------------------


@pytest.fixture
def uvicorn_server(tmp_path: Path) -> Iterator[tuple[str, FakeBackend]]:
    """``(base URL, fake model)``: migrate.py run once, then uvicorn serving app:app."""
    fake = FakeBackend()
    with fake.serve() as model_server:
        env = _env(
            DATABASE_URL=f"sqlite:///{tmp_path / 'chatbot.db'}",
            OPENAI_BASE_URL=model_server.base_url,
            OPENAI_API_KEY="sk-test",
        )
        migrated = subprocess.run([sys.executable, "migrate.py"], cwd=FASTAPI_APP, env=env,
                                  capture_output=True, text=True, check=False, timeout=120)
        assert migrated.returncode == 0, migrated.stderr
        assert "schema at" in migrated.stdout
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", "0",
             "--no-access-log"],
            cwd=FASTAPI_APP, env=env, stderr=subprocess.PIPE, text=True,
        )
        lines: queue.Queue[str | None] = queue.Queue()

        def read() -> None:  # drain stderr so uvicorn never blocks on a full pipe
            assert server.stderr is not None
            for line in server.stderr:
                lines.put(line)
            lines.put(None)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            log = []
            while True:
                line = lines.get(timeout=120)
                assert line is not None, "uvicorn exited:\n" + "".join(log)
                log.append(line)
                running = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line)
                if running:
                    break
            yield running[1], fake
        finally:
            server.terminate()
            server.wait(timeout=60)
            reader.join(timeout=60)
            assert server.stderr is not None
            server.stderr.close()


def test_fastapi_app_streams_from_a_real_uvicorn_server(uvicorn_server: tuple[str, FakeBackend]) -> None:
    base, fake = uvicorn_server
    reply = "Start in Alfama, then take tram 28 up the hill."
    with httpx.Client(base_url=base, headers={"X-User": "ana"}, timeout=60) as http:
        cid = http.post("/conversations", json={}).json()["id"]
        fake.reply(reply)
        headers = {"Idempotency-Key": "req-1"}
        events = []
        with http.stream("POST", f"/conversations/{cid}/messages/stream",
                         json={"text": "Lisbon?"}, headers=headers) as answer:
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("text/event-stream")
            event = None
            for line in answer.iter_lines():  # read as it arrives, line by line
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    events.append((event, json.loads(line.removeprefix("data: "))))
        deltas = [data["text"] for event, data in events if event == "delta"]
        assert len(deltas) > 1 and "".join(deltas) == reply
        assert events[-1][0] == "done" and events[-1][1]["reply"] == reply
        assert len(fake.requests) == 1 and fake.last_request.json["stream"] is True

        # The same request again (the client timed out and retried): the stored reply, no model call.
        again = http.post(f"/conversations/{cid}/messages", json={"text": "Lisbon?"}, headers=headers)
        assert again.json()["reply"] == reply and again.json()["from_store"]
        assert len(fake.requests) == 1
        history = http.get(f"/conversations/{cid}/messages").json()
        assert [m["role"] for m in history] == ["user", "assistant"]


# --- the command-line examples ----------------------------------------------------------------


def _run_example(path: Path, tmp_path: Path, *args: str) -> str:
    out = subprocess.run([sys.executable, str(path), *args], cwd=tmp_path, env=_env(),
                         capture_output=True, text=True, check=False, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_long_thread_stays_in_budget_with_few_summaries(tmp_path: Path) -> None:
    out = _run_example(EXAMPLES / "long_thread.py", tmp_path, "60", f"sqlite:///{tmp_path / 'l.db'}")
    totals = re.search(r"summarizer calls over 60 turns: (\d+) with the low-water mark, (\d+) without", out)
    assert totals, out
    with_mark, without = int(totals[1]), int(totals[2])
    assert 1 <= with_mark <= 6 and without > 5 * with_mark  # hysteresis: one summary serves many turns
    for used, budget in re.findall(r"^ +\d+ +(\d+) / *(\d+)", out, flags=re.MULTILINE):
        assert int(used) <= int(budget)


def test_replay_compares_two_models(tmp_path: Path) -> None:
    out = _run_example(EXAMPLES / "replay_compare.py", tmp_path, f"sqlite:///{tmp_path / 'r.db'}")
    assert "3 conversations, 12 replies (teacher-forcing)" in out
    arms = dict(re.findall(r"^(newer|local) +6 +([\d.]+)", out, flags=re.MULTILINE))
    assert float(arms["newer"]) == 1.0 and float(arms["local"]) < 0.5, out
    assert "not in the suite" not in out
    with Store(f"sqlite:///{tmp_path / 'r.db'}") as store:  # replies on branches; originals untouched
        convs = store.list_conversations(owner="support", limit=100).items
        assert sorted(c.branch_kind or "original" for c in convs) == ["original"] * 4 + ["replay"] * 12
        for conv in convs:
            if conv.branch_kind is None and conv.title != "not in the suite":
                assert [m.role for m in store.messages(conv.id)] == ["system", *["user", "assistant"] * 2]


def test_hf_template_drives_a_completion_model(tmp_path: Path) -> None:
    out = _run_example(EXAMPLES / "hf_template" / "run.py", tmp_path, f"sqlite:///{tmp_path / 'h.db'}")
    assert "stop sequences ['<|end|>']" in out
    prompt = out.split("prompt:\n", 1)[1].split("\nstop:", 1)[0]
    assert prompt.startswith("<s><|system|>\nYou are a friendly baking assistant.<|end|>\n")
    assert prompt.endswith("<|assistant|>\n") and prompt.count("<|system|>") == 1
    assert "Thanks!<\u200b|end|>\n<\u200b|system|>" in prompt  # the forged turn is plain text
    assert "POST /v1/completions" in out and "stop ['<|end|>']" in out
    assert "stored reply (seq 6): \"You're welcome! Happy baking.\"" in out  # cut at the stop


def test_every_example_has_a_readme_line_and_a_test() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Examples", 1)[1].split("\n## ", 1)[0]
    programs = sorted(p.relative_to(EXAMPLES).as_posix() for p in EXAMPLES.rglob("*.py")
                      if p.name != "migrate.py" and "__pycache__" not in p.parts)
    assert len(programs) >= 5
    for program in programs:
        assert f"(examples/{program})" in table, f"add examples/{program} to the README's table"
    tested = Path(__file__).read_text(encoding="utf-8") + (ROOT / "tests" / "test_docs.py").read_text()
    for program in programs:
        stem = Path(program).stem if Path(program).stem not in ("run", "app") else Path(program).parent.name
        assert stem in tested, f"no test runs examples/{program}"
