"""The command line, end to end on SQLite and PostgreSQL (typer's runner, real databases)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from convo.cli import app
from convo.testing import FakeBackend

runner = CliRunner()


def run(db: str, *args: str, code: int = 0) -> Any:
    result = runner.invoke(app, ["--db", db, *args])
    assert result.exit_code == code, (result.output, result.stderr if hasattr(result, "stderr") else "")
    return result


def js(db: str, *args: str) -> Any:
    return json.loads(run(db, *args, "--json").stdout)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, make_db: Any) -> str:
    return make_db(request.param, migrated=False).render_as_string(hide_password=False)


def test_a_session_of_commands(db: str) -> None:
    # never migrated: a clear error that says what to run
    res = run(db, "ls", code=1)
    assert "has no convo schema: run `convo --db " in res.output and " db upgrade`" in res.output
    assert js(db, "db", "current")["revision"] is None
    up = js(db, "db", "upgrade")
    assert up["revision"] and js(db, "db", "current")["revision"] == up["revision"]

    conv = js(db, "new", "--title", "demo", "--owner", "ann", "--meta", "tier=2")
    cid = conv["id"]
    assert conv["metadata"] == {"tier": 2}
    assert run(db, "add", cid, "--role", "system", "You are terse.").stdout.strip() == f"{cid} seq 1"
    js(db, "add", cid, "Hello there")
    js(db, "add", cid, "--role", "assistant", "Hi! How can I help?")
    js(db, "add", cid, "Tell me about forks")

    shown = js(db, "show", cid)
    assert [m["role"] for m in shown["messages"]] == ["system", "user", "assistant", "user"]
    assert [m["seq"] for m in js(db, "show", cid, "--last", "2")["messages"]] == [3, 4]
    assert "Tell me about forks" in run(db, "show", cid).stdout

    listed = js(db, "ls", "--owner", "ann")
    assert [c["id"] for c in listed["items"]] == [cid]
    assert js(db, "ls", "--owner", "bob")["items"] == []
    assert [c["id"] for c in js(db, "ls", "--meta", "tier=2")["items"]] == [cid]

    fork = js(db, "fork", cid, "--at", "3", "--title", "alt")
    assert fork["parent_id"] == cid and fork["fork_seq"] == 3
    js(db, "add", fork["id"], "A different question")
    assert [m["seq"] for m in js(db, "show", fork["id"])["messages"]] == [1, 2, 3, 4]

    hits = js(db, "search", "FORKS")
    assert [(h["conversation_id"], h["seq"]) for h in hits] == [(cid, 4)]

    ctx = js(db, "context", cid, "--model", "gpt-4o-mini")
    assert ctx["request"]["messages"][0] == {"role": "system", "content": "You are terse."}
    assert ctx["report"]["prompt_tokens"] > 0 and ctx["report"]["mode"] == "chat"
    flat = js(db, "context", cid, "--model", "gpt-4o-mini", "--mode", "completion", "--template", "chatml", "--budget", "500")
    assert flat["request"]["prompt"].endswith("<|im_start|>assistant\n")
    assert flat["request"]["stop"][0] == "<|im_end|>"
    table = run(db, "context", cid, "--model", "gpt-4o-mini", "--budget", "100").stdout
    assert "prompt tokens" in table and "budget left" in table


def test_bad_input_exits_non_zero_with_a_message(db: str) -> None:
    run(db, "db", "upgrade")
    cid = js(db, "new")["id"]
    assert "unknown role 'robot'" in run(db, "add", cid, "--role", "robot", "x", code=1).output
    assert "tool_call_id" in run(db, "add", cid, "--role", "tool", "x", code=1).output
    assert "not found" in run(db, "show", "nope", code=1).output
    assert "not found" in run(db, "show", cid, "--owner", "someone-else", code=1).output
    assert "--meta expects KEY=VALUE" in run(db, "new", "--meta", "oops", code=1).output
    assert js(db, "show", cid)["messages"] == []
    run(db, "add", cid, "hi")
    out = run(db, "context", cid, "--model", "gpt-4o-mini", "--budget", "3", code=1).output
    assert "ContextOverflowError" in out and "budget" in out


def test_tokens_counts_a_json_file(tmp_path: Path) -> None:
    f = tmp_path / "msgs.json"
    f.write_text(json.dumps([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello!", "name": "ann"}]))
    from convo import count_tokens, load_messages

    expected = count_tokens(load_messages(f.read_text()), model="gpt-4o")
    out = json.loads(runner.invoke(app, ["tokens", str(f), "--model", "gpt-4o", "--json"]).stdout)
    assert out["prompt_tokens"] == expected
    bad = runner.invoke(app, ["tokens", str(f), "--model", "llama-local"])
    assert bad.exit_code == 1 and "encoding" in bad.output


def test_complete_against_the_fake_server(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBackend()
    with fake.serve() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-cli-test")
        out = runner.invoke(app, ["complete", "--model", "gpt-4o-mini", "Hello"])
        assert out.exit_code == 0, out.output
        assert "You said: Hello" in out.stdout and "usage:" in out.stdout
        streamed = runner.invoke(app, ["complete", "--model", "gpt-4o-mini", "--stream", "Hello"])
        assert streamed.exit_code == 0 and "You said: Hello" in streamed.stdout
        flat = json.loads(runner.invoke(app, ["complete", "--model", "gpt-3.5-turbo-instruct", "--mode", "completion", "--json", "Once"]).stdout)
        assert flat["choices"][0]["text"]
        fake.fail(400, body={"error": {"message": "bad thing", "type": "invalid_request_error", "param": None, "code": None}})
        failed = runner.invoke(app, ["complete", "--model", "gpt-4o-mini", "Hello"])
        assert failed.exit_code == 1 and "bad thing" in failed.output
        assert "sk-cli-test" not in failed.output
    assert fake.requests[0].json["messages"] == [{"role": "user", "content": "Hello"}]


def test_complete_reports_connection_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("OPENAI_API_KEY", "x")
    out = runner.invoke(app, ["complete", "--model", "m", "--base-url", f"http://127.0.0.1:{port}/v1", "hi"])
    assert out.exit_code == 1 and "APIConnectionError" in out.output


def test_serve_fake_serves_until_interrupted() -> None:
    import signal
    import subprocess
    import sys

    import httpx

    proc = subprocess.Popen(
        [sys.executable, "-c", "from convo.cli import main; main()", "serve-fake", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # started as a background job of a non-interactive shell would be: SIGINT
        # inherited as ignored; the server must still stop on Ctrl-C
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        base = line.split(" on ")[1].split()[0]
        assert base.startswith("http://127.0.0.1:") and base.endswith("/v1")
        r = httpx.post(f"{base}/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "ping"}]})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "You said: ping"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()  # never leak a server into later tests
            proc.wait()
            raise
        finally:
            if proc.stdout:
                proc.stdout.close()
            if proc.stderr:
                proc.stderr.close()
    assert code == 0
