"""OpenAI's chat format in full, and preference pairs: every shape accepted, every rule broken once.

Each bad line sits at line 3 of a file whose other lines are valid, so the test
shows the exact line number as well as the reason.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from finetune_api.files.check import FORMATS, check_chunks, describe, example_text

USER = {"role": "user", "content": "What is the weather in Paris?"}
ANSWER = {"role": "assistant", "content": "Sunny, 21 °C."}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
CALLER = {"role": "assistant", "content": None, "tool_calls": [CALL]}
RESULT = {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "sunny"}'}
TOOL_CHAT = {"messages": [USER, CALLER, RESULT, ANSWER], "tools": TOOLS}
PLAIN = {"messages": [USER, ANSWER]}
PAIR = {
    "input": {"messages": [USER]},
    "preferred_output": [ANSWER],
    "non_preferred_output": [{"role": "assistant", "content": "I do not know."}],
}


def line(value: Any) -> bytes:
    return json.dumps(value).encode() + b"\n"


def check(*lines: bytes) -> Any:
    data = b"".join(lines)
    return check_chunks([data[i : i + 5] for i in range(0, len(data), 5)])


def chat(*messages: Any, **extra: Any) -> dict[str, Any]:
    return {"messages": list(messages), **extra}


VALID_CHATS = {
    "tool call, tool answer, final answer": TOOL_CHAT,
    "tool call with content absent, parallel calls": chat(
        USER,
        {
            "role": "assistant",
            "tool_calls": [CALL, {**CALL, "id": "call_2"}],
        },
        RESULT,
        {**RESULT, "tool_call_id": "call_2"},
        ANSWER,
        tools=TOOLS,
        parallel_tool_calls=True,
    ),
    "tool call without tools on the line": chat(USER, CALLER, RESULT, ANSWER),
    "tool call with empty content, arguments an object": chat(
        USER,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{**CALL, "function": {"name": "f", "arguments": '{"a": [1]}'}}],
        },
    ),
    "developer and name": chat(
        {"role": "developer", "content": "Answer briefly."},
        {**USER, "name": "ana"},
        {**ANSWER, "name": "bot"},
    ),
    "text parts": chat(
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": ""}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
    ),
    "weights": chat(USER, {**ANSWER, "weight": 0}, USER, {**ANSWER, "weight": 1}),
    "nulls count as absent": chat(
        {**USER, "name": None, "weight": None, "tool_calls": None, "tool_call_id": None},
        {**ANSWER, "weight": None},
        tools=None,
        parallel_tool_calls=None,
    ),
    "only tool calls carry the lesson": chat(USER, CALLER),
    "unknown keys are ignored": chat({**USER, "refusal": None}, ANSWER, metadata={"id": 7}),
}


@pytest.mark.parametrize("value", VALID_CHATS.values(), ids=list(VALID_CHATS))
def test_every_chat_shape_of_openais_format_is_valid(value: dict[str, Any]) -> None:
    result = check(line(PLAIN), line(value), line(value))
    assert result.validation() == {
        "format": "chat",
        "examples": 3,
        "invalid_examples": 0,
        "errors": [],
    }


def test_preference_pairs_are_their_own_format() -> None:
    assert FORMATS == ("chat", "text", "prompt_completion", "preference")
    with_tools = {
        "input": {"messages": [USER, CALLER, RESULT], "tools": TOOLS, "parallel_tool_calls": False},
        "preferred_output": [ANSWER],
        "non_preferred_output": [
            {"role": "assistant", "tool_calls": [{**CALL, "id": "call_9"}], "content": None}
        ],
    }
    result = check(line(PAIR), line(with_tools), line(PLAIN))
    assert result.format == "preference" and result.examples == 2
    assert result.errors == [{"line": 3, "reason": "a chat example in a preference file"}]


def _broken(message_index: int, **changes: Any) -> dict[str, Any]:
    messages = [dict(m) for m in TOOL_CHAT["messages"]]
    messages[message_index].update(changes)
    return {**TOOL_CHAT, "messages": messages}


def _call(**function: Any) -> dict[str, Any]:
    return _broken(1, tool_calls=[{**CALL, "function": {**CALL["function"], **function}}])


BAD_CHATS: list[tuple[str, Any, str]] = [
    (
        "image part",
        chat({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}),
        "messages[0].content[0] is a part of type 'image_url': only \"text\" parts are accepted",
    ),
    (
        "part without text",
        chat({"role": "user", "content": [{"type": "text"}]}, ANSWER),
        "messages[0].content[0].text must be a string",
    ),
    (
        "blank parts",
        chat({"role": "user", "content": [{"type": "text", "text": " "}]}, ANSWER),
        "messages[0].content is empty",
    ),
    (
        "empty part list",
        chat({"role": "user", "content": []}, ANSWER),
        "messages[0].content is an empty list",
    ),
    (
        "tool_call_id naming no earlier call",
        _broken(2, tool_call_id="call_7"),
        "messages[2].tool_call_id 'call_7' names no tool call made earlier in this example",
    ),
    (
        "tool answer before the call",
        chat(USER, RESULT, CALLER, ANSWER),
        "messages[1].tool_call_id 'call_1' names no tool call made earlier in this example",
    ),
    (
        "tool message without tool_call_id",
        _broken(2, tool_call_id=None),
        "messages[2].tool_call_id must name the call this tool message answers",
    ),
    (
        "arguments not JSON",
        _call(arguments="{city: Paris}"),
        "messages[1].tool_calls[0].function.arguments is not a JSON object string",
    ),
    (
        "arguments a JSON array",
        _call(arguments="[1]"),
        "messages[1].tool_calls[0].function.arguments is not a JSON object string",
    ),
    (
        "arguments an object, not a string",
        _call(arguments={"city": "Paris"}),
        "messages[1].tool_calls[0].function.arguments is not a JSON object string",
    ),
    (
        "arguments with a key twice",
        _call(arguments='{"a": 1, "a": 2}'),
        "messages[1].tool_calls[0].function.arguments is not a JSON object string",
    ),
    (
        "a function not in tools",
        _call(name="get_time"),
        "messages[1].tool_calls[0].function.name 'get_time' is not one of the line's tools",
    ),
    (
        "a call without id",
        _broken(1, tool_calls=[{"type": "function", "function": CALL["function"]}]),
        "messages[1].tool_calls[0].id must be a non-empty string",
    ),
    (
        "a call id used twice",
        _broken(1, tool_calls=[CALL, CALL]),
        "messages[1].tool_calls[1].id 'call_1' is the id of an earlier call too",
    ),
    (
        "a call of another type",
        _broken(1, tool_calls=[{**CALL, "type": "code"}]),
        'messages[1].tool_calls[0].type must be "function"',
    ),
    ("tool_calls not a list", _broken(1, tool_calls={}), "messages[1].tool_calls must be a list"),
    (
        "tool_calls on a user message",
        chat({**USER, "tool_calls": [CALL]}, ANSWER),
        "messages[0].tool_calls is only allowed on assistant messages",
    ),
    (
        "content null without tool calls",
        chat(USER, {"role": "assistant", "content": None}),
        "messages[1].content is missing (only an assistant message with tool_calls may leave "
        "it out)",
    ),
    (
        "content null on a user message",
        chat({"role": "user"}, ANSWER),
        "messages[0].content is missing (only an assistant message with tool_calls may leave "
        "it out)",
    ),
    (
        "content a number",
        chat({"role": "user", "content": 3}, ANSWER),
        "messages[0].content must be a string or a list of text parts",
    ),
    ("weight 2", chat(USER, {**ANSWER, "weight": 2}), "messages[1].weight must be 0 or 1, not 2"),
    (
        "weight true",
        chat(USER, {**ANSWER, "weight": True}),
        "messages[1].weight must be 0 or 1, not true",
    ),
    (
        "weight 1.0",
        chat(USER, {**ANSWER, "weight": 1.0}),
        "messages[1].weight must be 0 or 1, not 1.0",
    ),
    (
        "weight on a user message",
        chat({**USER, "weight": 1}, ANSWER),
        "messages[0].weight is only allowed on assistant messages",
    ),
    (
        "no weight-1 assistant message",
        chat(USER, {**ANSWER, "weight": 0}),
        "every assistant message has weight 0: nothing to learn from",
    ),
    ("no assistant message", chat(USER), "no assistant message: nothing to learn from"),
    (
        "a role OpenAI does not have",
        chat({"role": "function", "content": "x"}, ANSWER),
        "messages[0].role must be system, developer, user, assistant or tool",
    ),
    ("name not a string", chat({**USER, "name": 7}, ANSWER), "messages[0].name must be a string"),
    ("tools not a list", {**PLAIN, "tools": {}}, "tools must be a list"),
    (
        "a tool of another type",
        {**PLAIN, "tools": [{**TOOLS[0], "type": "retrieval"}]},
        'tools[0].type must be "function"',
    ),
    (
        "a tool without name",
        {**PLAIN, "tools": [{"type": "function", "function": {"description": "x"}}]},
        "tools[0].function.name must be a non-empty string",
    ),
    (
        "a tool defined twice",
        {**PLAIN, "tools": TOOLS * 2},
        "tools[1].function.name 'get_weather' is defined twice",
    ),
    (
        "parameters not an object",
        {**PLAIN, "tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]},
        "tools[0].function.parameters must be a JSON Schema object",
    ),
    (
        "parallel_tool_calls not a boolean",
        {**PLAIN, "parallel_tool_calls": "yes"},
        "parallel_tool_calls must be true or false",
    ),
]


@pytest.mark.parametrize(
    ("value", "reason"), [c[1:] for c in BAD_CHATS], ids=[c[0] for c in BAD_CHATS]
)
def test_each_chat_rule_broken_is_a_line_error_with_its_line(value: Any, reason: str) -> None:
    result = check(line(PLAIN), line(TOOL_CHAT), line(value), line(PLAIN))
    assert result.validation() == {
        "format": "chat",
        "examples": 3,
        "invalid_examples": 1,
        "errors": [{"line": 3, "reason": reason}],
    }
    assert not result.ok


BAD_PAIRS: list[tuple[str, Any, str]] = [
    (
        "two preferred messages",
        {**PAIR, "preferred_output": [ANSWER, ANSWER]},
        "'preferred_output' must be a list of exactly one assistant message (2 messages)",
    ),
    (
        "no rejected answer",
        {k: v for k, v in PAIR.items() if k != "non_preferred_output"},
        "'non_preferred_output' must be a list of exactly one assistant message (no list)",
    ),
    (
        "input ending with an assistant message",
        {**PAIR, "input": {"messages": [USER, ANSWER]}},
        "input.messages ends with an assistant message: it must end with a user or tool "
        "message (the outputs answer it)",
    ),
    (
        "a user message as output",
        {**PAIR, "preferred_output": [USER]},
        "preferred_output[0].role must be assistant",
    ),
    (
        "an output calling an unknown tool",
        {
            **PAIR,
            "input": {"messages": [USER], "tools": TOOLS},
            "preferred_output": [
                {
                    "role": "assistant",
                    "tool_calls": [_call(name="x")["messages"][1]["tool_calls"][0]],
                }
            ],
        },
        "preferred_output[0].tool_calls[0].function.name 'x' is not one of the line's tools",
    ),
    (
        "input not an object",
        {**PAIR, "input": [USER]},
        "'input' must be an object holding 'messages'",
    ),
    ("input without messages", {**PAIR, "input": {}}, "input.messages must be a non-empty list"),
    (
        "an image in the input",
        {**PAIR, "input": {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}},
        "input.messages[0].content[0] is a part of type 'image_url': only \"text\" parts are "
        "accepted",
    ),
    (
        "a weight in a pair",
        {**PAIR, "preferred_output": [{**ANSWER, "weight": 1}]},
        "preferred_output[0].weight: weights are for chat lines, not preference pairs",
    ),
    ("a chat line", PLAIN, "a chat example in a preference file"),
]


@pytest.mark.parametrize(
    ("value", "reason"), [c[1:] for c in BAD_PAIRS], ids=[c[0] for c in BAD_PAIRS]
)
def test_each_preference_rule_broken_is_a_line_error(value: Any, reason: str) -> None:
    result = check(line(PAIR), line(PAIR), line(value))
    assert result.format == "preference" and result.examples == 2
    assert result.errors == [{"line": 3, "reason": reason}]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (
            b'{"messages": [{"role": "user", "content": "a", "content": "b"}]}',
            "the key 'content' appears twice in one object",
        ),
        (
            b'{"messages": [], "messages": [{"role": "assistant", "content": "a"}]}',
            "the key 'messages' appears twice in one object",
        ),
        (
            b'{"messages": [{"role": "assistant", "content": "a", "c\\u006fntent": "b"}]}',
            "the key 'content' appears twice in one object",
        ),
        (
            b'{"messages": [{"role": "assistant", "content": "\\ud800 lone"}]}',
            "a string holds a lone surrogate escape such as \\ud800 (half of a UTF-16 pair, "
            "no character): not valid Unicode",
        ),
        (
            b'{"messages": [{"role": "assistant", "content": "ok"}], "k\\udc00": 1}',
            "a string holds a lone surrogate escape such as \\ud800 (half of a UTF-16 pair, "
            "no character): not valid Unicode",
        ),
        (b'{"text": "a"} {"text": "b"}', "not valid JSON"),
        (b'{"text": "a"}, {"text": "b"}', "not valid JSON"),
    ],
)
def test_json_a_loader_could_read_two_ways_is_refused(data: bytes, reason: str) -> None:
    result = check(line(PLAIN), line(PLAIN), data + b"\n")
    assert result.errors[-1] == {"line": 3, "reason": reason}
    assert result.invalid_examples == 1


def test_a_surrogate_pair_is_one_character_and_valid() -> None:
    # json.dumps writes 😀 as the pair \ud83d\ude00: that is no lone surrogate.
    result = check(line(PLAIN), line(chat(USER, {"role": "assistant", "content": "ok 😀"})))
    assert result.ok and result.examples == 2


def test_errors_read_as_sentences() -> None:
    assert describe({"line": 4, "reason": "not valid JSON"}) == "line 4: not valid JSON"
    assert describe({"line": None, "reason": "the file is empty"}) == "the file is empty"
    empty = check_chunks([b""])
    assert [describe(error) for error in empty.errors] == ["the file is empty"]


def test_the_text_counted_holds_every_trained_part() -> None:
    text = example_text(TOOL_CHAT)
    assert "get_weather({})" in text and "Sunny" in text and '"sky"' in text
    assert '"description": "Current weather of a city"' in text  # the tools are rendered too
    pair = example_text(PAIR)
    assert "What is the weather" in pair and "Sunny" in pair and "I do not know." in pair
    parts = example_text(VALID_CHATS["text parts"])
    assert "user: Hi" in parts and "assistant: Hello" in parts


def test_every_example_line_in_the_docs_is_valid() -> None:
    """docs/own-data.md shows each accepted shape with an example line: each passes as shown."""
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "own-data.md").read_text("utf-8")
    section = page[page.index("## The check") : page.index("### JSON that a loader")]
    blocks = [block.split("```", 1)[0] for block in section.split("```json\n")[1:]]
    lines = [line for block in blocks for line in block.splitlines() if line.strip()]
    assert len(lines) == 6
    by_format: dict[str, int] = {}
    for text in lines:
        result = check(text.encode() + b"\n")
        assert result.ok, (text, result.errors)
        by_format[result.format] = by_format.get(result.format, 0) + 1
    assert by_format == {"chat": 3, "preference": 1, "text": 1, "prompt_completion": 1}
