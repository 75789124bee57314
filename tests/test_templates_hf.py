"""convo's Jinja rendering against transformers' own renderer.

Two renderers, one input: convo's ``template_messages`` turns convo messages
into the dicts a template sees (tool call arguments parsed, developer ->
system...), and both transformers (``render_jinja_template``, and
``apply_chat_template`` on a real tokenizer loaded from a
``tokenizer_config.json``) and convo render those same dicts. Whatever
transformers produces, convo must produce; where transformers raises, convo
must raise :class:`convo.TemplateError`.

The published templates are read at test time from the shared reference
directory (never copied into the project). The built-in templates are checked
against the models' own published templates, quoted below with their origin.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

import pytest

from convo import (
    FunctionCall,
    JinjaChatTemplate,
    Message,
    TemplateError,
    ToolCall,
    get_template,
)
from convo._render.jinja import template_messages

# transformers is a test-only dependency; importing it logs (not warns) that
# PyTorch is absent, which is harmless here: only its Jinja renderer is used.
chat_utils = pytest.importorskip(
    "transformers.utils.chat_template_utils", reason="transformers is not installed"
)

# ../shared/reference beside the checkout, or CONVO_REFERENCE_DIR (as in test_export.py:
# the mutation runs test a scratch copy under build/, whose parents hold no shared/)
_SHARED = Path(__file__).resolve().parents[2] / "shared" / "reference"
REFERENCE = Path(os.environ.get("CONVO_REFERENCE_DIR", _SHARED)) / "chat-templates"

# --- the models' own published templates (Hugging Face tokenizer_config.json) ---------

# meta-llama/Meta-Llama-3-8B-Instruct
META_LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)

# meta-llama/Llama-2-7b-chat-hf
META_LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}"
    "{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)

# mistralai/Mistral-7B-Instruct-v0.2 (the revision with a system prompt)
MISTRAL_V02 = """{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""

# Qwen/Qwen2.5-7B-Instruct: ChatML with tool calls and tool responses
QWEN25 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# --- conversations --------------------------------------------------------------------

PLAIN = [
    Message.system("You are a concise assistant. Answer in French when asked. "),
    Message.user("Hello! What's a café crème?"),
    Message.assistant("  A coffee with cream ☕.  "),
    Message.user("And in one word?"),
    Message.assistant("Crème."),
    Message.user("Merci — à bientôt"),
]
NO_SYSTEM = PLAIN[1:]


def _call(call_id: str, name: str, args: dict[str, Any]) -> ToolCall:
    return ToolCall(id=call_id, function=FunctionCall(name=name, arguments=json.dumps(args)))


WITH_TOOLS = [
    Message.system("You help with the weather."),
    Message.user("Weather in Paris and Zürich?"),
    Message.assistant(
        "Let me check.",
        tool_calls=[
            _call("call00001", "get_weather", {"city": "Paris", "unit": "celsius"}),
            _call("call00002", "get_weather", {"city": "Zürich", "unit": "celsius"}),
        ],
    ),
    Message.tool("18°C, sunny", tool_call_id="call00001"),
    Message.tool('{"temp": 12, "sky": "rain"}', tool_call_id="call00002"),
    Message.assistant("Paris: 18°C and sunny; Zürich: 12°C with rain."),
    Message.user("Thanks!"),
]

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City name, e.g. Zürich"},
                    "unit": {"type": ["string", "integer"], "description": "celsius or fahrenheit"},
                    "days": {"type": "array", "items": {"type": "integer"}, "description": "Days"},
                },
                "required": ["city"],
            },
        },
    }
]

TOKENS = {"bos_token": "<s>", "eos_token": "</s>"}


def jinja(source: str, name: str | None = None) -> JinjaChatTemplate:
    return JinjaChatTemplate(source, bos_token="<s>", eos_token="</s>", name=name)


def hf_render(source: str, messages: list[Message], *, gen: bool, **kw: Any) -> str:
    """transformers' rendering of the dicts convo hands to templates."""
    dicts = copy.deepcopy(template_messages(messages))
    rendered, _ = chat_utils.render_jinja_template(
        conversations=[dicts], chat_template=source, add_generation_prompt=gen, **kw
    )
    result = rendered[0]
    assert isinstance(result, str)
    return result


def reference(name: str) -> str:
    path = REFERENCE / name
    if not path.is_file():
        pytest.skip(f"published chat templates not found at {REFERENCE}")
    source = path.read_text(encoding="utf-8")
    if name == "vicuna.jinja":
        # As published, its default system prompt ends the string literal at
        # "user's" (see test_published_vicuna_does_not_compile); every other
        # check uses it with that one apostrophe escaped, in memory.
        assert source.count("user's questions") == 1
        source = source.replace("user's questions", "user\\'s questions")
    return source


# --- published templates: convo's Jinja renderer == transformers ---------------------

CASES = [
    # (file, conversation, tools given, renders?)
    ("chatml.jinja", "plain", False, True),
    ("chatml.jinja", "no_system", False, True),
    ("chatml.jinja", "with_tools", False, True),
    ("llama3.jinja", "plain", False, True),
    ("llama3.jinja", "no_system", False, True),
    ("llama3.jinja", "with_tools", False, True),
    ("mistral-tools.jinja", "plain", False, True),
    ("mistral-tools.jinja", "with_tools", True, True),
    ("vicuna.jinja", "plain", False, True),
    ("vicuna.jinja", "no_system", False, True),
    ("vicuna.jinja", "with_tools", False, False),  # a tool turn breaks user/assistant order
    ("hermes-tools.jinja", "plain", False, True),
    ("hermes-tools.jinja", "plain", True, True),
    ("hermes-tools.jinja", "with_tools", True, True),
]
CONVERSATIONS = {"plain": PLAIN, "no_system": NO_SYSTEM, "with_tools": WITH_TOOLS}


@pytest.mark.parametrize("gen", [True, False], ids=["gen", "nogen"])
@pytest.mark.parametrize(("file", "conv", "with_tools", "renders"), CASES)
def test_published_template_matches_transformers(
    file: str, conv: str, with_tools: bool, renders: bool, gen: bool
) -> None:
    source = reference(file)
    messages = CONVERSATIONS[conv]
    tools = TOOLS if with_tools else None
    template = jinja(source, file)
    if not renders:
        with pytest.raises(Exception) as hf_error:
            hf_render(source, messages, gen=gen, tools=tools, **TOKENS)
        with pytest.raises(TemplateError) as ours:
            template.render(messages, add_generation_prompt=gen, tools=tools)
        assert str(hf_error.value) in str(ours.value)
        assert file in str(ours.value)
        return
    expected = hf_render(source, messages, gen=gen, tools=tools, **TOKENS)
    # The comparison only means something if the template used the messages.
    assert messages[-1].text.strip() in expected
    assert template.render(messages, add_generation_prompt=gen, tools=tools) == expected


def test_tool_traffic_reaches_the_templates() -> None:
    # Arguments go in as dicts, tool messages get their function's name:
    # Hermes writes both, so a regression in either shows here verbatim.
    source = reference("hermes-tools.jinja")
    out = jinja(source).render(WITH_TOOLS, tools=TOOLS)
    assert '{ "arguments": {"city": "Zürich", "unit": "celsius"}, "name": "get_weather"}' in out
    assert '{"name": "get_weather", "content": "18°C, sunny"}' in out
    assert "city(str): City name, e.g. Zürich" in out
    assert "unit: Union[str,int]" in out
    mistral = jinja(reference("mistral-tools.jinja")).render(WITH_TOOLS, tools=TOOLS)
    assert "[AVAILABLE_TOOLS][{'type': 'function'" in mistral
    assert '[TOOL_RESULTS]{"temp": 12, "sky": "rain"}[/TOOL_RESULTS]' in mistral


def test_published_vicuna_does_not_compile(tmp_path: Path) -> None:
    path = REFERENCE / "vicuna.jinja"
    if not path.is_file():
        pytest.skip(f"published chat templates not found at {REFERENCE}")
    source = path.read_text(encoding="utf-8")
    with pytest.raises(Exception, match="expected token 'end of statement block'"):
        hf_render(source, NO_SYSTEM, gen=True, **TOKENS)
    # convo fails when the template is loaded, saying where.
    with pytest.raises(TemplateError, match="'vicuna.jinja' has a syntax error at line 5"):
        JinjaChatTemplate(source, name="vicuna.jinja")
    with pytest.raises(TemplateError, match="syntax error at line 5"):
        get_template(str(path))


def test_vicuna_raises_where_transformers_raises() -> None:
    source = reference("vicuna.jinja")
    bad = [Message.system("s"), Message.user("one"), Message.user("two")]
    with pytest.raises(Exception, match="Conversation roles must alternate"):
        hf_render(source, bad, gen=True, **TOKENS)
    with pytest.raises(TemplateError, match="Conversation roles must alternate") as info:
        jinja(source, "vicuna").render(bad)
    assert "'vicuna'" in str(info.value)


def test_developer_role_and_text_parts_are_what_templates_expect() -> None:
    source = reference("chatml.jinja")
    messages = [
        Message.developer("Be brief."),
        Message.user([{"type": "text", "text": "Part one."}, {"type": "text", "text": "Two."}]),  # type: ignore[list-item]
    ]
    out = JinjaChatTemplate(source).render(messages)
    assert out == hf_render(source, messages, gen=True)
    assert out.startswith(
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nPart one.\nTwo."
    )


# --- built-ins == the models' published templates ------------------------------------

BUILTIN_VS_PUBLISHED = [
    ("llama3", META_LLAMA3, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
    ("llama2", META_LLAMA2, {"bos_token": "<s>", "eos_token": "</s>"}),
    ("mistral", MISTRAL_V02, {"bos_token": "<s>", "eos_token": "</s>"}),
    ("chatml", QWEN25, {"eos_token": "<|im_end|>"}),
]


@pytest.mark.parametrize("gen", [True, False], ids=["gen", "nogen"])
@pytest.mark.parametrize(("builtin", "source", "tokens"), BUILTIN_VS_PUBLISHED)
def test_builtin_matches_published_template(
    builtin: str, source: str, tokens: dict[str, str], gen: bool
) -> None:
    template = get_template(builtin)
    assert (template.bos_token, template.eos_token) == (
        tokens.get("bos_token", ""),
        tokens.get("eos_token", ""),
    )
    conversations = [PLAIN] if builtin == "chatml" else [PLAIN, NO_SYSTEM]
    for messages in conversations:
        expected = hf_render(source, messages, gen=gen, **tokens)
        assert template.render(messages, add_generation_prompt=gen) == expected


@pytest.mark.parametrize("gen", [True, False], ids=["gen", "nogen"])
def test_builtin_chatml_tool_traffic_matches_qwen(gen: bool) -> None:
    expected = hf_render(QWEN25, WITH_TOOLS, gen=gen, tools=TOOLS)
    assert get_template("chatml").render(WITH_TOOLS, add_generation_prompt=gen, tools=TOOLS) == (
        expected
    )
    # Without tool definitions Qwen still writes calls and responses the same way.
    expected = hf_render(QWEN25, WITH_TOOLS, gen=gen)
    assert get_template("chatml").render(WITH_TOOLS, add_generation_prompt=gen) == expected


@pytest.mark.parametrize("conv", ["plain", "no_system"])
def test_builtin_chatml_matches_published_chatml_with_generation_prompt(conv: str) -> None:
    # vLLM's chatml.jinja leaves the last turn open when add_generation_prompt
    # is false (to continue it); the built-in closes every turn, as Qwen does.
    source = reference("chatml.jinja")
    messages = CONVERSATIONS[conv]
    assert get_template("chatml").render(messages) == hf_render(source, messages, gen=True)


# --- tokenizer_config.json, loaded by transformers itself -----------------------------


def _write_model_dir(tmp_path: Path, config: dict[str, Any]) -> Path:
    tokenizers = pytest.importorskip("tokenizers", reason="tokenizers is not installed")
    from tokenizers.models import WordLevel

    tok = tokenizers.Tokenizer(
        WordLevel(vocab={"[UNK]": 0, "<s>": 1, "</s>": 2}, unk_token="[UNK]")
    )
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize("gen", [True, False], ids=["gen", "nogen"])
def test_tokenizer_config_matches_apply_chat_template(tmp_path: Path, gen: bool) -> None:
    from transformers import AutoTokenizer

    hermes = reference("hermes-tools.jinja")
    vicuna = reference("vicuna.jinja")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": False,
                      "normalized": False, "rstrip": False, "single_word": False},
        "eos_token": "</s>",
        "unk_token": "[UNK]",
        "chat_template": [
            {"name": "default", "template": vicuna},
            {"name": "tool_use", "template": hermes},
        ],
    }  # fmt: skip
    model_dir = _write_model_dir(tmp_path, config)
    hf = AutoTokenizer.from_pretrained(str(model_dir))
    dicts = template_messages(PLAIN)
    for path in (model_dir, model_dir / "tokenizer_config.json"):
        ours = get_template(str(path))
        assert isinstance(ours, JinjaChatTemplate)
        assert (ours.bos_token, ours.eos_token, ours.stop) == ("<s>", "</s>", ("</s>",))
        expected = hf.apply_chat_template(
            copy.deepcopy(dicts), tokenize=False, add_generation_prompt=gen
        )
        assert "<s>You are a concise assistant." in expected
        assert ours.render(PLAIN, add_generation_prompt=gen) == expected
        # With tools, transformers switches to the "tool_use" template; so does convo.
        expected = hf.apply_chat_template(
            copy.deepcopy(template_messages(WITH_TOOLS)),
            tools=TOOLS,  # type: ignore[arg-type]
            tokenize=False,
            add_generation_prompt=gen,
        )
        assert "<tool_call>" in expected
        assert ours.render(WITH_TOOLS, add_generation_prompt=gen, tools=TOOLS) == expected


def test_tokenizer_config_with_single_template_and_special_tokens(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    source = "{{ bos_token }}{% for m in messages %}{{ m.role }}={{ m.content }}{{ unk_token }}{% endfor %}{{ eos_token }}"
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": {"__type": "AddedToken", "content": "</s>", "special": True},
        "unk_token": "[UNK]",
        "chat_template": source,
    }
    model_dir = _write_model_dir(tmp_path, config)
    hf = AutoTokenizer.from_pretrained(str(model_dir))
    expected = hf.apply_chat_template(template_messages(NO_SYSTEM), tokenize=False)
    ours = JinjaChatTemplate.from_tokenizer_config(model_dir / "tokenizer_config.json")
    assert ours.render(NO_SYSTEM, add_generation_prompt=False) == expected
    assert "[UNK]" in expected


# --- the published templates with their tokenizers' special tokens (more/) ---------------

MORE = sorted(p.name for p in (REFERENCE / "more").glob("*.jinja")) if REFERENCE.is_dir() else []

REASONING = [
    Message.user("What is 2+2?"),
    Message.assistant("<think>\nAdd them.\n</think>\n\nIt is 4."),
    Message.user("And 3+3?"),
    Message.assistant("<think>\nAgain.\n</think>\n\n6."),
    Message.user("Thanks"),
]


class _FrozenClock(_dt.datetime):
    """``datetime`` whose ``now()`` never moves: templates that print the date
    (``strftime_now``) render the same text in both renderers even when the
    two renders straddle a second."""

    @classmethod
    def now(cls, tz: Any = None) -> Any:  # type: ignore[override]
        return _dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=tz)


@pytest.fixture(autouse=True)
def _frozen_strftime_now(monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers.utils.chat_template_utils as hf_utils

    import convo._render.jinja_env as ours

    monkeypatch.setattr(ours, "datetime", _FrozenClock)
    monkeypatch.setattr(hf_utils, "datetime", _FrozenClock)


def _more(name: str) -> tuple[str, JinjaChatTemplate, dict[str, str]]:
    source = (REFERENCE / "more" / name).read_text(encoding="utf-8")
    meta = json.loads((REFERENCE / "more" / name).with_suffix(".json").read_text(encoding="utf-8"))
    tokens = {k: meta[k] for k in ("bos_token", "eos_token") if meta.get(k)}
    specials = (meta.get("special_tokens") or []) + (meta.get("added_tokens_not_special") or [])
    return source, JinjaChatTemplate(source, name=name, special_tokens=specials, **tokens), tokens


def test_more_templates_are_all_here() -> None:
    # CI runs with ../shared beside the checkout: the list below must not be empty
    assert len(MORE) == 14, REFERENCE



@pytest.mark.parametrize("conv", ["plain", "no_system", "with_tools", "reasoning"])
@pytest.mark.parametrize("name", MORE)
def test_published_template_with_special_tokens_matches_transformers(name: str, conv: str) -> None:
    """Neutralization leaves text without control strings as transformers renders it.

    The reasoning conversation holds ``<think>…</think>`` in assistant text:
    templates that read it (QwQ, GLM-4.5) must drop past reasoning as they do
    in transformers, although ``<think>`` is one of their control strings;
    templates that write it as is get it broken by zero-width spaces, and
    nothing else changes.
    """
    source, template, tokens = _more(name)
    messages = {**CONVERSATIONS, "reasoning": REASONING}[conv]
    tools = TOOLS if conv == "with_tools" else None
    try:
        expected = hf_render(source, messages, gen=True, tools=tools, **tokens)
    except Exception as hf_error:  # noqa: BLE001 - whatever transformers raises, convo must raise
        with pytest.raises(TemplateError) as ours:
            template.render(messages, tools=tools)
        assert str(hf_error) in str(ours.value) or type(hf_error).__name__ in str(ours.value)
        return
    ours = template.render(messages, tools=tools)
    if conv == "reasoning" and name not in ("qwq-32b.jinja", "glm-4.5.jinja"):
        assert ours.replace("\u200b", "") == expected
        assert (ours != expected) == ("<think>" in template.markers)
    else:
        assert ours == expected


def test_reasoning_is_left_to_the_template_only_when_it_consumes_it() -> None:
    _, qwq, _ = _more("qwq-32b.jinja")
    out = qwq.render(REASONING)
    assert "Add them." not in out and "It is 4." in out  # dropped, as the template wants
    # a template that reads "</think>" but writes the text anyway gets it neutralized
    echo = JinjaChatTemplate(
        "{% for m in messages %}<|im_start|>{{ m.role }}\n"
        "{% if '</think>' in m.content %}{{ m.content }}{% else %}{{ m.content }}{% endif %}"
        "<|im_end|>\n{% endfor %}<|im_start|>assistant\n<think>\n",
        special_tokens=["</think>"],
    )
    out = echo.render(REASONING)
    assert out.count("<think>") == 1 and out.count("</think>") == 0
    assert "Add them." in out


def test_templates_that_print_the_date_see_the_frozen_clock() -> None:
    # Hunyuan prints strftime_now(...) with tools: both renderers must read the
    # fixture's clock, or the comparison above flakes when a second ticks between them
    source, template, tokens = _more("hunyuan-a13b-instruct.jinja")
    ours = template.render(CONVERSATIONS["with_tools"], tools=TOOLS)
    theirs = hf_render(source, CONVERSATIONS["with_tools"], gen=True, tools=TOOLS, **tokens)
    assert "2026-01-02 03:04:05" in ours
    assert "2026-01-02 03:04:05" in theirs
