"""Every file the service's check marks ``processed`` loads in the template, example for example.

A differential test over a corpus of hostile files: each is checked by
``finetune_api.files.check`` (fast path included: the files are small, so their
middle lines go through it), and each file the check passes is then loaded in
process by the template's own loader (``train.py``'s ``load_data_file``:
``datasets``' JSON builder, then the format's columns, then empty rows dropped).
The loader must give the same number of examples and, row by row, the lines the
check read. Files the check refuses are the ones a loader would read otherwise
(two rows from one line, one row from two lines, a key's first or last value,
a string that is no Unicode, nesting or numbers Arrow cannot hold, a carriage
return its fallback reader takes for a line end), and the test says which.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ft.config_io
import ft.data
import pytest

from finetune_api.files.check import check_chunks

USER = {"role": "user", "content": "What is the weather in Paris?"}
ANSWER = {"role": "assistant", "content": "Sunny."}
PLAIN = {"messages": [USER, ANSWER]}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}
TOOL_CHAT = {
    "messages": [
        USER,
        {"role": "assistant", "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ANSWER,
    ],
    "tools": TOOLS,
}
PAIR = {
    "input": {"messages": [USER]},
    "preferred_output": [ANSWER],
    "non_preferred_output": [{"role": "assistant", "content": "No idea."}],
}


def jsonl(*values: Any) -> bytes:
    return b"".join(json.dumps(value).encode() + b"\n" for value in values)


SPLIT_AND_DOUBLED = (
    jsonl(PLAIN)
    + b'{"messages": [{"role": "user", "content": "split"}\n'
    + b'{"role": "assistant", "content": "over two lines"}]}\n'
    + json.dumps(PLAIN).encode()
    + b", "
    + json.dumps(PLAIN).encode()
    + b"\n"
    + jsonl(PLAIN)
)

# name -> (bytes, whether the check passes it)
CORPUS: dict[str, tuple[bytes, bool]] = {
    "plain chats": (jsonl(PLAIN, PLAIN, PLAIN), True),
    "a value split over two lines and a line holding two values": (SPLIT_AND_DOUBLED, False),
    "two values on one line, space apart": (
        jsonl(PLAIN) + json.dumps(PLAIN).encode() + b" " + jsonl(PLAIN) + jsonl(PLAIN),
        False,
    ),
    "a lone surrogate": (
        jsonl(PLAIN)
        + b'{"text": "x", "messages": [{"role": "assistant", "content": "\\ud800"}]}\n',
        False,
    ),
    "a key given twice": (
        jsonl(PLAIN)
        + b'{"messages": [{"role": "assistant", "content": "a"}], '
        + b'"messages": [{"role": "user", "content": "b"}]}\n'
        + jsonl(PLAIN),
        False,
    ),
    "a key given twice, escaped once": (
        jsonl(PLAIN, PLAIN)
        + b'{"messages": [{"role": "user", "content": "a", "c\\u006fntent": "b"}, '
        + b'{"role": "assistant", "content": "c"}]}\n',
        False,
    ),
    "nesting Arrow cannot hold": (
        jsonl(PLAIN, PLAIN, {**PLAIN, "meta": json.loads("[" * 70 + "]" * 70)}),
        False,
    ),
    "nesting within the limit": (
        jsonl(PLAIN, {**PLAIN, "meta": json.loads("[" * 30 + "]" * 30)}, PLAIN),
        True,
    ),
    "an integer beyond 64 bits": (
        jsonl(PLAIN, {**PLAIN, "n": 1 << 70}, {**PLAIN, "n": "a string"}),
        False,
    ),
    "a number beyond a double": (
        jsonl(PLAIN) + json.dumps(PLAIN)[:-1].encode() + b', "x": 1e400}\n',
        False,
    ),
    "a carriage return between values": (
        jsonl(PLAIN, {"text": "x", "n": 1})
        + b'{"messages":\r[{"role": "assistant", "content": "a"}], "n": "s"}\n',
        False,
    ),
    "a form feed after the value": (jsonl(PLAIN) + json.dumps(PLAIN).encode() + b"\x0c\n", False),
    "a raw tab inside a string": (
        jsonl(PLAIN) + b'{"messages": [{"role": "assistant", "content": "a\tb"}]}\n',
        False,
    ),
    "a blank line": (jsonl(PLAIN) + b"\n" + jsonl(PLAIN), False),
    "BOM, CRLF, no final newline": (
        b"\xef\xbb\xbf" + jsonl(PLAIN, PLAIN).replace(b"\n", b"\r\n") + json.dumps(PLAIN).encode(),
        True,
    ),
    "odd but valid JSON": (
        jsonl(PLAIN)
        + b'\t{"messages": [{"role": "user", "content": "line\\u2028separator \xe2\x80\xa8"},'
        + b' {"role": "assistant", "content": "\\ud83d\\ude00 pair"}], "n": -9223372036854775808,'
        + b' "x": NaN, "": 1, "a.b": {"c": []}}  \n'
        + jsonl({**PLAIN, "n": "now a string", "x": {"y": 1}}),
        True,
    ),
    "tool calls, content absent, tool answers": (jsonl(PLAIN, TOOL_CHAT, TOOL_CHAT), True),
    "tool calls first, content null": (
        jsonl(
            {
                **TOOL_CHAT,
                "messages": [USER, {"role": "assistant", "content": None, "tool_calls": [CALL]}],
            },
            TOOL_CHAT,
            PLAIN,
        ),
        True,
    ),
    "tool calls first, content absent": (
        jsonl(TOOL_CHAT, PLAIN),
        True,
    ),
    "different tools and schemas on each line": (
        jsonl(
            PLAIN,
            TOOL_CHAT,
            {
                **PLAIN,
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "book",
                            "description": "Book a table",
                            "parameters": {
                                "type": "object",
                                "properties": {
                                    "when": {"type": "string", "format": "date-time"},
                                    "seats": {"type": "integer", "minimum": 1},
                                    "names": {"type": "array", "items": {"type": "string"}},
                                },
                                "required": ["when"],
                            },
                        },
                    }
                ],
                "parallel_tool_calls": True,
            },
            {**PLAIN, "tools": [{"type": "function", "function": {"name": "ping"}}]},
        ),
        True,
    ),
    "text parts beside strings, developer, names, weights": (
        jsonl(
            PLAIN,
            {
                "messages": [
                    {"role": "developer", "content": "Be brief.", "name": "ops"},
                    {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                    {**ANSWER, "weight": 0},
                    USER,
                    {**ANSWER, "weight": 1},
                ]
            },
            PLAIN,
        ),
        True,
    ),
    "an image part": (
        jsonl(PLAIN, {"messages": [{"role": "user", "content": [{"type": "image_url"}]}, ANSWER]}),
        False,
    ),
    "text": (jsonl({"text": "one"}, {"text": "two", "meta": 1}, {"text": "three"}), True),
    "prompt and completion, an empty prompt": (
        jsonl({"prompt": "Q", "completion": " A"}, {"prompt": "", "completion": "B"}),
        True,
    ),
    "text then a chat line": (jsonl({"text": "one"}, PLAIN), False),
    "preference pairs": (jsonl(PAIR, PAIR, PAIR), True),
}

COLUMNS = {
    "chat": ("messages",),
    "text": ("text",),
    "prompt_completion": ("prompt", "completion"),
    "preference": ("input", "preferred_output", "non_preferred_output"),
}


def _without_nulls(value: Any) -> Any:
    """What a row means: a loader fills absent keys with null, and null is absent to the check."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _lines(data: bytes) -> list[dict[str, Any]]:
    text = data.decode("utf-8-sig")
    return [json.loads(line) for line in text.split("\n") if line.strip()]


@pytest.mark.parametrize("name", list(CORPUS))
def test_a_file_the_check_passes_loads_in_the_template_with_the_same_examples(
    name: str, tmp_path: Path
) -> None:
    pytest.importorskip("datasets")
    data, passes = CORPUS[name]
    result = check_chunks([data])
    assert result.ok is passes, result.validation()
    if not passes:
        assert result.invalid_examples >= 1 and all(e["line"] for e in result.errors)
        return
    assert result.format in ft.config_io.FILE_FORMATS
    path = tmp_path / "data.jsonl"
    path.write_bytes(data)
    data_file = ft.config_io.DataFile(
        field="training_file",
        source="file-test",
        url="file:///unused",
        sha256=result.sha256,
        bytes=result.bytes,
        format=result.format,
        examples=result.examples,
    )
    dataset, _ = ft.data.load_data_file(data_file, path)
    assert len(dataset) == result.examples
    columns = COLUMNS[result.format]
    loaded = [_without_nulls({c: row[c] for c in columns}) for row in dataset]
    read = [_without_nulls({c: line[c] for c in columns}) for line in _lines(data)]
    assert loaded == read
