"""files/check.py's fast path (lines decoded as one run) gives the line-by-line verdicts.

Random files mixing valid examples with every kind of bad line, cut into chunks
of many sizes, are checked twice: as shipped, and with the fast decoders removed
(every line through ``_check_line``). The two results must be identical: the
examples, the invalid ones, every error's line and reason, the sha256.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from finetune_api.files import check as check_module
from finetune_api.files.check import JsonlCheck

ASSISTANT = {"role": "assistant", "content": "Here is how."}


def chat(*turns: Any) -> bytes:
    return json.dumps({"messages": list(turns)}).encode()


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
