"""The streamed check of a JSONL training file: one pass, bounded memory, exact counts.

Bytes arrive in chunks of any size (an upload, a Cloud Storage download); lines
are cut as they come and checked one by one, so a 1 GiB file costs one line of
memory (at most ``max_line_bytes``) plus the chunk in hand. A line longer than
that is skipped to its end without being held.

Every line is one example. It must be UTF-8, one JSON object, and in the file's
format, which the first valid line decides and every other line must follow:

- ``chat``: ``{"messages": [{"role": "system"|"user"|"assistant", "content": "…"}, …]}``
  with non-empty string contents and at least one assistant turn;
- ``text``: ``{"text": "…"}`` (non-empty);
- ``prompt_completion``: ``{"prompt": "…", "completion": "…"}`` (completion non-empty).

``examples``, ``invalid_examples`` and every error's ``line`` are exact; only the
first ``MAX_ERRORS`` errors are kept. A UTF-8 byte order mark at the very start
is accepted (and hashed, like every byte: the sha256 is of the file as stored).

Speed: bytes are gathered into 1 MiB windows; once the format is known, the
complete lines of a window are decoded as one JSON array of that format by
msgspec (typed, in C), and only a window that is not entirely valid is checked
line by line, which then gives each line its exact verdict (tests/test_check_fast_path.py
holds the two paths to identical results). The check alone runs at ~200 MB/s of
chat JSONL on one core, about twice the line-by-line speed; docs/performance.md
has the figures against the download itself.
"""

from __future__ import annotations

import gc
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Literal

import msgspec

FORMATS = ("chat", "text", "prompt_completion", "preference")
PREFERENCE_KEYS = ("input", "preferred_output", "non_preferred_output")
ROLES = frozenset({"system", "user", "assistant"})
MAX_ERRORS = 100
DEFAULT_MAX_LINE_BYTES = 4 * 1024 * 1024
_BOM = b"\xef\xbb\xbf"
_GZIP = b"\x1f\x8b"


# Bytes gathered before lines are cut and checked: big enough that a run of lines
# is decoded in one call, small enough to cost nothing (a client hands 8 KiB chunks).
BUFFER_BYTES = 1024 * 1024


class LineError(ValueError):
    """Why one line is not a valid example (the message is the reason users see)."""


def example_format(value: Any) -> str:
    """The format one decoded line is written in, or LineError saying why it has none."""
    if not isinstance(value, dict):
        kind = "array" if isinstance(value, list) else type(value).__name__
        raise LineError(f"a JSON {kind}, not an object")
    if "messages" in value:
        return "chat"
    if any(key in value for key in PREFERENCE_KEYS):
        return "preference"
    if "text" in value:
        return "text"
    if "prompt" in value or "completion" in value:
        return "prompt_completion"
    raise LineError("no 'messages', 'text' or 'prompt'/'completion' key")


def _non_empty_text(value: Any, where: str) -> None:
    if not isinstance(value, str):
        raise LineError(f"{where} must be a string")
    if not value.strip():
        raise LineError(f"{where} is empty")


def check_example(value: dict[str, Any], fmt: str) -> None:
    """LineError unless ``value`` is a valid example of ``fmt``."""
    if fmt == "chat":
        messages = value.get("messages")
        if not isinstance(messages, list) or not messages:
            raise LineError("'messages' must be a non-empty list")
        answered = False
        for index, message in enumerate(messages):
            if not isinstance(message, dict):
                raise LineError(f"messages[{index}] must be an object")
            role = message.get("role")
            if role not in ROLES:
                raise LineError(f"messages[{index}].role must be system, user or assistant")
            _non_empty_text(message.get("content"), f"messages[{index}].content")
            answered = answered or role == "assistant"
        if not answered:
            raise LineError("no assistant message: nothing to learn from")
    elif fmt == "preference":
        _check_preference(value)
    elif fmt == "text":
        _non_empty_text(value.get("text"), "'text'")
    else:
        prompt = value.get("prompt")
        if not isinstance(prompt, str):
            raise LineError("'prompt' must be a string")
        _non_empty_text(value.get("completion"), "'completion'")


def _check_preference(value: dict[str, Any]) -> None:
    """OpenAI's DPO line: an input conversation and one preferred, one non-preferred answer."""
    given = value.get("input")
    messages = given.get("messages") if isinstance(given, dict) else None
    if not isinstance(messages, list) or not messages:
        raise LineError("'input.messages' must be a non-empty list")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise LineError(f"input.messages[{index}] must be an object with a role")
    if messages[-1]["role"] not in ("user", "tool"):
        raise LineError("input.messages must end with a user or tool message")
    for key in ("preferred_output", "non_preferred_output"):
        output = value.get(key)
        if (
            not isinstance(output, list)
            or len(output) != 1
            or not isinstance(output[0], dict)
            or output[0].get("role") != "assistant"
        ):
            raise LineError(f"'{key}' must be a list of one assistant message")


class _Message(msgspec.Struct, gc=False):
    role: Literal["system", "user", "assistant"]
    content: str


class _Chat(msgspec.Struct, gc=False):
    messages: list[_Message]


class _Text(msgspec.Struct, gc=False):
    text: str
    messages: msgspec.UnsetType = msgspec.UNSET


class _PromptCompletion(msgspec.Struct, gc=False):
    prompt: str
    completion: str
    messages: msgspec.UnsetType = msgspec.UNSET
    text: msgspec.UnsetType = msgspec.UNSET


def _fast_decoders() -> dict[str, Any]:
    """One msgspec decoder per format, for a JSON array of that format's examples.

    Each accepts only what :func:`example_format` and :func:`check_example` also
    accept, as the same format (a key that would make a line another format, such
    as ``messages`` on a text line, must be absent); what they cannot tell (an
    empty list, blank content, no assistant turn) :func:`_all_valid` checks.
    Anything they refuse is checked again line by line, for the exact reason.
    """
    return {
        "chat": msgspec.json.Decoder(list[_Chat]),
        "text": msgspec.json.Decoder(list[_Text]),
        "prompt_completion": msgspec.json.Decoder(list[_PromptCompletion]),
    }


_FAST = _fast_decoders()


_ROLE = attrgetter("role")


def _all_valid(examples: list[Any], fmt: str) -> bool:
    """The rest of :func:`check_example` for examples the fast decoder accepted.

    ``not value or value.isspace()`` is the same test as ``not value.strip()``;
    the loops run in C (``map``) wherever they can.
    """
    if fmt == "chat":
        texts = [message.content for example in examples for message in example.messages]
        if not all(texts) or any(map(str.isspace, texts)):
            return False
        # An empty list has no assistant turn either.
        return all("assistant" in map(_ROLE, example.messages) for example in examples)
    field = "text" if fmt == "text" else "completion"
    texts = list(map(attrgetter(field), examples))
    return all(texts) and not any(map(str.isspace, texts))


def _decode(decoder: Any, data: bytes) -> list[Any] | None:
    """The examples of a JSON array, or None when the fast decoder refuses it.

    The cyclic garbage collector is paused for the call: decoding a run of
    examples allocates thousands of lists, each a trigger for a collection that
    can find nothing (they are all alive until checked), which would double the
    time. It is switched back on at once, only if it was on.
    """
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        examples: list[Any] = decoder.decode(data)
        return examples
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    finally:
        if paused:
            gc.enable()


def _utf8(data: bytes) -> bool:
    # msgspec does not check the UTF-8 of keys it skips; the line-by-line check does.
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@dataclass
class CheckResult:
    """What one pass over a file found."""

    bytes: int
    sha256: str
    format: str | None
    examples: int
    invalid_examples: int
    errors: list[dict[str, Any]]

    @property
    def ok(self) -> bool:
        return self.examples > 0 and self.invalid_examples == 0 and not self.errors

    def validation(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "examples": self.examples,
            "invalid_examples": self.invalid_examples,
            "errors": self.errors,
        }


@dataclass
class JsonlCheck:
    """Feed chunks with :meth:`feed`, then :meth:`finish` for the result."""

    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    format: str | None = None
    # Called with each valid example, in order (the dry run counts tokens this way).
    on_example: Callable[[dict[str, Any]], None] | None = None
    _digest: Any = field(default_factory=hashlib.sha256)
    _size: int = 0
    _line: int = 0
    _carry: bytearray = field(default_factory=bytearray)
    _skipping: bool = False  # inside an over-long line, dropping bytes until its end
    _examples: int = 0
    _invalid: int = 0
    _errors: list[dict[str, Any]] = field(default_factory=list)
    _file_errors: list[dict[str, Any]] = field(default_factory=list)

    _pending: list[bytes] = field(default_factory=list)
    _pending_bytes: int = 0

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        if self._size == 0 and chunk.startswith(_GZIP):
            self._file_error("the file is gzip-compressed: upload the uncompressed JSONL")
        self._digest.update(chunk)
        self._size += len(chunk)
        for start in range(0, len(chunk), BUFFER_BYTES):  # a large chunk, a window at a time
            piece = chunk if len(chunk) <= BUFFER_BYTES else chunk[start : start + BUFFER_BYTES]
            self._pending.append(piece)
            self._pending_bytes += len(piece)
            if self._pending_bytes >= BUFFER_BYTES:
                self._drain()

    def _drain(self) -> None:
        """Cut the gathered bytes into lines and check the complete ones."""
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        first_end = data.find(b"\n")
        if first_end >= 0:
            # The line the carry (or an over-long line being dropped) continues.
            if self._skipping:
                self._skipping = False
                self._carry.clear()
            elif self._carry:
                self._carry += data[:first_end]
                self._check_line(bytes(self._carry))
                self._carry.clear()
            else:
                self._check_line(data[:first_end])
            last_end = data.rfind(b"\n")
            if last_end > first_end:
                self._check_block(data[first_end + 1 : last_end])
            data = data[last_end + 1 :]
        if self._skipping:
            return
        self._carry += data
        if len(self._carry) > self.max_line_bytes:
            self._line += 1
            self._reject(f"line is longer than {self.max_line_bytes} bytes")
            self._carry.clear()
            self._skipping = True

    def finish(self) -> CheckResult:
        self._drain()
        if self._carry and not self._skipping:
            self._check_line(bytes(self._carry))
        self._carry.clear()
        if self._examples == 0 and not self._file_errors:
            reason = "the file is empty" if self._size == 0 else "no valid example in the file"
            self._file_error(reason)
        return CheckResult(
            bytes=self._size,
            sha256=self._digest.hexdigest(),
            format=self.format,
            examples=self._examples,
            invalid_examples=self._invalid,
            errors=(self._file_errors + self._errors)[:MAX_ERRORS],
        )

    # -- many lines ----------------------------------------------------------------

    def _check_block(self, block: bytes) -> None:
        """Check complete lines (``block`` without its last newline): at once if all are valid.

        The fast path decodes the lines as one JSON array of the file's format
        (msgspec, in C) once the format is known: the newlines become commas, so
        an empty or blank line, or one holding two values, makes the array invalid
        or its length wrong. Any doubt (that, invalid UTF-8 anywhere, a type or
        content error, a line that may be over-long, a hook that wants each
        example) checks every line with :meth:`_check_line` instead, which gives
        each its exact verdict: counts and errors are the same either way.
        """
        decoder = _FAST.get(self.format or "")
        if decoder is not None and self.on_example is None:
            lines = block.count(b"\n") + 1
            fits = len(block) <= self.max_line_bytes or (
                max(map(len, block.split(b"\n"))) <= self.max_line_bytes
            )
            examples = None
            if fits and _utf8(block):
                examples = _decode(decoder, b"[" + block.replace(b"\n", b",") + b"]")
            if (
                examples is not None
                and len(examples) == lines
                and _all_valid(examples, self.format or "")
            ):
                self._line += lines
                self._examples += lines
                return
        for raw in block.split(b"\n"):
            self._check_line(raw)

    # -- one line ----------------------------------------------------------------

    def _file_error(self, reason: str) -> None:
        if not any(error["reason"] == reason for error in self._file_errors):
            self._file_errors.append({"line": None, "reason": reason})

    def _reject(self, reason: str) -> None:
        self._invalid += 1
        if len(self._errors) < MAX_ERRORS:
            self._errors.append({"line": self._line, "reason": reason})

    def _check_line(self, raw: bytes) -> None:
        self._line += 1
        if self._line == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if len(raw) > self.max_line_bytes:
            self._reject(f"line is longer than {self.max_line_bytes} bytes")
            return
        if not raw.strip():
            self._reject("empty line")
            return
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._reject("not valid UTF-8")
            return
        try:
            value = json.loads(text)
        except RecursionError:
            self._reject("JSON nested too deeply")
            return
        except ValueError:
            self._reject("not valid JSON")
            return
        try:
            fmt = example_format(value)
            if self.format is not None and fmt != self.format:
                raise LineError(f"a {fmt} example in a {self.format} file")
            check_example(value, fmt)
        except LineError as error:
            self._reject(str(error))
            return
        self.format = fmt
        self._examples += 1
        if self.on_example is not None:
            self.on_example(value)


def check_chunks(chunks: Any, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> CheckResult:
    """Check every chunk of an iterable of bytes."""
    check = JsonlCheck(max_line_bytes=max_line_bytes)
    for chunk in chunks:
        check.feed(chunk)
    return check.finish()
