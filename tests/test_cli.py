"""The command line, end to end on SQLite and PostgreSQL (typer's runner, real databases)."""

from __future__ import annotations

import json
from collections.abc import Iterator
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
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # noqa: PLW1509 (no threads yet)
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


# --- terminal output: stored and remote text cannot drive the terminal -----------------------

# OSC 52 (writes the clipboard), cursor up, erase line, carriage return, a
# one-byte C1 CSI, bell, and a right-to-left override.
HOSTILE = "ok\x1b]52;c;ZXZpbA==\x07 \x1b[1A\x1b[2K\rfake prompt $ \x9b31m red \u202egnp.exe"
RAW = ["\x1b", "\x07", "\r", "\x9b", "\u202e"]


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)


def _no_raw_controls(text: str) -> None:
    for char in RAW:
        assert char not in text, (char, text)


@pytest.fixture
def hostile_db(make_db: Any) -> tuple[str, str]:
    from convo import Store

    url = make_db("sqlite")
    with Store(url) as store:
        conv = store.create_conversation(title=HOSTILE, owner="own\x1b[2Ker")
        store.append(conv.id, {"role": "user", "content": HOSTILE, "name": "n\x1b[1Ame"})
        store.append(conv.id, {"role": "assistant", "tool_calls": [
            {"id": "c1", "function": {"name": "f", "arguments": '{"q": "' + HOSTILE.replace("\\", "") + '"}'}}
        ]})
        store.append(conv.id, {"role": "tool", "content": HOSTILE, "tool_call_id": "c1"})
    return url.render_as_string(hide_password=False), conv.id


def test_stored_text_is_shown_not_obeyed(
    hostile_db: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, cid = hostile_db
    monkeypatch.setenv("COLUMNS", "1000")  # no table cell wraps inside an escape
    for args in (["show", cid], ["ls"], ["search", "fake prompt"], ["context", cid, "--model", "gpt-4o-mini"],
                 ["context", cid, "--model", "gpt-4o-mini", "--mode", "completion", "--template", "chatml"]):
        out = run(db, *args).stdout
        _no_raw_controls(out)
        assert "\\x1b]52;c;ZXZpbA==\\x07" in out or "\\\\x1b]52" in out, (args, out)
    shown = run(db, "show", cid).stdout
    assert "\\x1b[1A\\x1b[2K\\x0dfake prompt" in shown and "\\x9b31m" in shown and "\\u202egnp" in shown
    # --json stays exact JSON (the same text comes back) with the controls \u-escaped
    for args in (["show", cid], ["ls"], ["search", "fake prompt"], ["context", cid, "--model", "gpt-4o-mini"]):
        raw = run(db, *args, "--json").stdout
        _no_raw_controls(raw)
        assert any(HOSTILE in text for text in _strings(json.loads(raw))), args
    assert js(db, "show", cid)["messages"][0]["content"] == HOSTILE


def test_remote_text_is_shown_not_obeyed(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBackend()
    with fake.serve() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-cli-test")
        for extra in ([], ["--stream"], ["--mode", "completion"]):
            fake.reply(HOSTILE)
            res = runner.invoke(app, ["complete", "--model", "gpt-4o-mini", *extra, "hi"])
            assert res.exit_code == 0, res.output
            _no_raw_controls(res.output)
            assert "\\x1b]52;c;ZXZpbA==\\x07" in res.stdout
        fake.fail(400, message=HOSTILE)  # an error message is remote text too
        res = runner.invoke(app, ["complete", "--model", "gpt-4o-mini", "hi"])
        assert res.exit_code == 1
        _no_raw_controls(res.output)
        assert res.stderr.startswith("error: ") and "\\x1b]52" in res.stderr


# --- advice names the flags the user gave ------------------------------------------------------


def test_not_migrated_advice_repeats_the_db_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shlex

    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["--db", "sqlite:///x.db", "new"])
    assert res.exit_code == 1
    assert res.stderr == (
        "error: database sqlite:///x.db has no convo schema: "
        "run `convo --db sqlite:///x.db db upgrade`\n"
    )
    advice = res.stderr.split("`")[1]
    assert runner.invoke(app, shlex.split(advice)[1:]).exit_code == 0  # follow it literally
    assert runner.invoke(app, ["--db", "sqlite:///x.db", "new"]).exit_code == 0
    assert not (tmp_path / "convo.db").exists()  # it migrated x.db, not another file
    # a URL that needs quoting is quoted; a password is never printed
    res = runner.invoke(app, ["--db", "sqlite:///file:y.db?mode=rwc&uri=true", "ls"])
    assert "run `convo --db 'sqlite:///file:y.db?mode=rwc&uri=true' db upgrade`" in res.stderr
    res = runner.invoke(app, ["--db", "postgresql://ann:s3cret-pw@127.0.0.1:1/db", "ls"])
    assert res.exit_code == 1 and "s3cret-pw" not in res.output
    # without --db (the environment chose the database) the plain command is right
    monkeypatch.setenv("CONVO_DATABASE_URL", "sqlite:///z.db")
    res = runner.invoke(app, ["ls"])
    assert "run `convo db upgrade`" in res.stderr
    assert "none (run: convo db upgrade)" in runner.invoke(app, ["db", "current"]).stdout
    res = runner.invoke(app, ["--db", "sqlite:///w.db", "db", "current"])
    assert "none (run: convo --db sqlite:///w.db db upgrade)" in res.stdout


def test_unknown_model_advice_names_cli_flags(db: str, tmp_path: Path) -> None:
    run(db, "db", "upgrade")
    cid = js(db, "new")["id"]
    run(db, "add", cid, "hello")
    res = run(db, "context", cid, "--model", "llama-3-8b", code=1)
    assert "--encoding" in res.stderr and "--budget" in res.stderr
    assert "encoding=" not in res.stderr and "convo.models" not in res.stderr
    res = run(db, "context", cid, "--model", "llama-3-8b", "--encoding", "o200k_base", code=1)
    assert "pass --budget N" in res.stderr and "convo.models" not in res.stderr
    ok = js(db, "context", cid, "--model", "llama-3-8b", "--encoding", "o200k_base", "--budget", "500")
    assert ok["report"]["prompt_tokens"] > 0
    f = tmp_path / "m.json"
    f.write_text('[{"role": "user", "content": "hi"}]')
    res = runner.invoke(app, ["tokens", str(f), "--model", "llama-3-8b"])
    assert res.exit_code == 1 and "--encoding" in res.stderr and "--budget" not in res.stderr


def test_the_next_page_hint_repeats_the_listing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shlex

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "80")
    db = "sqlite:///pages.db"
    run(db, "db", "upgrade")
    ids = {js(db, "new", "--owner", "ann b", "--meta", "k=1")["id"] for _ in range(3)}
    js(db, "new", "--owner", "someone else")
    out = run(db, "ls", "--owner", "ann b", "--meta", "k=1", "--limit", "2").stdout
    seen = {i for i in ids if i in out}  # whole ids: the id column is never cut
    assert len(seen) == 2
    hint = out.strip().splitlines()[-1]
    assert hint.startswith("more: convo --db sqlite:///pages.db ls --owner 'ann b' --meta k=1 --limit 2 --cursor ")
    rest = runner.invoke(app, shlex.split(hint.removeprefix("more: "))[1:])
    assert rest.exit_code == 0 and ids - seen == {i for i in ids if i in rest.stdout}
    assert "more:" not in rest.stdout


def test_tokens_reads_stdin_bytes(tmp_path: Path) -> None:
    ok = runner.invoke(app, ["tokens", "-", "--model", "gpt-4o"], input=b'[{"role": "user", "content": "caf\xc3\xa9"}]')
    assert ok.exit_code == 0 and "prompt tokens" in ok.stdout
    bad = runner.invoke(app, ["tokens", "-", "--model", "gpt-4o"], input=b'[{"role": "user", "content": "caf\xe9"}]')
    assert bad.exit_code == 1 and bad.stderr.startswith("error: stdin is not UTF-8 text")
