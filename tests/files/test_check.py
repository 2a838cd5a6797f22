"""The streamed JSONL check: every rule, exact counts, bounded memory, any chunking."""

from __future__ import annotations

import gzip
import hashlib
import json
from typing import Any

import pytest

from finetune_api.files.check import MAX_ERRORS, check_chunks

CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def line(value: Any) -> bytes:
    return json.dumps(value).encode() + b"\n"


def check(data: bytes, chunk: int = 7, max_line_bytes: int = 4096) -> Any:
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)] or [b""]
    return check_chunks(pieces, max_line_bytes=max_line_bytes)


def reasons(result: Any) -> list[tuple[int | None, str]]:
    return [(e["line"], e["reason"]) for e in result.errors]


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 1 << 20])
def test_any_chunking_gives_the_same_exact_answer(chunk: int) -> None:
    data = line(CHAT) * 5 + b"not json\n" + line(CHAT) + b"\n" + line([1])
    result = check(data, chunk)
    assert result.validation() == {
        "format": "chat",
        "examples": 6,
        "invalid_examples": 3,
        "errors": [
            {"line": 6, "reason": "not valid JSON"},
            {"line": 8, "reason": "empty line"},
            {"line": 9, "reason": "a JSON array, not an object"},
        ],
    }
    assert result.bytes == len(data) and result.sha256 == hashlib.sha256(data).hexdigest()
    assert not result.ok


@pytest.mark.parametrize(
    ("value", "fmt"),
    [
        (CHAT, "chat"),
        ({"text": "a whole document"}, "text"),
        ({"prompt": "Q: 2+2?", "completion": " 4"}, "prompt_completion"),
        ({"prompt": "", "completion": "free text"}, "prompt_completion"),
    ],
)
def test_each_format_is_detected_and_valid(value: dict[str, Any], fmt: str) -> None:
    result = check(line(value) * 3)
    assert result.ok and result.format == fmt and result.examples == 3


def test_a_utf8_bom_is_accepted_and_hashed() -> None:
    data = b"\xef\xbb\xbf" + line(CHAT) + line(CHAT)
    result = check(data, chunk=2)
    assert result.ok and result.examples == 2
    assert result.sha256 == hashlib.sha256(data).hexdigest()


def test_crlf_line_ends_are_accepted() -> None:
    assert check(line(CHAT).replace(b"\n", b"\r\n") * 2).ok


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\xff\xfe{}\n", [(1, "not valid UTF-8")]),
        ("caf\u00e9,1\n".encode("latin-1"), [(1, "not valid UTF-8")]),
        (b"name,answer\nfoo,bar\n", [(1, "not valid JSON"), (2, "not valid JSON")]),
        (b"[1, 2]\n", [(1, "a JSON array, not an object")]),
        (b"42\n", [(1, "a JSON int, not an object")]),
        (
            line({"foo": "bar"}),
            [
                (
                    1,
                    "no 'messages' (chat), 'input'/'preferred_output' (preference), 'text' or "
                    "'prompt'/'completion' key",
                )
            ],
        ),
        (
            line({"messages": [{"role": "user", "content": "hi"}]}),
            [(1, "no assistant message: nothing to learn from")],
        ),
        (
            line({"messages": [{"role": "robot", "content": "hi"}]}),
            [(1, "messages[0].role must be system, developer, user, assistant or tool")],
        ),
        (
            line(
                {
                    "messages": [
                        {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": " "},
                    ]
                }
            ),
            [(1, "messages[1].content is empty")],
        ),
        (line({"messages": []}), [(1, "'messages' must be a non-empty list")]),
        (line({"messages": ["hi"]}), [(1, "messages[0] must be an object")]),
        (line({"text": ""}), [(1, "'text' is empty")]),
        (line({"prompt": "q", "completion": ""}), [(1, "'completion' is empty")]),
        (line({"prompt": 1, "completion": "a"}), [(1, "'prompt' must be a string")]),
        (b"{" * 100_000 + b"\n", [(1, "not valid JSON")]),
    ],
)
def test_each_bad_line_has_its_reason(data: bytes, expected: list[tuple[int, str]]) -> None:
    result = check(data, max_line_bytes=1 << 20)
    assert not result.ok and result.examples == 0
    assert result.invalid_examples == len(expected)
    assert reasons(result) == [(None, "no valid example in the file"), *expected]


def test_the_format_of_the_first_valid_line_is_required_of_all() -> None:
    result = check(line({"foo": 1}) + line({"text": "t"}) + line(CHAT) + line({"text": "u"}))
    assert result.format == "text" and result.examples == 2
    assert reasons(result)[1] == (3, "a chat example in a text file")


def test_an_over_long_line_is_skipped_without_being_held() -> None:
    long_line = b'{"text": "' + b"x" * 10_000_000 + b'"}\n'
    result = check(line(CHAT) + long_line + line(CHAT), chunk=65536, max_line_bytes=4096)
    assert result.examples == 2 and result.invalid_examples == 1
    assert reasons(result) == [(2, "line is longer than 4096 bytes")]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "the file is empty"),
        (b"\n\n  \n", "no valid example in the file"),
        (
            gzip.compress(line(CHAT) * 3, mtime=0),
            "the file is gzip-compressed: upload the uncompressed JSONL",
        ),
    ],
)
def test_files_without_any_example(data: bytes, reason: str) -> None:
    result = check(data)
    assert not result.ok and result.examples == 0
    assert result.errors[0] == {"line": None, "reason": reason}


def test_only_blank_lines_are_each_counted() -> None:
    result = check(b"\n\n  \n")
    assert result.invalid_examples == 3
    assert reasons(result)[1:] == [(1, "empty line"), (2, "empty line"), (3, "empty line")]


def test_counts_stay_exact_past_the_first_hundred_errors() -> None:
    data = b"bad\n" * 250 + line(CHAT) * 7
    result = check(data, chunk=4096)
    assert result.examples == 7 and result.invalid_examples == 250
    assert len(result.errors) == MAX_ERRORS
    assert [e["line"] for e in result.errors] == list(range(1, MAX_ERRORS + 1))
