"""files/check.py's fast paths give the line-by-line verdicts.

Random files mixing valid examples with every kind of bad line (OpenAI's full
chat format, which only the line-by-line check accepts, and hostile JSON: keys
twice, lone surrogates, values split over lines or doubled on one), cut into
chunks of many sizes, are checked twice: as shipped, and with the fast paths
removed (every line through ``_check_line``: no msgspec decoders, no bulk count
of lines without ``{``). The two results must be identical: the examples, the
invalid ones, every error's line and reason, the sha256. Each odd line is also
checked alone in an otherwise clean 1 MiB window, where only the fast path's own
guards stand between it and a wrong "valid".
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from finetune_api.files import check as check_module
from finetune_api.files.check import JsonlCheck

ASSISTANT = {"role": "assistant", "content": "Here is how."}
CALL = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": 1}'}}
BAD_ARGS = {"name": "lookup", "arguments": "not json"}


def chat(*turns: Any) -> bytes:
    return json.dumps({"messages": list(turns)}).encode()


TOOL_LINE = json.dumps(
    {
        "messages": [
            {"role": "user", "content": "look it up"},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
            ASSISTANT,
        ],
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {}}}],
    }
).encode()


def good_chat(rng: random.Random) -> bytes:
    words = " ".join(rng.choice(["order", "refund", "reset", "ok", "é", "日本"]) for _ in range(9))
    return chat(
        {"role": "system", "content": "Be kind."}, {"role": "user", "content": words}, ASSISTANT
    )


# Lines that some check refuses (or, for a few, that only look suspicious).
ODD_CHAT_LINES: list[bytes] = [
    chat({"role": "user", "content": "   "}, ASSISTANT),  # blank content
    chat({"role": "user", "content": "\u3000\u00a0"}, ASSISTANT),  # Unicode blanks
    chat({"role": "user", "content": ""}, ASSISTANT),
    chat({"role": "user", "content": "no answer"}),
    b'{"messages": []}',
    chat({"role": "robot", "content": "hi"}, ASSISTANT),
    chat({"role": "user", "content": 3}, ASSISTANT),
    chat({"role": "user"}, ASSISTANT),
    b'{"messages": [{"role": "user", "content": "hi"}, "text"]}',
    b'{"text": "a text line in a chat file"}',
    b'{"messages": [{"role": "user", "content": "hi"}, '
    b'{"role": "assistant", "content": "yo"}], "text": "both keys: chat"}',
    b'{"messages": [{"role": "assistant", "content": "ok"}], "meta": "\xff\xfe"}',  # bad UTF-8
    b'{"messages": [{"role": "assistant", "content": "ok"}], "score": NaN}',  # json accepts NaN
    b'{"messages": [{"role": "assistant", "content": "\\ud800 lone"}]}',
    b'{"messages": [{"role": "assistant", "c\\u006fntent": "escaped key"}]}',
    b'{"messages": [{"role": "assistant", "content": "dup"}], "messages": []}',
    b'{"messages": [], "messages": [{"role": "assistant", "content": "dup"}]}',
    b'{"messages": [{"role": "assistant", "content": "a"}]}, {"text": "two values"}',
    b'{"messages": [{"role": "assistant", "content": "a"}]} {"x": 1}',
    b'[{"messages": [{"role": "assistant", "content": "array"}]}]',
    b"",
    b"   ",
    b"\r",
    b"not json",
    b"\xef\xbb\xbf" + chat(ASSISTANT),  # a BOM after line 1
    b'{"messages": [{"role": "assistant", "content": "ok"}], "deep": '
    + b"[" * 50
    + b"]" * 50
    + b"}",
    b'{"messages": [{"role": "assistant", "content": "tab\there"}]}',  # raw control character
    b"x" * 700,  # over-long with max_line_bytes 600
    chat({"role": "assistant", "content": "é" * 400}),  # 800 bytes: over-long too
    b"1",
    b"null",
    # What the fast path's closed shape refuses but the rules accept: OpenAI's full format.
    chat({"role": "developer", "content": "Be brief.", "name": "ops"}, ASSISTANT),
    chat({"role": "user", "content": [{"type": "text", "text": "parts"}]}, ASSISTANT),
    chat({"role": "user", "content": "hi"}, {**ASSISTANT, "weight": 0}, ASSISTANT),
    TOOL_LINE,
    chat({"role": "user", "content": "hi", "name": None}, ASSISTANT),
    b'{"messages": [{"role": "user", "content": "hi"}, '
    b'{"role": "assistant", "content": "yo"}], "id": 7}',
    # ... and what both refuse.
    chat({"role": "user", "content": [{"type": "image_url", "image_url": {}}]}, ASSISTANT),
    chat({"role": "user", "content": "hi"}, {**ASSISTANT, "weight": 2}),
    chat({"role": "user", "content": "hi", "weight": 1}, ASSISTANT),
    chat({"role": "user", "content": "hi"}, {**ASSISTANT, "weight": 0}),
    chat({"role": "tool", "tool_call_id": "nope", "content": "r"}, ASSISTANT),
    chat(
        {"role": "assistant", "content": None, "tool_calls": [{**CALL, "function": BAD_ARGS}]},
    ),
    b'{"messages": [{"role": "assistant", "content": "a"}], "tools": [], "parallel_tool_calls": 1}',
    # Duplicate keys in every spelling the key count must see.
    b'{"messages": [{"role": "assistant", "content": "a", "content" : "b"}]}',
    b'{"messages": [{"role": "assistant", "content": "a",\t"content"\t:"b"}]}',
    b'{"messages": [{"role": "assistant", "content": "a", "content"  :"b"}]}',
    b'{"messages": [{"role": "assistant", "content": "say \\"hi\\" : x", "content" \t: "b"}]}',
    b'{"messages": [{"role": "assistant", "content": "a\\\\", "content" : "b"}]}',
    b'{"messages": [{"role": "assistant", "content": "no dup \\" :"}]}',
    b'{"messages": [{"role": "assistant", "role": "user", "content": "a"}]}',
    b'{"messages": [{"role": "assistant", "content": "a", "name": "x", "name": "y"}]}',
    b'{"messages": [{"role": "assistant", "content": "a\\": \\"", "role": "user"}]}',
    # A value split over two lines next to a line holding two values: the counts match.
    b'{"messages": [{"role": "user", "content": "split"}\n'
    b'{"role": "assistant", "content": "over two lines"}]}\n'
    b'{"messages": [{"role": "assistant", "content": "one"}]},'
    b'{"messages": [{"role": "assistant", "content": "two"}]}',
    b'{"messages": [{"role": "assistant", "content": "a"}]}, '
    b'{"messages": [{"role": "assistant", "content": "b"}]}',
    b"\xef\xbb\xbf" + b'{"messages": [{"role": "assistant", "content": "x"}]}',
    b'{"messages": [{"role": "assistant", "content": "\\udc00"}]}',
    b'{"messages":\r[{"role": "assistant", "content": "a carriage return between values"}]}',
    b'{"messages": [{"role": "assistant", "content": "ok"}], "n": 9223372036854775808}',
    b'{"messages": [{"role": "assistant", "content": "ok"}], "x": 1e999}',
    b'{"messages": [{"role": "assistant", "content": "ok"}], "d": ' + b"[" * 40 + b"]" * 40 + b"}",
    b'{"messages": [{"role": "assistant", "content": "\\ud83d\\ude00 pair"}]}',
]


def chat_file(rng: random.Random, lines: int, odd_share: float) -> bytes:
    out = []
    for _ in range(lines):
        if rng.random() < odd_share:
            out.append(rng.choice(ODD_CHAT_LINES))
        else:
            out.append(good_chat(rng))
        out.append(b"\r\n" if rng.random() < 0.05 else b"\n")
    return b"".join(out)


def run(data: bytes, chunk: int, max_line: int, *, fast: bool, monkeypatch: Any) -> Any:
    with monkeypatch.context() as patch:
        if not fast:
            patch.setattr(check_module, "_FAST", {})
            patch.setattr(check_module, "_BULK_INVALID", False)
        check = JsonlCheck(max_line_bytes=max_line)
        for start in range(0, len(data), chunk):
            check.feed(data[start : start + chunk])
        return check.finish()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("chunk", [7, 8192, 1 << 20, 3 << 20])
def test_fast_path_agrees_with_the_line_by_line_check(
    seed: int, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(seed)
    # Mostly-valid files (whole runs take the fast path) and files full of bad lines.
    data = chat_file(rng, 6000 if chunk > 7 else 1500, odd_share=[0.0, 0.0003, 0.3][seed % 3])
    if seed % 2:
        data = good_chat(rng) + b"\n" + data  # the format decided at once
    max_line = 600
    fast = run(data, chunk, max_line, fast=True, monkeypatch=monkeypatch)
    slow = run(data, chunk, max_line, fast=False, monkeypatch=monkeypatch)
    assert fast == slow
    assert fast.examples > 0


@pytest.mark.parametrize("odd", ODD_CHAT_LINES)
def test_each_odd_line_alone_in_a_clean_window(odd: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(11)
    lines = [good_chat(rng) for _ in range(4000)]
    lines.insert(2500, odd)  # well inside the first 1 MiB window, the format known
    data = b"\n".join(lines) + b"\n"
    fast = run(data, 1 << 20, 600, fast=True, monkeypatch=monkeypatch)
    slow = run(data, 1 << 20, 600, fast=False, monkeypatch=monkeypatch)
    assert fast == slow
    assert fast.examples + fast.invalid_examples == data.count(b"\n")


def test_preference_files_agree_and_saturated_errors_count_in_bulk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pair = json.dumps(
        {
            "input": {"messages": [{"role": "user", "content": "q"}]},
            "preferred_output": [ASSISTANT],
            "non_preferred_output": [{"role": "assistant", "content": "no"}],
        }
    ).encode()
    rng = random.Random(13)
    odd = [b"1", b"", b"[]", b"nope", good_chat(rng), pair[:-1], pair + b" 1", b"{}"]
    rows = [pair] + [rng.choice(odd) if rng.random() < 0.4 else pair for _ in range(20000)]
    data = b"\n".join(rows)
    for chunk in (8192, 1 << 20):
        fast = run(data, chunk, 4096, fast=True, monkeypatch=monkeypatch)
        slow = run(data, chunk, 4096, fast=False, monkeypatch=monkeypatch)
        assert fast == slow
        assert fast.format == "preference" and fast.invalid_examples > 5000


@pytest.mark.parametrize(
    ("fmt_lines", "odd"),
    [
        (
            [b'{"text": "plain"}', b'{"text": "more", "meta": 1}'],
            [
                b'{"text": "   "}',
                b'{"text": ""}',
                b'{"text": 3}',
                b'{"text": "x", "messages": []}',
                b'{"text": "x", "prompt": "p", "completion": "c"}',
                b'{"prompt": "p", "completion": "c"}',
                b'{"text": "\\u2003"}',
            ],
        ),
        (
            [b'{"prompt": "p", "completion": "c"}', b'{"prompt": "", "completion": "c"}'],
            [
                b'{"prompt": "p", "completion": " "}',
                b'{"prompt": 1, "completion": "c"}',
                b'{"completion": "c"}',
                b'{"prompt": "p"}',
                b'{"prompt": "p", "completion": "c", "text": "t"}',
                b'{"prompt": "p", "completion": "c", "messages": "m"}',
                b'{"text": "t"}',
            ],
        ),
    ],
)
def test_fast_path_agrees_for_text_and_prompt_completion(
    fmt_lines: list[bytes], odd: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(7)
    rows = []
    for _ in range(5000):
        rows.append(rng.choice(odd) if rng.random() < 0.01 else rng.choice(fmt_lines))
    data = b"\n".join([fmt_lines[0], *rows]) + b"\n"
    for chunk in (8192, 1 << 20):
        fast = run(data, chunk, 4096, fast=True, monkeypatch=monkeypatch)
        slow = run(data, chunk, 4096, fast=False, monkeypatch=monkeypatch)
        assert fast == slow


def test_a_hook_sees_every_example_in_order() -> None:
    rng = random.Random(3)
    lines = [good_chat(rng) for _ in range(3000)]
    seen: list[Any] = []
    check = JsonlCheck(on_example=seen.append)
    check.feed(b"\n".join(lines))
    result = check.finish()
    assert result.examples == len(seen) == 3000
    assert seen == [json.loads(line) for line in lines]


def test_clean_runs_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(5)
    data = chat_file(rng, 20000, odd_share=0.0)  # ~4 MB, 5 % of lines end in CRLF
    calls = []
    line_by_line = JsonlCheck._check_line

    def counted(self: JsonlCheck, raw: bytes) -> None:
        calls.append(raw)
        line_by_line(self, raw)

    monkeypatch.setattr(JsonlCheck, "_check_line", counted)
    check = JsonlCheck(max_line_bytes=600)
    for start in range(0, len(data), 8192):
        check.feed(data[start : start + 8192])
    result = check.finish()
    assert result.examples == 20000 and result.invalid_examples == 0
    assert len(calls) <= 8  # the first line of each 1 MiB window; the rest at once
