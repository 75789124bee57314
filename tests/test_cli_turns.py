"""The turn commands (send, chat, runs, run show) on SQLite and PostgreSQL.

Requests go over real HTTP to convo's fake backend on loopback
(``FakeBackend.serve()``); ``convo chat`` runs in a child process on a
pseudo-terminal (pexpect), as a person would use it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

import pexpect
import pytest
from typer.testing import CliRunner

from convo import Store
from convo.cli import app
from convo.testing import FakeBackend, FakeServer

runner = CliRunner()


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, make_db: Any) -> str:
    url: str = make_db(request.param).render_as_string(hide_password=False)
    return url


@pytest.fixture
def fake() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def server(fake: FakeBackend, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    with fake.serve() as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-cli-turns")
        yield srv


def run(db: str, *args: str, code: int = 0) -> Any:
    result = runner.invoke(app, ["--db", db, *args])
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.output
    return result


def js(db: str, *args: str) -> Any:
    return json.loads(run(db, *args, "--json").stdout)


def new_conversation(db: str) -> str:
    with Store(db) as store:
        return store.create_conversation(title="cli turns").id


@pytest.mark.usefixtures("server")
def test_send_plain_streamed_and_json(db: str, fake: FakeBackend) -> None:
    cid = new_conversation(db)
    fake.reply("Start in Alfama.")
    out = run(db, "send", cid, "Lisbon?", "--model", "gpt-4o-mini").stdout
    assert out.startswith("Start in Alfama.\n")
    with Store(db) as store:
        (first,) = store.list_runs(cid).items
    assert f"run {first.id} ok · gpt-4o-mini (chat)" in out
    assert f"{first.reported_prompt_tokens} prompt + {first.completion_tokens} completion" in out
    assert fake.requests[-1].json.get("stream") is None

    # --stream, and no --model: the model of the conversation's last run
    fake.reply("Then take tram 28.")
    streamed = run(db, "send", cid, "And then?", "--stream").stdout
    assert streamed.startswith("Then take tram 28.\n") and " ok · gpt-4o-mini" in streamed
    sent = fake.requests[-1]
    assert sent.json["stream"] is True and sent.json["stream_options"] == {"include_usage": True}

    fake.reply("Belém, for the tarts.")
    result = js(db, "send", cid, "Day three?", "--max-tokens", "50")
    assert result["reply"]["content"] == "Belém, for the tarts."
    assert result["user"]["seq"] == 5 and result["reply"]["seq"] == 6
    assert result["report"]["kept_seqs"] == [1, 2, 3, 4, 5]
    run_ = result["run"]
    assert run_["status"] == "ok" and run_["stream"] is False
    assert run_["request"].encode() == fake.requests[-1].body  # the body, byte for byte
    assert fake.requests[-1].json["max_completion_tokens"] == 50  # gpt-4o-mini's parameter name

    with Store(db) as store:
        roles = [(m.role, m.text) for m in store.messages(cid)]
        runs = store.list_runs(cid).items
    assert roles == [
        ("user", "Lisbon?"), ("assistant", "Start in Alfama."),
        ("user", "And then?"), ("assistant", "Then take tram 28."),
        ("user", "Day three?"), ("assistant", "Belém, for the tarts."),
    ]
    assert [(r.status, r.stream) for r in runs] == [("ok", False), ("ok", True), ("ok", False)]


@pytest.mark.usefixtures("server")
def test_send_with_an_idempotency_key_sends_once(db: str, fake: FakeBackend) -> None:
    cid = new_conversation(db)
    first = js(db, "send", cid, "Hello", "--model", "gpt-4o-mini", "--idempotency-key", "req-1")
    again = js(db, "send", cid, "Hello", "--model", "gpt-4o-mini", "--idempotency-key", "req-1")
    assert len(fake.requests) == 1
    assert again["from_store"] is True and again["reply"]["id"] == first["reply"]["id"]
    plain = run(db, "send", cid, "Hello", "--idempotency-key", "req-1").stdout
    assert "nothing sent" in plain and len(fake.requests) == 1
    with Store(db) as store:
        assert store.count_messages(cid) == 2


@pytest.mark.usefixtures("server")
def test_send_in_completion_mode_with_a_template(db: str, fake: FakeBackend) -> None:
    cid = new_conversation(db)
    with Store(db) as store:
        store.append(cid, {"role": "system", "content": "You are terse."})
    fake.reply(" Alfama.")
    out = js(db, "send", cid, "Where first?", "--model", "gpt-3.5-turbo-instruct",
             "--mode", "completion", "--template", "chatml", "--budget", "500")
    sent = fake.requests[-1]
    assert sent.path == "/v1/completions"
    assert sent.json["prompt"] == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nWhere first?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert sent.json["stop"] == ["<|im_end|>", "<|endoftext|>"]
    run_ = out["run"]
    assert (run_["endpoint"], run_["mode"]) == ("completions", "completion")
    assert run_["settings"]["template"] == "chatml" and run_["settings"]["budget"] == 500
    assert run_["reported_prompt_tokens"] == out["report"]["prompt_tokens"]
    assert out["reply"]["content"] == " Alfama."


@pytest.mark.usefixtures("server")
def test_runs_lists_and_pages_and_run_show_tells_what_was_sent(db: str, fake: FakeBackend) -> None:
    cid = new_conversation(db)
    for text in ("one", "two", "three"):
        run(db, "send", cid, text, "--model", "gpt-4o-mini")
    listed = js(db, "runs", cid)
    ids = [r["id"] for r in listed["items"]]
    assert len(ids) == 3 and listed["next_cursor"] is None
    assert [r["kept_seqs"] for r in listed["items"]] == [[1, 2, 3, 4, 5], [1, 2, 3], [1]]
    page = js(db, "runs", cid, "--limit", "2")
    assert [r["id"] for r in page["items"]] == ids[:2] and page["next_cursor"]
    rest = js(db, "runs", cid, "--limit", "2", "--cursor", page["next_cursor"])
    assert [r["id"] for r in rest["items"]] == ids[2:] and rest["next_cursor"] is None
    table = run(db, "runs", cid, "--limit", "2").stdout
    assert ids[0] in table and ids[1] in table and ids[2] not in table
    assert f"--cursor {page['next_cursor']}" in table

    with Store(db) as store:
        stored = store.get_run(ids[0])
    assert js(db, "run", "show", ids[0]) == json.loads(stored.model_dump_json(exclude_none=True))
    shown = run(db, "run", "show", ids[0]).stdout
    assert f"run {ids[0]}" in shown and "ok (stop)" in shown
    assert "POST " + fake_url(fake) in shown
    assert "1-5 (5 messages)" in shown  # kept seqs
    assert f"{stored.reported_prompt_tokens} prompt + {stored.completion_tokens} completion" in shown
    body = shown.split("request body (as sent)\n", 1)[1].split("\nreply\n", 1)
    assert json.loads(body[0]) == stored.body()
    assert body[1].strip() == "You said: three"


def fake_url(fake: FakeBackend) -> str:
    return os.environ["OPENAI_BASE_URL"] + "/chat/completions"


@pytest.mark.usefixtures("server")
def test_stored_and_remote_text_cannot_drive_the_terminal(db: str, fake: FakeBackend) -> None:
    cid = new_conversation(db)
    evil = "ok\x1b]52;c;ZXZpbA==\x07\x1b[2J\u202e"
    fake.reply(evil)
    out = run(db, "send", cid, "hi", "--model", "gpt-4o-mini").stdout
    assert "\x1b" not in out and "\u202e" not in out
    assert "ok\\x1b]52;c;ZXZpbA==\\x07\\x1b[2J\\u202e" in out
    streamed = run(db, "send", cid, "hi\x1b[31m", "--stream").stdout
    assert "\x1b" not in streamed and "You said: hi\\x1b[31m" in streamed
    (run_id, *_) = [r["id"] for r in js(db, "runs", cid)["items"]]
    shown = run(db, "run", "show", run_id).stdout
    assert "\x1b" not in shown and "\\u001b[31m" in shown  # in the JSON body: JSON's escape
    assert json.loads(run(db, "send", cid, "again", "--json").stdout)["user"]["content"] == "again"


def test_errors_are_one_line_and_leave_a_record(db: str, make_db: Any, fake: FakeBackend) -> None:
    cid = new_conversation(db)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    failed = run(db, "send", cid, "Hello", "--model", "gpt-4o-mini",
                 "--base-url", f"http://127.0.0.1:{port}/v1", code=1)
    with Store(db) as store:
        (record,) = store.list_runs(cid).items
        assert [m.text for m in store.messages(cid)] == ["Hello"]  # the user message stays
    assert record.status == "failed" and record.error_type == "APIConnectionError"
    assert failed.stderr.startswith("error: APIConnectionError: ")
    assert f"run {record.id}: failed" in failed.stderr and failed.stderr.count("\n") == 1
    assert failed.stdout == ""

    missing = run(db, "run", "show", "0123456789abcdef0123456789abcdef", code=1)
    assert missing.stderr.startswith("error: RunNotFound: ")
    assert "not found" in run(db, "runs", "nope", code=1).stderr
    assert "not found" in run(db, "send", "nope", "hi", "--model", "gpt-4o", code=1).stderr
    unknown = run(db, "send", cid, "hi", "--model", "my-local-model", code=1).stderr
    assert unknown.startswith("error: convo does not know the model") and "--encoding" in unknown
    assert "encoding=" not in unknown and "convo.models" not in unknown  # CLI flags, not Python
    assert "--mode must be chat or completion" in run(db, "send", cid, "x", "--mode", "x",
                                                      code=2).stderr
    fresh = new_conversation(db)
    assert "--model is required" in run(db, "send", fresh, "hi", code=2).stderr
    assert "--model is required" in run(db, "chat", code=2).stderr

    with fake.serve() as srv:
        fake.fail(400, message="model overloaded with \x1b[2J")
        bad = run(db, "send", cid, "x", "--base-url", srv.base_url, code=1)
        assert bad.stderr.startswith("error: BadRequestError: ") and "\x1b" not in bad.stderr
        fake.cut_stream(after_chunks=2, text="Start in Alfama, then take tram 28.")
        cut = run(db, "send", cid, "y", "--stream", "--base-url", srv.base_url, code=1)
        assert cut.stderr.startswith("error: APIConnectionError: ")
    with Store(db) as store:
        statuses = [r.status for r in store.list_runs(cid).items]
    assert statuses == ["failed", "failed", "failed"]

    never = make_db("sqlite", migrated=False).render_as_string(hide_password=False)
    for args in (["send", "c", "hi", "--model", "gpt-4o"], ["runs", "c"], ["run", "show", "r"],
                 ["chat", "--model", "gpt-4o"], ["chat", "c"]):
        out = run(never, *args, code=1)
        assert "convo db upgrade" in out.stderr and out.stderr.startswith("error: ")


# --- convo chat on a pseudo-terminal -------------------------------------------------------


def spawn_chat(db: str, base_url: str, *args: str) -> pexpect.spawn:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env.update(OPENAI_BASE_URL=base_url, OPENAI_API_KEY="sk-pty", NO_COLOR="1")
    child = pexpect.spawn(
        sys.executable, ["-c", "from convo.cli import main; main()", "--db", db, "chat", *args],
        env=env, encoding="utf-8", timeout=60, dimensions=(40, 200),
        # A terminal's Ctrl-C must reach the session even when this test runs as a
        # background job of a non-interactive shell (CI), which inherits SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    child.expect("you> ")
    return child


def finish(child: pexpect.spawn) -> int:
    child.expect(pexpect.EOF)
    child.close()
    status: int = child.exitstatus
    return status


def test_chat_session_streams_regenerates_and_reports(db: str, fake: FakeBackend) -> None:
    with fake.serve() as srv:
        child = spawn_chat(db, srv.base_url, "--model", "gpt-4o-mini", "--title", "pty")
        banner = child.before
        fake.reply("Start in Alfama, then take tram 28.")
        child.sendline("Lisbon?")
        child.expect(r"assistant> Start in Alfama, then take tram 28\.\r\n")
        child.expect(r"run (\w{32}) ok · gpt-4o-mini \(chat\)")
        first_run = child.match.group(1)
        child.expect("you> ")

        fake.reply("Begin at the castle.")
        child.sendline("/regenerate")
        child.expect(r"assistant> Begin at the castle\.\r\n")
        child.expect(r"ok · gpt-4o-mini \(chat\) .* · branch (\w{32})")
        branch = child.match.group(1)
        child.expect("you> ")

        child.sendline("/report")
        child.expect("prompt tokens")
        child.expect("you> ")
        child.sendline("/branches")
        child.expect(rf"\* {branch}  regenerate at seq 1  2 messages  assistant: Begin at the castle")
        child.expect("you> ")
        child.sendline("/runs")
        child.expect(f"latest runs of {branch}")
        child.expect("you> ")
        child.sendline("/nope")
        child.expect("unknown command /nope")
        child.expect("you> ")
        child.sendline("/quit")
        assert finish(child) == 0

    cid = banner.split("new conversation ", 1)[1].split()[0]
    with Store(db) as store:
        thread = store.list_branches(cid)
        assert [(b.conversation.branch_kind, b.current) for b in thread] == [
            (None, False), ("regenerate", True)]
        assert thread[1].conversation.id == branch
        assert store.get_conversation(cid).title == "pty"
        # the old reply stays on the root, the new one is on the branch
        assert [m.text for m in store.messages(cid)] == [
            "Lisbon?", "Start in Alfama, then take tram 28."]
        assert [m.text for m in store.messages(branch)] == ["Lisbon?", "Begin at the castle."]
        (root_run,) = store.list_runs(cid).items
        (branch_run,) = store.list_runs(branch).items
    assert root_run.id == first_run and root_run.stream and root_run.status == "ok"
    assert not branch_run.stream and branch_run.status == "ok" and branch_run.kept_seqs == [1]
    assert fake.requests[0].json["stream"] is True


def test_chat_session_switches_mode_forks_and_quits_on_eof(db: str, fake: FakeBackend) -> None:
    cid = new_conversation(db)
    with Store(db) as store:
        store.append(cid, {"role": "user", "content": "Hi"})
        store.append(cid, {"role": "assistant", "content": "Hello!"})
    with fake.serve() as srv:
        child = spawn_chat(db, srv.base_url, cid, "--model", "gpt-4o-mini")
        child.sendline("/mode completion chatml")
        child.expect(r"now: model gpt-4o-mini \(completion, template chatml\)")
        child.expect("you> ")
        child.sendline("//slash")
        child.expect(r"assistant>  You said: /slash")
        child.expect("you> ")
        child.sendline("/model gpt-4.1-mini")
        child.expect(r"now: model gpt-4.1-mini \(completion, template chatml\)")
        child.expect("you> ")
        child.sendline("/mode chat")
        child.expect("you> ")
        child.sendline("/fork 2")
        child.expect(r"now in conversation (\w{32})")
        fork = child.match.group(1)
        child.expect("you> ")
        child.sendline("In the fork")
        child.expect("assistant> You said: In the fork")
        child.expect("you> ")
        child.sendeof()
        assert finish(child) == 0
    flat = fake.requests[0]
    assert flat.path == "/v1/completions" and flat.json["prompt"].endswith(
        "<|im_start|>user\n/slash<|im_end|>\n<|im_start|>assistant\n")
    assert fake.requests[1].json["model"] == "gpt-4.1-mini"
    assert fake.requests[1].json["messages"] == [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "In the fork"}]
    with Store(db) as store:
        assert store.get_conversation(fork).parent_id == cid
        assert [m.text for m in store.messages(cid)][2:] == ["/slash", " You said: /slash"]
        assert [r.mode for r in store.list_runs(cid).items] == ["completion"]
        assert [r.model for r in store.list_runs(fork).items] == ["gpt-4.1-mini"]


def test_ctrl_c_during_a_reply_cancels_the_turn_and_the_session_goes_on(
    db: str, fake: FakeBackend
) -> None:
    cid = new_conversation(db)
    with fake.serve() as srv:
        child = spawn_chat(db, srv.base_url, cid, "--model", "gpt-4o-mini")
        fake.timeout(seconds=30)                       # the server says nothing...
        child.sendline("Are you there?")
        child.expect("assistant> ")
        deadline = time.monotonic() + 60
        while not fake.requests and time.monotonic() < deadline:  # the request is out
            time.sleep(0.01)
        child.sendintr()                               # ...and the user gives up
        child.expect("error: interrupted: the reply was not stored")
        child.expect("you> ")
        child.sendline("Hello again")
        child.expect("assistant> You said: Hello again")
        child.expect("you> ")
        child.sendline("/quit")
        assert finish(child) == 0
    with Store(db) as store:
        runs = store.list_runs(cid).items
        assert [m.text for m in store.messages(cid)] == [
            "Are you there?", "Hello again", "You said: Hello again"]
    assert [r.status for r in runs] == ["ok", "cancelled"]
    assert runs[1].error_type == "KeyboardInterrupt"
