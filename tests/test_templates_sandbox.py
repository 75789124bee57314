"""Jinja chat templates are untrusted code: bounded in time and size; media parts refused."""

from __future__ import annotations

from typing import Any

import pytest

from convo import (
    BUILTIN_TEMPLATES,
    ImagePart,
    ImageURL,
    InputAudio,
    InputAudioPart,
    JinjaChatTemplate,
    Message,
    TemplateError,
    TextPart,
    get_template,
)

HI = [Message.user("hi")]

# --- time -------------------------------------------------------------------------------

SLOW = {
    "nested ranges": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "nested lists": (
        "{% set xs = range(100000)|list %}{% for a in xs %}{% for b in xs %}{% endfor %}{% endfor %}"
    ),
    "shadowed guard": (
        "{% set convo_guard_iter = none %}"
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    ),
    "recursion": (
        "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}"
    ),
    "output into a macro": (
        "{% macro m() %}{% for i in range(100000) %}{% for j in range(100000) %}"
        "x{% endfor %}{% endfor %}{% endmacro %}{{ m()|length }}"
    ),
}


@pytest.mark.parametrize("source", SLOW.values(), ids=SLOW.keys())
def test_a_render_has_a_time_limit(source: str) -> None:
    # 10^10 iterations: without the limit this runs for hours
    with pytest.raises(TemplateError, match=r"longer than 0\.5 s \(the render_timeout limit\)"):
        JinjaChatTemplate(source, name="slow", render_timeout=0.5).render(HI)


def test_probing_a_template_takes_2_s_at_most_whatever_its_render_timeout() -> None:
    # A template slow on a few placeholder messages is broken or hostile: its first
    # use fails after 2 s, not after the minute it may take on a real conversation.
    template = JinjaChatTemplate(SLOW["nested ranges"], name="slow", render_timeout=60)
    with pytest.raises(TemplateError) as err:
        template.render(HI)
    assert str(err.value) == (
        "chat template 'slow' went past its limits rendering a short placeholder "
        "conversation: rendering took longer than 2 s (the render_timeout limit)"
    )


def test_the_time_limit_applies_to_real_conversations_too() -> None:
    # fast on the few placeholder messages convo probes with, slow on many messages
    source = (
        "{% for m in messages %}{% for i in range([messages|length ** 3, 100000]|min) %}"
        "{% endfor %}{{ m.content }}{% endfor %}"
    )
    template = JinjaChatTemplate(source, name="per-message", render_timeout=1.0)
    assert template.render(HI) == "hi"
    many = [Message.user(str(k)) for k in range(2000)]
    with pytest.raises(TemplateError, match=r"'per-message' failed at line 1: .*render_timeout"):
        template.render(many)


# --- size -------------------------------------------------------------------------------

BIG = {
    "repeat": "{{ 'x' * 300000000 }}",
    "repeat a variable": "{% set n = 300000000 %}{{ 'x' * n }}",
    "repeat a list": "{% for x in [1] * 10000000000 %}{% endfor %}",
    "center": "{{ 'x' | center(300000000) }}",
    "ljust": "{{ 'x'.ljust(300000000) }}",
    "printf width": "{{ '%300000000d' % 1 }}",
    "format width": "{{ '{:300000000}'.format(1) }}",
    "power": "{{ 2 ** 1000000000 }}",
    "replace": "{% set s = 'a' * 1000000 %}{{ s.replace('a', s) }}",
    "join method": "{% set s = 'a' * 1000000 %}{{ s.join(range(10000)) }}",
    "join filter": "{% set s = 'a' * 1000000 %}{{ range(10000)|join(s) }}",
    "indent": "{% set s = 'a\\n' * 1000000 %}{{ s | indent(1000) }}",
    "doubling": (
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
        "{% endfor %}{{ ns.s|length }}"
    ),
    "output": "{% for i in range(100000) %}{% for j in range(1000) %}xxxxxxxxxxxxxxxxxxxx{% endfor %}{% endfor %}",
}


@pytest.mark.parametrize("source", BIG.values(), ids=BIG.keys())
def test_a_render_has_a_size_limit(source: str) -> None:
    with pytest.raises(TemplateError, match=r"max_prompt_chars|too large"):
        JinjaChatTemplate(source, name="big", max_prompt_chars=10_000_000).render(HI)


def test_limits_are_configurable_and_documented_defaults_hold_normal_prompts() -> None:
    source = "{% for m in messages %}{{ m.content }}{% endfor %}"
    long = [Message.user("y" * 2_000_000)]
    assert len(JinjaChatTemplate(source).render(long)) == 2_000_000  # default: 16M characters
    with pytest.raises(TemplateError, match="the prompt would hold 2,000,000 characters"):
        JinjaChatTemplate(source, max_prompt_chars=1_000_000).render(long)
    unbounded = JinjaChatTemplate(
        "{{ 'x' * 20000000 }}", max_prompt_chars=None, render_timeout=None
    )
    assert len(unbounded.render(HI)) == 20_000_000
    for bad in ({"render_timeout": 0}, {"render_timeout": -1.0}, {"max_prompt_chars": 0},
                {"max_prompt_chars": 1.5}, {"render_timeout": True}):  # fmt: skip
        with pytest.raises(TemplateError, match="render_timeout|max_prompt_chars"):
            JinjaChatTemplate(source, **bad)
    with pytest.raises(TemplateError) as err:
        JinjaChatTemplate(source, name="t", render_timeout=0)
    assert str(err.value) == "chat template 't': render_timeout must be a positive number of seconds or None"
    with pytest.raises(TemplateError) as err:
        JinjaChatTemplate(source, name="t", max_prompt_chars=0)
    assert str(err.value) == "chat template 't': max_prompt_chars must be a positive integer or None"
    assert JinjaChatTemplate(source, max_prompt_chars=1).limits.max_chars == 1  # the smallest


def test_a_prompt_over_the_limit_names_no_template_line() -> None:
    # The template ran to its end: the size check on its output has no template frame
    # on its traceback, so the error names no line (one raised inside does: " at line N").
    source = "{% for m in messages %}{{ m.content }}\n{% endfor %}"
    tpl = JinjaChatTemplate(source, name="t", max_prompt_chars=1000)
    with pytest.raises(TemplateError) as err:
        tpl.render([Message.user("y" * 600), Message.user("z" * 600)])
    assert str(err.value) == (
        "chat template 't' failed: the prompt would hold 1,201 characters (or items), "
        "over the max_prompt_chars limit of 1,000"
    )


def test_loops_behave_as_before_under_the_guard() -> None:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    source = (
        "{% for m in messages %}{{ loop.index }}/{{ loop.length }}{{ '.' if loop.last }}{% endfor %}"
        "{% for x in [] %}never{% else %}|empty|{% endfor %}"
        "{% for k, v in {'a': 1}.items() %}{{ k }}={{ v }}{% endfor %}"
        "{% for n in [[1, [2]], [3]] recursive %}[{% if n is iterable %}{{ loop(n) }}{% else %}{{ n }}"
        "{% endif %}]{% endfor %}"
    )
    out = JinjaChatTemplate(source).render([Message.user("a"), Message.user("b")])
    plain = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    expected = plain.from_string(source).render(messages=[{"content": "a"}, {"content": "b"}])
    assert out == expected
    assert out.startswith("1/22/2.|empty|a=1[")


# --- media parts ------------------------------------------------------------------------

MEDIA_AWARE = (
    "{% for m in messages %}{% if m.content is string %}{{ m.content }}{% else %}"
    "{% for p in m.content %}{% if p.type == 'text' %}{{ p.text }}"
    "{% elif p.type == 'image_url' %}<|image|>{% elif p.type == 'input_audio' %}<|audio|>"
    "{% endif %}{% endfor %}{% endif %}{% endfor %}"
)
IGNORING = "{% for m in messages %}{{ m.content if m.content is string else '' }}{% endfor %}"

IMAGE = ImagePart(image_url=ImageURL(url="https://x/y.png"))
AUDIO = InputAudioPart(input_audio=InputAudio(data="UklGRg==", format="wav"))


@pytest.mark.parametrize("part", [IMAGE, AUDIO], ids=["image", "audio"])
@pytest.mark.parametrize("source", [MEDIA_AWARE, IGNORING], ids=["media tokens", "dropped"])
def test_media_parts_raise_in_jinja_templates_as_in_builtins(source: str, part: Any) -> None:
    # before: a media token with no media behind it, or the part silently dropped
    message = Message.user([TextPart(text="What is this?"), part])
    with pytest.raises(TemplateError) as jinja_error:
        JinjaChatTemplate(source, name="mine").render([message])
    with pytest.raises(TemplateError) as builtin_error:
        get_template("chatml").render([message])
    kind = part.type
    assert str(jinja_error.value) == (
        f"template 'mine' cannot put {kind} content parts into a text prompt (user message); "
        "use the chat endpoint for media"
    )
    assert str(builtin_error.value) == str(jinja_error.value).replace("'mine'", "'chatml'")
    for builtin in BUILTIN_TEMPLATES.values():
        with pytest.raises(TemplateError, match=f"cannot put {kind} content parts"):
            builtin.render([message])
