"""Completion prompt templates: the built-ins' exact text, get_template, Jinja behaviour.

Comparisons with transformers live in test_templates_hf.py; nothing here
needs transformers.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from convo import (
    BUILTIN_TEMPLATES,
    FunctionCall,
    ImagePart,
    ImageURL,
    JinjaChatTemplate,
    Message,
    PromptTemplate,
    TemplateError,
    TextPart,
    ToolCall,
    get_template,
)
from convo._records import StoredMessage
from convo._render.jinja import derive_stop, template_messages

CONV = [
    Message.system("You are a helpful assistant."),
    Message.user("Hello"),
    Message.assistant("Hi there"),
    Message.user("Who are you"),
    Message.assistant("I am an assistant"),
    Message.user("Another question"),
]

TOOL_CONV = [
    Message.developer("Use tools."),
    Message.user("Weather in Paris?", name="alice"),
    Message.assistant(
        tool_calls=[
            ToolCall(
                id="call_1", function=FunctionCall(name="get_weather", arguments='{"city":"Paris"}')
            )
        ]
    ),
    Message.tool("18°C", tool_call_id="call_1"),
    Message.assistant("It is 18°C."),
    Message.user("Thanks"),
]

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
TOOLS_JSON = (
    '{"type": "function", "function": {"name": "get_weather", "parameters": '
    '{"type": "object", "properties": {"city": {"type": "string"}}}}}'
)

# --- built-ins: exact text ------------------------------------------------------------

PLAIN_EXPECTED = {
    "transcript": (
        (
            "System: You are a helpful assistant.\n\nUser: Hello\n\nAssistant: Hi there\n\n"
            "User: Who are you\n\nAssistant: I am an assistant\n\nUser: Another question"
        ),
        "\n\nAssistant:",
    ),
    "chatml": (
        (
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\nHi there<|im_end|>\n"
            "<|im_start|>user\nWho are you<|im_end|>\n"
            "<|im_start|>assistant\nI am an assistant<|im_end|>\n"
            "<|im_start|>user\nAnother question<|im_end|>\n"
        ),
        "<|im_start|>assistant\n",
    ),
    "llama3": (
        (
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
            "You are a helpful assistant.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHi there<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nWho are you<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nI am an assistant<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nAnother question<|eot_id|>"
        ),
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    "llama2": (
        (
            "<s>[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\nHello [/INST] Hi there </s>"
            "<s>[INST] Who are you [/INST] I am an assistant </s><s>[INST] Another question [/INST]"
        ),
        "",  # [INST] formats have no generation header
    ),
    "mistral": (
        (
            "<s> [INST] You are a helpful assistant.\n\nHello [/INST] Hi there</s>"
            " [INST] Who are you [/INST] I am an assistant</s> [INST] Another question [/INST]"
        ),
        "",
    ),
}

STOPS = {
    "transcript": ("\nUser:", "\nUser (", "\nSystem:", "\nTool result ("),
    "chatml": ("<|im_end|>", "<|endoftext|>"),
    "llama3": ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"),
    "llama2": ("</s>", "[INST]"),
    "mistral": ("</s>", "[INST]"),
}


@pytest.mark.parametrize("name", sorted(PLAIN_EXPECTED))
def test_builtin_plain_conversation(name: str) -> None:
    template = get_template(name)
    body, generation = PLAIN_EXPECTED[name]
    assert template.render(CONV, add_generation_prompt=False) == body
    assert template.render(CONV) == body + generation
    assert template.stop == STOPS[name]
    assert len(template.stop) <= 4
    assert isinstance(template, PromptTemplate)
    assert template.name == name


TOOL_EXPECTED = {
    "transcript": (
        "System: Use tools.\n\nUser (alice): Weather in Paris?\n\n"
        'Assistant: Tool call: get_weather({"city": "Paris"})\n\n'
        "Tool result (get_weather): 18°C\n\nAssistant: It is 18°C.\n\nUser: Thanks\n\nAssistant:"
    ),
    "chatml": (
        "<|im_start|>system\nUse tools.<|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}'
        "\n</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n18°C\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\nIt is 18°C.<|im_end|>\n<|im_start|>user\nThanks<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    "llama3": (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nUse tools.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWeather in Paris?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
        '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>'
        "<|start_header_id|>ipython<|end_header_id|>\n\n18°C<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nIt is 18°C.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nThanks<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "llama2": (
        "<s>[INST] <<SYS>>\nUse tools.\n<</SYS>>\n\nWeather in Paris? [/INST] "
        '{"name": "get_weather", "arguments": {"city": "Paris"}} </s>'
        "<s>[INST] Tool result (get_weather): 18°C [/INST] It is 18°C. </s><s>[INST] Thanks [/INST]"
    ),
    "mistral": (
        "<s> [INST] Use tools.\n\nWeather in Paris? [/INST] "
        '{"name": "get_weather", "arguments": {"city": "Paris"}}</s>'
        " [INST] Tool result (get_weather): 18°C [/INST] It is 18°C.</s> [INST] Thanks [/INST]"
    ),
}


@pytest.mark.parametrize("name", sorted(TOOL_EXPECTED))
def test_builtin_tool_conversation(name: str) -> None:
    assert get_template(name).render(TOOL_CONV) == TOOL_EXPECTED[name]


def test_builtin_tool_definitions_go_into_the_system_prompt() -> None:
    hint = 'To call a function, write a line "Tool call: <name>(<arguments as a JSON object>)".'
    out = get_template("transcript").render(TOOL_CONV[:2], tools=TOOLS)
    assert out == (
        "System: Use tools.\n\nYou can call these functions (described with JSON Schema):\n"
        f"{TOOLS_JSON}\n\n{hint}\n\nUser (alice): Weather in Paris?\n\nAssistant:"
    )
    # No system message: the tools get a system turn of their own.
    out = get_template("chatml").render([Message.user("Hi")], tools=TOOLS)
    assert out.startswith(
        "<|im_start|>system\n# Tools\n\nYou may call one or more functions to assist with the "
        f"user query.\n\nYou are provided with function signatures within <tools></tools> XML "
        f"tags:\n<tools>\n{TOOLS_JSON}\n</tools>\n\n"
    )
    assert out.endswith(
        "</tool_call><|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    out = get_template("llama3").render([Message.user("Hi")], tools=TOOLS)
    assert out.startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou can call these functions"
    )
    out = get_template("mistral").render([Message.user("Hi")], tools=TOOLS)
    assert out.startswith("<s> [INST] You can call these functions")
    assert out.endswith('"arguments": <arguments as a JSON object>}.\n\nHi [/INST]')


def test_inst_formats_merge_sides_and_home_the_system_prompt() -> None:
    messages = [
        Message.system("S"),
        Message.user("a"),
        Message.user("b"),
        Message.system("late rule"),
        Message.assistant("x"),
        Message.user("c"),
    ]
    assert get_template("llama2").render(messages) == (
        "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\na\n\nb\n\nlate rule [/INST] x </s><s>[INST] c [/INST]"
    )
    greeting = [Message.system("S"), Message.assistant("How can I help?"), Message.user("c")]
    assert get_template("llama2").render(greeting) == (
        "<s>[INST] <<SYS>>\nS\n<</SYS>> [/INST] How can I help? </s><s>[INST] c [/INST]"
    )
    assert get_template("mistral").render(greeting) == (
        "<s> [INST] S\n\n [/INST] How can I help?</s> [INST] c [/INST]"
    )
    assert get_template("mistral").render([Message.system("S")]) == "<s> [INST] S\n\n [/INST]"


def test_builtin_edge_content() -> None:
    refusal = Message.assistant(refusal="I can't help with that.")
    parts = Message.user([TextPart(text="one"), TextPart(text="two")])
    out = get_template("chatml").render([parts, refusal], add_generation_prompt=False)
    assert out == (
        "<|im_start|>user\none\ntwo<|im_end|>\n"
        "<|im_start|>assistant\nI can't help with that.<|im_end|>\n"
    )
    # Llama 3 trims like Meta's template; the transcript keeps text as given.
    padded = [Message.user("  spaced  ")]
    assert (
        get_template("llama3")
        .render(padded, add_generation_prompt=False)
        .endswith("\n\nspaced<|eot_id|>")
    )
    assert get_template("transcript").render(padded) == "User:   spaced  \n\nAssistant:"
    assert get_template("transcript").render([]) == "Assistant:"
    assert get_template("chatml").render([]) == "<|im_start|>assistant\n"


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_builtin_refuses_media(name: str) -> None:
    image = Message.user(
        [TextPart(text="What is this?"), ImagePart(image_url=ImageURL(url="https://x/y.png"))]
    )
    with pytest.raises(TemplateError, match=f"template '{name}' cannot put image_url"):
        get_template(name).render([image])


def test_builtin_accepts_stored_messages() -> None:
    stored = [
        StoredMessage(
            role=m.role,
            content=m.content,
            id=i,
            conversation_id="c1",
            seq=i,
            created_at=datetime(2024, 1, 1),
            metadata={"secret": "never rendered"},
        )
        for i, m in enumerate(CONV, 1)
    ]
    for name, template in BUILTIN_TEMPLATES.items():
        assert template.render(stored) == template.render(CONV), name
    assert "never rendered" not in json.dumps(template_messages(stored))


# --- get_template -----------------------------------------------------------------------


def test_get_template_unknown_name_lists_the_builtins() -> None:
    with pytest.raises(TemplateError) as info:
        get_template("vicuna")
    message = str(info.value)
    assert "'vicuna'" in message
    assert "chatml, llama2, llama3, mistral, transcript" in message


def test_get_template_from_files(tmp_path: Path) -> None:
    source = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{{ eos_token }}"
    jinja_file = tmp_path / "mine.jinja"
    jinja_file.write_text(source, encoding="utf-8")
    from_file = get_template(str(jinja_file))
    assert isinstance(from_file, JinjaChatTemplate)
    assert from_file.name == "mine.jinja"
    assert from_file.render(CONV[:2]) == "<system>You are a helpful assistant.<user>Hello"

    config = {
        "bos_token": {"__type": "AddedToken", "content": "<s>"},
        "eos_token": "</s>",
        "chat_template": [
            {"name": "default", "template": source},
            {"name": "rag", "template": "{{ documents[0].text }}"},
        ],
    }
    model = tmp_path / "model"
    model.mkdir()
    (model / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    for target in (str(model), str(model / "tokenizer_config.json")):
        tpl = get_template(target)
        assert isinstance(tpl, JinjaChatTemplate)
        # No end-of-turn token: the next turn's opener ends the assistant's turn.
        stops = ("<user>", "<system>", "<tool>", "</s>")
        assert (tpl.bos_token, tpl.eos_token, tpl.stop) == ("<s>", "</s>", stops)
        assert tpl.render(CONV[1:2]) == "<user>Hello</s>"
    rag = JinjaChatTemplate.from_tokenizer_config(config, template_name="rag")
    assert rag.render(CONV, documents=[{"title": "t", "text": "doc text"}]) == "doc text"
    with pytest.raises(
        TemplateError, match=r"no chat template named 'tool_use' \(it has: default, rag\)"
    ):
        JinjaChatTemplate.from_tokenizer_config(config, template_name="tool_use")

    # transformers >= 4.50 saves the template next to the config.
    split = tmp_path / "split"
    split.mkdir()
    (split / "tokenizer_config.json").write_text('{"eos_token": "<|im_end|>"}', encoding="utf-8")
    (split / "chat_template.jinja").write_text(source, encoding="utf-8")
    tpl = get_template(str(split))
    assert tpl.stop == ("<user>", "<system>", "<tool>", "<|im_end|>")
    assert tpl.render(CONV[1:2]) == "<user>Hello<|im_end|>"

    assert get_template(tpl) is tpl


def test_get_template_bad_files(tmp_path: Path) -> None:
    broken = tmp_path / "tokenizer_config.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(TemplateError, match="cannot read tokenizer config"):
        get_template(str(broken))
    broken.write_text('{"eos_token": "</s>"}', encoding="utf-8")
    with pytest.raises(TemplateError, match="has no chat_template"):
        get_template(str(broken))
    broken.write_text('{"chat_template": "x", "eos_token": 7}', encoding="utf-8")
    with pytest.raises(TemplateError, match="eos_token must be a string or a token dict"):
        get_template(str(broken))
    with pytest.raises(TemplateError, match="unknown template"):
        get_template(str(tmp_path / "missing.jinja"))


# --- JinjaChatTemplate -----------------------------------------------------------------


def test_stop_sequences() -> None:
    chatml = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    )
    assert JinjaChatTemplate(chatml).stop == ("<|im_end|>",)
    # The end of a turn first, then the end of the text.
    assert JinjaChatTemplate(chatml, eos_token="<|endoftext|>").stop == (
        "<|im_end|>",
        "<|endoftext|>",
    )
    assert JinjaChatTemplate(chatml, stop=["\nUser:"]).stop == ("\nUser:",)
    assert JinjaChatTemplate("{{ messages|length }}").stop == ()
    many = "<|im_end|><|eot_id|><|eom_id|><|end|><end_of_turn></s>"
    assert derive_stop(many, "<EOS>") == ("<EOS>", "<|im_end|>", "<|eot_id|>", "<|eom_id|>")
    # without an eos_token, the markers fill all four places (no empty one first)
    assert derive_stop(many) == ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>")
    with pytest.raises(TemplateError, match="at most 4 stop sequences"):
        JinjaChatTemplate(chatml, stop=["a", "b", "c", "d", "e"])
    with pytest.raises(TemplateError, match="non-empty strings"):
        JinjaChatTemplate(chatml, stop=[""])


def test_template_errors_name_the_template_and_the_cause() -> None:
    with pytest.raises(TemplateError, match=r"'mine' has a syntax error at line 2: .*endfor"):
        JinjaChatTemplate("ok\n{% for m in messages %}", name="mine")
    raising = JinjaChatTemplate(
        "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}",
        name="strict",
    )
    with pytest.raises(TemplateError) as info:
        raising.render(CONV)
    assert str(info.value) == "chat template 'strict' failed at line 1: first must be user"
    undefined = JinjaChatTemplate("line one\n{{ messages[0].nope.deeper }}", name="u")
    with pytest.raises(TemplateError, match=r"'u' failed at line 2: UndefinedError: .*'nope'"):
        undefined.render(CONV)
    typed = JinjaChatTemplate("{{ messages[0].content + 1 }}", name="t")
    with pytest.raises(TemplateError, match="'t' failed at line 1: TypeError"):
        typed.render(CONV)
    with pytest.raises(TemplateError, match="variables may not be named messages"):
        JinjaChatTemplate("x", variables={"messages": []})
    with pytest.raises(TemplateError, match="a chat template is a string"):
        JinjaChatTemplate(b"x")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{% set x = [1] %}{{ x.append(2) }}",
        "{% set ns = namespace() %}{% set ns._hidden = 1 %}",
        "{{ namespace(_hidden=1) }}",
    ],
)
def test_templates_are_sandboxed(source: str) -> None:
    with pytest.raises(TemplateError, match="SecurityError"):
        JinjaChatTemplate(source).render(CONV)


def test_jinja_environment_features() -> None:
    def render(source: str, **kw: Any) -> str:
        return JinjaChatTemplate(source, **kw).render(CONV[:2], add_generation_prompt=False)

    assert render("{{ {'é': [1, 2]}|tojson }}") == '{"é": [1, 2]}'
    assert render("{{ {'b': 1, 'a': 2}|tojson(indent=2, sort_keys=true) }}") == (
        '{\n  "a": 2,\n  "b": 1\n}'
    )
    assert render("{{ [1, 2]|tojson(separators=(',', ':')) }}") == "[1,2]"
    assert render("{{ '<&>'|tojson }}") == '"<&>"'  # Jinja's own filter would escape these
    assert render("{{ strftime_now('%Y') }}") == str(datetime.now().year)
    assert render("a{% generation %}b{% endgeneration %}c") == "abc"
    assert (
        render(
            "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.role }}{% endfor %}"
        )
        == "system"
    )
    assert render("  {% if true %}\nA\n  {% endif %}\nB") == "A\nB"  # trim_blocks + lstrip_blocks
    assert (
        render(
            "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}"
        )
        == "2"
    )
    assert render("{{ dict(a=1) }}{{ dict.fromkeys(['k']) }}") == "{'a': 1}{'k': None}"
    assert render("{{ add_generation_prompt }}{{ tools }}{{ documents }}") == "FalseNoneNone"
    assert (
        render(
            "{{ bos_token }}|{{ eos_token }}|{{ flavor }}",
            bos_token="<s>",
            eos_token="</s>",
            variables={"flavor": "x"},
        )
        == "<s>|</s>|x"
    )


def test_compiled_once_per_source() -> None:
    a = JinjaChatTemplate("{{ messages|length }}", name="a")
    b = JinjaChatTemplate("{{ messages|length }}", name="b")
    assert a._compiled is b._compiled


def test_template_messages_shape() -> None:
    messages = [
        Message.developer("d"),
        Message.user([TextPart(text="x"), ImagePart(image_url=ImageURL(url="u", detail="low"))]),
        Message.assistant(
            refusal="no",
            tool_calls=[ToolCall(id="c1", function=FunctionCall(name="f", arguments="not json"))],
        ),
        Message.tool("r", tool_call_id="c1"),
        Message.tool("r2", tool_call_id="unknown"),
        Message.tool("r3", tool_call_id="c1", name="explicit"),
    ]
    assert template_messages(messages) == [
        {"role": "system", "content": "d"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "x"},
                {"type": "image_url", "image_url": {"url": "u", "detail": "low"}},
            ],
        },
        {
            "role": "assistant",
            "content": "no",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "not json"}}
            ],
        },
        {"role": "tool", "content": "r", "name": "f", "tool_call_id": "c1"},
        {"role": "tool", "content": "r2", "tool_call_id": "unknown"},
        {"role": "tool", "content": "r3", "name": "explicit", "tool_call_id": "c1"},
    ]
