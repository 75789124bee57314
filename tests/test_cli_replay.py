"""``convo reproduce | replay | replays`` end to end: a real loopback fake, SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from convo import Chat, Message, OpenAIClient, Store
from convo.cli import app
from convo.testing import FakeBackend

runner = CliRunner()


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, make_db: Any) -> str:
    return make_db(request.param).render_as_string(hide_password=False)


@pytest.fixture
def server() -> Any:
    fake = FakeBackend(system_fingerprint="fp_cli")
    with fake.serve() as srv:
        yield fake, srv


def cli(db: str, *args: str, code: int = 0, env: dict[str, str] | None = None) -> Any:
    result = runner.invoke(app, ["--db", db, *args], env=env)
    assert result.exit_code == code, (result.stdout, result.stderr)
    return result


def _thread(db: str, base_url: str, owner: str | None = None) -> tuple[str, str]:
    with Store(db) as store, OpenAIClient(base_url=base_url, api_key="sk-test") as client:
        conv = store.create_conversation(owner=owner, metadata={"team": "a"})
        store.append(conv.id, Message.system("Be brief."))
        chat = Chat(store, client, model="gpt-4o-mini")
        chat.send(conv.id, "Hi", seed=3, owner=owner)
        turn = chat.send(conv.id, "How are you?", seed=3, owner=owner)
        assert turn.run is not None
        return conv.id, turn.run.id


def test_reproduce(db: str, server: Any) -> None:
    fake, srv = server
    _cid, run_id = _thread(db, srv.base_url)
    env = {"OPENAI_API_KEY": "sk-test"}
    out = json.loads(cli(db, "reproduce", run_id, "--base-url", srv.base_url, "--json",
                         env=env).stdout)
    assert out["same_text"] is True and out["same_fingerprint"] is True
    assert out["run"]["reproduces_id"] == run_id
    assert fake.requests[-1].body == fake.requests[-2].body
    text = cli(db, "reproduce", run_id, "--base-url", srv.base_url, env=env).stdout
    assert "same text: True" in text and "fp_cli" in text


def test_replay_two_arms_show_list_and_csv(db: str, server: Any, tmp_path: Path) -> None:
    _fake, srv = server
    cid, _ = _thread(db, srv.base_url)
    env = {"OPENAI_API_KEY": "sk-test"}
    out = tmp_path / "report.csv"
    report = json.loads(cli(
        db, "replay", cid, "--arm", "gpt-4.1-mini", "--arm",
        "gpt-3.5-turbo-instruct:completion:chatml", "--base-url", srv.base_url, "--json",
        "--csv", str(out), env=env,
    ).stdout)
    items = report["items"]
    assert len(items) == 4 and {i["status"] for i in items} == {"ok"}
    assert {i["arm"] for i in items} == {"gpt-4.1-mini", "gpt-3.5-turbo-instruct:completion:chatml"}
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 4
    rid = report["replay"]["id"]
    listed = json.loads(cli(db, "replays", "--json").stdout)
    assert [r["id"] for r in listed["items"]] == [rid]
    shown = cli(db, "replay", "show", rid).stdout
    assert "side by side" in shown and "gpt-4.1-mini" in shown
    assert json.loads(cli(db, "replay", "show", rid, "--json").stdout)["replay"]["id"] == rid
    table = cli(db, "replay", cid, "--arm", "gpt-4.1-mini", "--teacher-forcing",
                "--base-url", srv.base_url, env=env).stdout
    assert "teacher-forcing" in table


def test_replay_by_metadata_and_resume(db: str, server: Any) -> None:
    fake, srv = server
    _thread(db, srv.base_url)
    _thread(db, srv.base_url)
    env = {"OPENAI_API_KEY": "sk-test"}
    fake.fail(400)  # the first replayed turn fails (a 400 is not retried)
    first = json.loads(cli(db, "replay", "--where", "team=a", "--arm", "gpt-4.1-mini",
                           "--concurrency", "1", "--base-url", srv.base_url, "--json",
                           env=env).stdout)
    statuses = sorted(i["status"] for i in first["items"])
    assert statuses == ["failed", "ok", "ok", "skipped"]
    again = json.loads(cli(db, "replay", "--resume", first["replay"]["id"],
                           "--base-url", srv.base_url, "--json", env=env).stdout)
    assert {i["status"] for i in again["items"]} == {"ok"}


@pytest.mark.parametrize(
    "args",
    [
        ["replay", "0" * 32],                                 # no arm
        ["replay", "--arm", "m"],                             # nothing to replay
        ["replay", "--arm", "m:sideways", "0" * 32],          # bad arm
        ["replay", "show"],                                   # missing id
        ["replay", "show", "0" * 32],                         # unknown replay
        ["replay", "--arm", "m", "--where", "novalue"],       # bad filter
        ["reproduce", "0" * 32, "--base-url", "http://127.0.0.1:9/v1"],  # unknown run
        ["replay", "--arm", "m", "--concurrency", "0", "0" * 32],
    ],
)
def test_bad_invocations_are_one_clean_line(db: str, args: list[str]) -> None:
    result = runner.invoke(app, ["--db", db, *args], env={"OPENAI_API_KEY": "sk-test"})
    assert result.exit_code in (1, 2), result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_replay_by_creation_time(db: str, server: Any) -> None:
    _fake, srv = server
    cid, _ = _thread(db, srv.base_url)
    env = {"OPENAI_API_KEY": "sk-test"}
    none = json.loads(cli(db, "replay", "--created-before", "2000-01-01", "--arm", "gpt-4.1-mini",
                          "--base-url", srv.base_url, "--json", env=env).stdout)
    assert none["items"] == []
    some = json.loads(cli(db, "replay", "--created-after", "2000-01-01", "--arm", "gpt-4.1-mini",
                          "--base-url", srv.base_url, "--json", env=env).stdout)
    assert {i["conversation_id"] for i in some["items"]} == {cid}
