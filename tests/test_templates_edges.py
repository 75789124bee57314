"""Built-in completion templates at their edges: system and developer prompts, tools,
tool calls and results, non-ASCII text, empty conversations, and get_template's errors.

Properties of each format rather than whole golden prompts, so that a template's
wording can change without these tests changing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from convo import FunctionCall, Message, TemplateError, ToolCall, get_template
from convo._render import templates as templates_module
from convo._render.control import analyze

ALL = ["transcript", "chatml", "llama3", "mistral", "llama2"]
CALL = ToolCall(id="call_1", function=FunctionCall(name="lookup", arguments='{"q": "café"}'))
TOOLS = [{"type": "function", "function": {"name": "first_tool", "description": "Crème brûlée."}},
         {"type": "function", "function": {"name": "second_tool"}}]


@pytest.mark.parametrize("name", ALL)
def test_non_ascii_is_written_as_is(name: str) -> None:
    prompt = get_template(name).render(
        [Message.system("Be terse."), Message.user("u"), Message.assistant(tool_calls=[CALL]),
         Message.tool("r", tool_call_id="call_1"), Message.user("v")], tools=TOOLS)
    assert "café" in prompt and "Crème brûlée" in prompt and "\\u00" not in prompt


@pytest.mark.parametrize("name", ["transcript", "llama3", "mistral", "llama2"])
def test_tools_are_listed_one_per_line(name: str) -> None:
    prompt = get_template(name).render([Message.system("Be terse."), Message.user("u")], tools=TOOLS)
    lines = [json.dumps(t, ensure_ascii=False) for t in TOOLS]
    assert "\n".join(lines) in prompt and "Be terse." in prompt


def test_chatml_lists_tools_one_per_line() -> None:
    prompt = get_template("chatml").render([Message.user("u")], tools=TOOLS)
    assert "".join("\n" + json.dumps(t, ensure_ascii=False) for t in TOOLS) in prompt


def test_transcript_tools_without_a_system_prompt_open_with_a_system_block() -> None:
    prompt = get_template("transcript").render([Message.user("u")], tools=TOOLS)
    assert prompt.startswith("System: ") and "first_tool" in prompt.split("\n\nUser: u")[0]


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("role", ["system", "developer"])
@pytest.mark.parametrize("tools", [None, TOOLS], ids=["no-tools", "tools"])
def test_a_leading_system_or_developer_prompt_is_the_system_prompt(
    name: str, role: str, tools: list[dict[str, object]] | None
) -> None:
    tpl = get_template(name)
    prompt = tpl.render([Message(role=role, content="RULES"), Message.user("u")], tools=tools)
    assert prompt.count("RULES") == 1
    if name == "transcript":
        assert prompt.count("System:") == 1
    if name in ("chatml", "llama3"):
        assert prompt.count("system") == 1  # one system turn, tools included
    user_only = tpl.render([Message.user("u")], tools=tools)
    with_system = tpl.render([Message.system("RULES"), Message.user("u")], tools=tools)
    assert prompt == with_system != user_only
    assert prompt.index("RULES") < prompt.index("u", prompt.index("RULES"))


def test_llama3_system_prompt_and_tools_share_one_header() -> None:
    prompt = get_template("llama3").render([Message.system("RULES"), Message.user("u")], tools=TOOLS)
    assert prompt.count("<|start_header_id|>system<|end_header_id|>") == 1
    head = prompt.split("<|start_header_id|>user")[0]
    assert "RULES" in head and "first_tool" in head and head.endswith("<|eot_id|>")
    assert prompt.count("<|eot_id|>") == 2  # the system turn, the user turn
    assert "<|start_header_id|>user<|end_header_id|>\n\nu<|eot_id|>" in prompt


@pytest.mark.parametrize("name", ["mistral", "llama2"])
def test_inst_templates_keep_every_leading_system_message_and_tools(name: str) -> None:
    tpl = get_template(name)
    prompt = tpl.render([Message.system("ONE"), Message.developer("TWO"), Message.user("u")], tools=TOOLS)
    assert "ONE" in prompt and "TWO" in prompt and "first_tool" in prompt
    assert prompt.index("ONE") < prompt.index("TWO") < prompt.rindex("u [/INST]")


@pytest.mark.parametrize("name", ALL)
def test_text_and_tool_calls_of_one_reply_are_on_separate_lines(name: str) -> None:
    prompt = get_template(name).render([Message.user("u"), Message.assistant("thinking", tool_calls=[CALL]),
                                        Message.tool("r", tool_call_id="call_1")])
    after = prompt.split("thinking", 1)[1]
    assert after.startswith("\n") and "lookup" in "".join(after.split("\n")[1:3])


@pytest.mark.parametrize("name", ALL)
def test_an_empty_conversation_renders(name: str) -> None:
    tpl = get_template(name)
    assert tpl.render([]) == tpl.render([], add_generation_prompt=True)
    assert "first_tool" in tpl.render([], tools=TOOLS)


def test_chatml_wraps_consecutive_tool_results_once() -> None:
    tpl = get_template("chatml")
    msgs = [Message.user("u"), Message.assistant(tool_calls=[CALL]), Message.tool("r1", tool_call_id="call_1"),
            Message.tool("r2", tool_call_id="call_1")]
    prompt = tpl.render(msgs, add_generation_prompt=False)
    assert prompt.count("<|im_start|>user") == 2 and prompt.endswith("</tool_response><|im_end|>\n")
    assert prompt.count("<|im_end|>") == 3
    lone = tpl.render([Message.tool("r0", tool_call_id="x"), Message.tool("r1", tool_call_id="x")],
                      add_generation_prompt=False)
    assert lone.count("<|im_start|>user") == 1 and lone.count("<|im_end|>") == 1
    first = tpl.render([Message.tool("r0", tool_call_id="x"), Message.tool("r1", tool_call_id="x"),
                        Message.user("u")], add_generation_prompt=False)
    assert first.count("<|im_start|>user") == 2  # the two results, then the user's turn


def test_a_tool_result_without_its_call_is_labelled_with_its_id() -> None:
    prompt = get_template("transcript").render([Message.user("u"), Message.tool("r", tool_call_id="call_9")])
    assert "Tool result (call_9): r" in prompt


@pytest.mark.parametrize("name", ["transcript", "chatml", "llama3"])
def test_the_generation_prompt_is_on_by_default(name: str) -> None:
    tpl = get_template(name)
    assert tpl.render([Message.user("u")]) == tpl.render([Message.user("u")], add_generation_prompt=True)
    assert tpl.render([Message.user("u")]) != tpl.render([Message.user("u")], add_generation_prompt=False)


def test_get_template_errors_say_what_to_give(tmp_path: Path) -> None:
    with pytest.raises(TemplateError) as err:
        get_template(5)  # type: ignore[arg-type]
    assert str(err.value) == "expected a template name or path, got int"
    with pytest.raises(TemplateError) as err:
        get_template("nope")
    assert str(err.value) == (
        "unknown template 'nope': expected one of chatml, llama2, llama3, mistral, transcript, "
        "or a path to a Jinja chat template file or to a Hugging Face tokenizer_config.json "
        "(no such file here)")
    broken = tmp_path / "broken.jinja"
    broken.write_bytes(b"\xff\xfe{{ messages }}")
    with pytest.raises(TemplateError) as err:
        get_template(str(broken))
    assert str(err.value).startswith(f"cannot read chat template {str(broken)!r}: ")
    good = tmp_path / "good.jinja"
    good.write_text("é{% for m in messages %}{{ m.content }}{% endfor %}", encoding="utf-8")
    assert get_template(str(good)).render([Message.user("u")]) == "éu"


def test_a_builtins_control_strings_are_found_once_and_hold_what_it_declares_and_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # From a cold cache (other tests filled it; a fresh process starts empty): the
    # analysis runs once per template, then every render reuses its result.
    monkeypatch.setattr(templates_module, "_CONTROL", {})
    calls: list[str] = []

    def counted(render: Any, **kwargs: Any) -> Any:
        calls.append("analyze")
        return analyze(render, **kwargs)

    monkeypatch.setattr(templates_module, "analyze", counted)
    for name in ALL:
        tpl: Any = get_template(name)
        control = tpl._control()
        declared = {*tpl.tokens, *tpl.stop, tpl.bos_token, tpl.eos_token} - {""}
        assert declared <= control.anywhere, name
        assert set(tpl.labels) <= control.anchored | control.anywhere, name
        tpl.render([Message.user("u")], tools=TOOLS)
        assert tpl._control() is control, name
    assert len(calls) == len(ALL)
    # found only by rendering the template (with tools, for these two)
    assert set(get_template("transcript").labels) <= get_template("transcript")._control().anchored
    assert "Assistant: Tool call:" in get_template("transcript")._control().anchored
    assert {"<function-name>", "<args-json-object>"} <= get_template("chatml")._control().anywhere
