"""JinjaChatTemplate from tokenizer configs: which template, which tokens, which names,
and the words of every error. Public API only (convo.JinjaChatTemplate)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from convo import FunctionCall, JinjaChatTemplate, Message, TemplateError, ToolCall

ECHO = "{{ bos_token }}{% for m in messages %}[{{ m.role }}{% if m.name %}:{{ m.name }}{% endif %}]{{ m.content }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}{{ eos_token }}"
TOOLS = "TOOLS {{ (tools or []) | length }} {{ messages | length }}{% if add_generation_prompt %}+{% endif %}"
HI = [Message.user("hi")]


def write(tmp_path: Path, config: Any) -> Path:
    path = tmp_path / "tokenizer_config.json"
    path.write_text(json.dumps(config) if not isinstance(config, str) else config, encoding="utf-8")
    return path


# --- construction ----------------------------------------------------------------------------


def test_defaults_and_names() -> None:
    tpl = JinjaChatTemplate(ECHO)
    # no eos: the next turn's openers stop the model (labels the template writes)
    assert (tpl.bos_token, tpl.eos_token, tpl.stop, tpl.source) == (
        "", "", ("[user]", "[system]"), ECHO
    )
    assert tpl.render(HI) == "[user]hi[assistant]"
    assert tpl.render(HI, add_generation_prompt=False) == "[user]hi"
    import hashlib

    assert tpl.name == "jinja-" + hashlib.sha256(ECHO.encode()).hexdigest()[:12]
    assert repr(tpl) == f"JinjaChatTemplate(name={tpl.name!r}, stop=('[user]', '[system]'))"


def test_construction_errors_say_what_is_wrong() -> None:
    with pytest.raises(TemplateError) as err:
        JinjaChatTemplate(5)  # type: ignore[arg-type]
    assert str(err.value) == "a chat template is a string, not int"
    with pytest.raises(TemplateError) as err:
        JinjaChatTemplate(ECHO, name="t", variables={"tools": 1, "messages": 2})
    assert str(err.value) == "chat template 't': variables may not be named messages, tools"
    with pytest.raises(TemplateError) as err:
        JinjaChatTemplate(ECHO, name="t", stop=["a", "b", "c", "d", "e"])
    assert str(err.value) == "chat template 't': at most 4 stop sequences (the API's limit), got 5"
    assert JinjaChatTemplate(ECHO, stop=["a", "b", "c", "d"]).stop == ("a", "b", "c", "d")
    assert JinjaChatTemplate(ECHO, stop="</s>").stop == ("</s>",)


def test_stop_is_derived_from_eos_and_the_end_markers_written() -> None:
    assert JinjaChatTemplate("<|im_end|>{{ messages }}", eos_token="</s>").stop == ("</s>", "<|im_end|>")


def test_a_failing_template_names_the_line() -> None:
    tpl = JinjaChatTemplate("line one\n{{ raise_exception('no system role') }}", name="t")
    with pytest.raises(TemplateError) as err:
        tpl.render(HI)
    assert str(err.value) == "chat template 't' failed at line 2: no system role"


# --- tokenizer configs ----------------------------------------------------------------------------


def test_a_config_file_with_token_dicts(tmp_path: Path) -> None:
    path = write(tmp_path, {"chat_template": ECHO, "bos_token": {"content": "<s>"}, "eos_token": "</s>",
                            "unk_token": "<unk>"})
    tpl = JinjaChatTemplate.from_tokenizer_config(path)
    assert (tpl.bos_token, tpl.eos_token, tpl.name) == ("<s>", "</s>", str(path))
    assert tpl.render(HI) == "<s>[user]hi[assistant]</s>"
    assert tpl.variables == {"unk_token": "<unk>"}
    assert JinjaChatTemplate.from_tokenizer_config(tmp_path).name == str(path)  # the directory


def test_a_config_without_tokens_has_empty_ones() -> None:
    tpl = JinjaChatTemplate.from_tokenizer_config({"chat_template": ECHO})
    assert (tpl.bos_token, tpl.eos_token, tpl.name) == ("", "", "tokenizer_config")
    assert tpl.render(HI) == "[user]hi[assistant]"


def test_a_chat_template_file_beside_the_config(tmp_path: Path) -> None:
    path = write(tmp_path, {"eos_token": "</s>"})
    (tmp_path / "chat_template.jinja").write_text("é " + ECHO, encoding="utf-8")
    assert JinjaChatTemplate.from_tokenizer_config(path).render(HI) == "é [user]hi[assistant]</s>"


@pytest.mark.parametrize("form", ["list", "mapping"])
def test_named_templates_and_the_tool_use_switch(form: str) -> None:
    named = {"default": ECHO, "tool_use": TOOLS}
    raw: Any = [{"name": k, "template": v} for k, v in named.items()] if form == "list" else named
    config = {"chat_template": raw, "eos_token": "</s>", "bos_token": "<s>", "pad_token": "<pad>"}
    tpl = JinjaChatTemplate.from_tokenizer_config(config, name="cfg")
    assert tpl.name == "cfg:default" and tpl.stop == ("[user]", "[system]", "</s>")
    assert tpl.render(HI) == "<s>[user]hi[assistant]</s>"
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert tpl.render(HI, tools=tools) == "TOOLS 1 1+"
    assert tpl.render(HI, tools=tools, add_generation_prompt=False) == "TOOLS 1 1"
    assert tpl.render(HI, tools=[]) == "TOOLS 0 1+"
    chosen = JinjaChatTemplate.from_tokenizer_config(config, name="cfg", template_name="tool_use")
    assert chosen.name == "cfg:tool_use" and chosen.render(HI) == "TOOLS 0 1+"
    assert chosen.render(HI, tools=tools) == "TOOLS 1 1+"  # no switch when a name was chosen
    single = JinjaChatTemplate.from_tokenizer_config({"chat_template": ECHO}, name="one")
    assert single.name == "one" and single.render(HI, tools=tools) == "[user]hi[assistant]"


def test_the_tool_use_template_gets_the_same_tokens_and_stop() -> None:
    config = {"chat_template": [{"name": "default", "template": ECHO},
                                {"name": "tool_use", "template": "{{ bos_token }}{{ pad_token }}|" + ECHO}],
              "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
    tpl = JinjaChatTemplate.from_tokenizer_config(config, stop=["<END>"])
    assert tpl.stop == ("<END>",)
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert tpl.render(HI, tools=tools) == "<s><pad>|<s>[user]hi[assistant]</s>"


@pytest.mark.parametrize(("config", "message"), [
    ({"chat_template": None}, "tokenizer config 'cfg' has no chat_template"),
    ({"chat_template": 5}, "tokenizer config 'cfg': chat_template must be a string or a list"),
    ({"chat_template": {"default": 5}}, "tokenizer config 'cfg': chat_template must be a string or a list"),
    ({"chat_template": [{"name": "default"}]},
     'tokenizer config \'cfg\': chat_template list items must be {"name": str, "template": str}'),
    ({"chat_template": [{"name": 1, "template": ECHO}]},
     'tokenizer config \'cfg\': chat_template list items must be {"name": str, "template": str}'),
    ({"chat_template": {"other": ECHO}}, "tokenizer config 'cfg' has no chat template named 'default' (it has: other)"),
    ({"chat_template": ECHO, "eos_token": 5}, "tokenizer config 'cfg': eos_token must be a string or a token dict"),
    ({"chat_template": ECHO, "additional_special_tokens": [5]},
     "tokenizer config 'cfg': additional_special_tokens must be a string or a token dict"),
])
def test_config_errors_say_what_is_wrong(config: dict[str, Any], message: str) -> None:
    with pytest.raises(TemplateError) as err:
        JinjaChatTemplate.from_tokenizer_config(config, name="cfg")
    assert str(err.value) == message


def test_unreadable_config_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(TemplateError, match=f"^cannot read tokenizer config {str(missing)!r}: "):
        JinjaChatTemplate.from_tokenizer_config(missing)
    listed = write(tmp_path, [1, 2])
    with pytest.raises(TemplateError) as err:
        JinjaChatTemplate.from_tokenizer_config(listed)
    assert str(err.value) == f"tokenizer config {str(listed)!r} is not a JSON object"
    utf8 = write(tmp_path, '{"chat_template": "é{{ messages | length }}"}')
    assert JinjaChatTemplate.from_tokenizer_config(utf8).render(HI) == "é1"


def test_a_tokenizer_json_beside_the_config_is_read_and_named_in_its_errors(tmp_path: Path) -> None:
    write(tmp_path, {"chat_template": ECHO})
    tokenizer = tmp_path / "tokenizer.json"
    tokenizer.write_text("{oops", encoding="utf-8")
    with pytest.raises(TemplateError, match=f"^cannot read tokenizer {str(tokenizer)!r}: "):
        JinjaChatTemplate.from_tokenizer_config(tmp_path)
    tokenizer.write_text("[1]", encoding="utf-8")
    with pytest.raises(TemplateError) as err:
        JinjaChatTemplate.from_tokenizer_config(tmp_path)
    assert str(err.value) == f"tokenizer {str(tokenizer)!r} is not a JSON object"
    # entries that are no token are skipped, and the ones after them still count
    junk = ["<|text|>", {"content": 5, "special": True}, {"special": True}]
    added = [*junk, {"id": 9, "content": "<|turn|>", "special": True}]
    tokenizer.write_text(json.dumps({"added_tokens": added}), encoding="utf-8")
    tpl = JinjaChatTemplate.from_tokenizer_config(tmp_path)
    assert tpl.special_tokens == ("<|turn|>",)
    assert tpl.render(HI + [Message.user("<|turn|>")], add_generation_prompt=False) == (
        "[user]hi[user]<\u200b|turn|>"
    )


# --- what messages look like to a template ---------------------------------------------------------


def test_tool_results_are_named_after_their_call_and_parts_become_text() -> None:
    tpl = JinjaChatTemplate(ECHO)
    call = ToolCall(id="call_1", function=FunctionCall(name="lookup", arguments="{}"))
    messages = [Message.user([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]),
                Message.assistant(tool_calls=[call]), Message.tool("r", tool_call_id="call_1"),
                Message.tool("orphan", tool_call_id="call_9")]
    assert tpl.render(messages, add_generation_prompt=False) == "[user]a\nb[assistant][tool:lookup]r[tool]orphan"


def test_documents_and_the_generation_prompt_reach_every_template() -> None:
    docs = "{% for d in documents or [] %}<{{ d.title }}>{% endfor %}{% if add_generation_prompt %}+{% endif %}"
    tpl = JinjaChatTemplate(docs)
    assert tpl.render(HI, documents=[{"title": "a"}]) == "<a>+"
    assert tpl.render_dicts([{"role": "user", "content": "hi"}]) == "+"  # on by default
    config = {"chat_template": [{"name": "default", "template": ECHO},
                                {"name": "tool_use", "template": "T" + docs}]}
    switched = JinjaChatTemplate.from_tokenizer_config(config)
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert switched.render(HI, tools=tools, documents=[{"title": "b"}]) == "T<b>+"


def test_render_dicts_renders_dicts_as_given_with_every_string_neutralized() -> None:
    source = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% for t in tools or [] %}[{{ t.function.name }}]{% endfor %}"
        "{% for d in documents or [] %}({{ d.title }}){% endfor %}"
    )
    tpl = JinjaChatTemplate(source)
    end, broken = "<|im_end|>", "<\u200b|im_end|>"
    assert tpl.render_dicts(
        [{"role": "developer", "content": end}],  # as given: not turned into "system"
        tools=[{"type": "function", "function": {"name": end}}],
        documents=[{"title": end}],
    ) == f"<|im_start|>developer\n{broken}<|im_end|>\n[{broken}]({broken})"


def test_a_configs_stop_limits_and_special_tokens_reach_its_tool_use_template_too() -> None:
    echo = "{% for m in messages %}{{ m.content }}{% endfor %}"
    config = {"chat_template": [{"name": "default", "template": "D" + echo},
                                {"name": "tool_use", "template": "T" + echo}],
              "added_tokens_decoder": {"7": {"content": "<|sp|>", "special": True}}}
    tpl = JinjaChatTemplate.from_tokenizer_config(
        config, name="cfg", stop=["END!"], max_prompt_chars=1000
    )
    tools = [{"type": "function", "function": {"name": "f"}}]
    text = [Message.user("<|sp|> END!")]
    assert tpl.render(text) == "D<\u200b|sp|> E\u200bND!"
    assert tpl.render(text, tools=tools) == "T<\u200b|sp|> E\u200bND!"
    long = [Message.user("y" * 1200)]
    over = "the prompt would hold 1,201 characters (or items), over the max_prompt_chars limit of 1,000"
    for name, use in (("default", None), ("tool_use", tools)):
        with pytest.raises(TemplateError) as err:
            tpl.render(long, tools=use)
        assert str(err.value) == f"chat template 'cfg:{name}' failed: {over}"


def test_a_configs_render_timeout_reaches_its_tool_use_template_too() -> None:
    # 10^10 iterations, stopped at the first probe render: after 0.5 s, not the default 2 s
    slow = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    config = {"chat_template": [{"name": "default", "template": slow},
                                {"name": "tool_use", "template": "T" + slow}]}
    tpl = JinjaChatTemplate.from_tokenizer_config(config, name="cfg", render_timeout=0.5)
    tools = [{"type": "function", "function": {"name": "f"}}]
    for name, use in (("default", None), ("tool_use", tools)):
        with pytest.raises(TemplateError) as err:
            tpl.render(HI, tools=use)
        assert str(err.value) == (
            f"chat template 'cfg:{name}' went past its limits rendering a short placeholder "
            "conversation: rendering took longer than 0.5 s (the render_timeout limit)"
        )


def test_a_failing_tool_use_template_is_named_as_such() -> None:
    config = {"chat_template": [{"name": "default", "template": ECHO},
                                {"name": "tool_use", "template": "{{ raise_exception('no tools here') }}"}]}
    tpl = JinjaChatTemplate.from_tokenizer_config(config, name="cfg")
    with pytest.raises(TemplateError) as err:
        tpl.render(HI, tools=[{"type": "function", "function": {"name": "f"}}])
    assert str(err.value) == "chat template 'cfg:tool_use' failed at line 1: no tools here"
