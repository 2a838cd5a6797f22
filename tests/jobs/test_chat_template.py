"""The dry run's check of a model's chat template against the tools the data holds."""

from __future__ import annotations

import time

from finetune_api.jobs.chat_template import (
    chat_template_of,
    special_tokens,
    template_problem,
    tool_needs,
)

ALL = {"tools", "tool_calls", "tool messages"}
RENDERS = (
    "{{ bos_token }}{% if tools %}{{ tools | tojson }}{% endif %}{% for m in messages %}"
    "{% generation %}{{ m.content or '' }}{% for c in m.tool_calls or [] %}"
    "{{ c.function.name }}({{ c.function.arguments }}){% endfor %}{% endgeneration %}"
    "{% endfor %}"
)


def test_what_a_line_needs() -> None:
    call = {"type": "function", "function": {"name": "f", "arguments": "{}"}}
    chat = {
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "1", "content": "y"},
        ],
    }
    assert tool_needs(chat) == ALL
    assert tool_needs({"messages": [{"role": "user", "content": "x"}]}) == set()
    pair = {
        "input": {"messages": chat["messages"]},
        "preferred_output": [],
        "non_preferred_output": [],
    }
    assert tool_needs(pair) == {"tool_calls", "tool messages"}
    assert tool_needs({"preferred_output": [{"role": "assistant", "tool_calls": [call]}]}) == {
        "tool_calls"
    }


def test_a_template_that_renders_everything_passes() -> None:
    assert template_problem(RENDERS, ALL, {"bos_token": "<s>"}) is None
    assert template_problem(None, set(), {}) is None  # nothing needed: nothing checked


def test_each_way_a_template_falls_short_is_said() -> None:
    assert "no chat template" in str(template_problem(None, {"tool_calls"}, {}))
    refusing = "{% if tools %}{{ raise_exception('tools are not supported') }}{% endif %}"
    assert "tools are not supported" in str(template_problem(refusing, {"tools"}, {}))
    assert "fails on the tools" in str(template_problem("{% if %}", {"tools"}, {}))
    quiet = "{% for m in messages %}{{ m.content }}{% endfor %}"
    assert "tool calls" in str(template_problem(quiet, {"tool_calls"}, {}))
    assert template_problem(quiet, {"tool messages"}, {}) is None


def test_a_hostile_template_is_abandoned_quickly() -> None:
    started = time.monotonic()
    endless = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"
    assert "did not finish" in str(template_problem(endless, {"tools"}, {}))
    assert time.monotonic() - started < 10


def test_which_template_and_tokens() -> None:
    named = [{"name": "default", "template": "D"}, {"name": "tool_use", "template": "T"}]
    assert chat_template_of({"chat_template": named}, None, tools=True) == "T"
    assert chat_template_of({"chat_template": named}, None, tools=False) == "D"
    assert chat_template_of({"chat_template": "C"}, "J", tools=False) == "J"
    assert chat_template_of({}, None, tools=True) is None
    config = {"bos_token": {"content": "<s>", "lstrip": False}, "eos_token": "</s>", "pad": 1}
    assert special_tokens(config) == {"bos_token": "<s>", "eos_token": "</s>"}
