"""The streamed check of a JSONL training file: one pass, bounded memory, exact counts.

Bytes arrive in chunks of any size (an upload, a Cloud Storage download); lines
are cut as they come and checked one by one, so a 1 GiB file costs one line of
memory (at most ``max_line_bytes``) plus the chunk in hand. A line longer than
that is skipped to its end without being held.

Every line is one example. It must be UTF-8, one JSON object (no key twice, no
lone surrogate), and in the file's format, which the first valid line decides
and every other line must follow. The formats and their rules are
``files/rules.py`` (``chat`` in OpenAI's full format, ``preference``, ``text``,
``prompt_completion``); docs/own-data.md shows each with an example line.

``examples``, ``invalid_examples`` and every error's ``line`` are exact; only the
first ``MAX_ERRORS`` errors are kept. A UTF-8 byte order mark at the very start
is accepted (and hashed, like every byte: the sha256 is of the file as stored).
A file-wide error has ``line: null``; :func:`describe` words any error for a message.

Speed: bytes are gathered into 1 MiB windows; once the format is known, each
complete line of a window is decoded by msgspec (typed, in C) into a closed
shape that only the plainest valid examples fit (chat of system, developer,
user and assistant string contents; text; prompt/completion), with a count of
the window's key separators that proves no key was given twice; only a window that is
not entirely such lines is checked line by line, which gives each line its
exact verdict (tests/test_check_fast_path.py holds the two paths to identical
results). Once ``MAX_ERRORS`` reasons are kept, runs of lines that do not
even name the format's key are counted invalid without being cut.
docs/performance.md has the figures.
"""

from __future__ import annotations

import gc
import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Literal

import msgspec

from finetune_api.files.rules import (
    FORMATS,
    LineError,
    check_example,
    example_format,
    example_pieces,
    example_text,
    loads,
)

__all__ = [
    "FORMATS",
    "MAX_ERRORS",
    "CheckResult",
    "JsonlCheck",
    "LineError",
    "check_chunks",
    "check_example",
    "describe",
    "example_format",
    "example_pieces",
    "example_text",
]

MAX_ERRORS = 100
DEFAULT_MAX_LINE_BYTES = 4 * 1024 * 1024
_BOM = b"\xef\xbb\xbf"
_GZIP = b"\x1f\x8b"


# Bytes gathered before lines are cut and checked: big enough that a run of lines
# is decoded in one call, small enough to cost nothing (a client hands 8 KiB chunks).
BUFFER_BYTES = 1024 * 1024


def describe(error: dict[str, Any]) -> str:
    """One error of a validation as a person would write it: ``line 3: not valid JSON``.

    A file-wide error (``line`` null) is its reason alone: it already speaks of
    the file ("the file is empty").
    """
    line = error.get("line")
    return f"line {line}: {error['reason']}" if line is not None else str(error["reason"])


# -- the fast path: closed shapes only the plainest valid examples fit ----------------------


class _Message(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    role: Literal["system", "developer", "user", "assistant"]
    content: str
    name: str | msgspec.UnsetType = msgspec.UNSET


class _Chat(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    messages: list[_Message]


class _Text(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    text: str


class _PromptCompletion(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    prompt: str
    completion: str


def _fast_decoders() -> dict[str, Any]:
    """One msgspec decoder per format with a fast path, for one line of that format.

    Each accepts only what :func:`example_format` and :func:`check_example` also
    accept, as the same format: its shape is closed (any other key, ``tools``,
    ``tool_calls``, ``weight``, a list content, a ``null``, is refused), so what
    it accepts has exactly the keys its fields count. What a type cannot say
    (an empty list, blank content, no assistant turn, a key given twice)
    :func:`_all_valid` checks. Anything refused is checked again line by line,
    for the exact reason. Preference pairs are always checked line by line.
    """
    return {
        "chat": msgspec.json.Decoder(_Chat),
        "text": msgspec.json.Decoder(_Text),
        "prompt_completion": msgspec.json.Decoder(_PromptCompletion),
    }


_FAST = _fast_decoders()
# Whether runs of lines that name no key of the format are counted at once once no more
# reasons are kept (tests switch it off to compare with every line checked one by one).
_BULK_INVALID = True
# What a valid line of each format must hold: the key the format is known by, written
# out, or a backslash (an escape could spell it). None: the format is not known yet.
_KEY_NAMES: dict[str | None, tuple[bytes, ...]] = {
    None: (b"messages", b"input", b"preferred_output", b"text", b"prompt", b"completion", b"\\"),
    "chat": (b"messages", b"\\"),
    "preference": (b"input", b"preferred_output", b"\\"),
    "text": (b"text", b"\\"),
    "prompt_completion": (b"prompt", b"completion", b"\\"),
}


def _next_key_name(
    block: bytes, start: int, needles: tuple[bytes, ...], found: dict[bytes, int]
) -> int:
    """Where the first of ``needles`` occurs in ``block`` from ``start`` on, or -1.

    -1 too when no ``{`` is left (every valid line is an object). ``found``
    remembers each needle's last answer, so a block is searched about once per
    needle however many times this is asked (``bytes.find`` runs in C).
    """

    def after_start(needle: bytes) -> int:
        at = found.get(needle, -2)
        if at == -2 or 0 <= at < start:
            at = found[needle] = block.find(needle, start)
        return at

    if after_start(b"{") < 0:
        return -1
    places = [at for at in map(after_start, needles) if at >= 0]
    return min(places) if places else -1


_ROLE = attrgetter("role")
_NAME = attrgetter("name")
_MESSAGES = attrgetter("messages")


def _no_key_twice(block: bytes, keys: int) -> bool:
    """Whether ``block``, whose examples have ``keys`` keys, writes no key twice.

    msgspec keeps the last of a key given twice silently; this proves there is
    none by counting key separators, which can only overcount. Every key is
    followed by a ``:``, so ``block.count(b":") == keys`` settles it at once
    (no colon in any text). Otherwise every key the fast shapes know ends
    ``":`` unless whitespace stands between: a ``"`` before whitespace that is
    not ``\\"`` (an escaped quote in a text; no known key name ends in a
    backslash) sends the block line by line, and else ``block.count(b'":')``
    must equal ``keys``.
    """
    colons = block.count(b":")
    if colons == keys:
        return True
    if colons < keys or block.count(b'":') != keys:
        return False
    spaced = block.count(b'" ') + block.count(b'"\t')
    return spaced == 0 or spaced == block.count(b'\\" ') + block.count(b'\\"\t')


def _all_valid(examples: list[Any], fmt: str, block: bytes) -> bool:
    """The rest of :func:`check_example` for the examples of ``block`` the fast decoder accepted.

    ``not value or value.isspace()`` is the same test as ``not value.strip()``;
    the loops run in C (``map``) wherever they can.
    """
    if fmt == "chat":
        conversations = list(map(_MESSAGES, examples))
        if not all(conversations):
            return False
        messages = [message for conversation in conversations for message in conversation]
        texts = [message.content for message in messages]
        if not all(texts) or any(map(str.isspace, texts)):
            return False
        if not all("assistant" in map(_ROLE, conversation) for conversation in conversations):
            return False
        names = len(messages) - list(map(_NAME, messages)).count(msgspec.UNSET)
        return _no_key_twice(block, len(examples) + 2 * len(messages) + names)
    texts = list(map(attrgetter("text" if fmt == "text" else "completion"), examples))
    if not all(texts) or any(map(str.isspace, texts)):
        return False
    return _no_key_twice(block, (1 if fmt == "text" else 2) * len(examples))


@contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off for a window's work, back on after (if it was on).

    Checking a window allocates thousands of lists and dicts, each a trigger for
    a collection that can find nothing (they are freed by reference counting, or
    alive until checked), which costs up to half the time.
    """
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def _decode_lines(decoder: Any, lines: list[bytes]) -> list[Any] | None:
    """Each line decoded on its own (so each is exactly one value), or None at any refusal."""
    try:
        with _gc_paused():
            return list(map(decoder.decode, lines))
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _stray_carriage_returns(block: bytes) -> bool:
    """Whether a ``\\r`` stands anywhere but at the end of a line (msgspec reads it as a space)."""
    if b"\r" not in block:
        return False
    return block.count(b"\r") != block.count(b"\r\n") + block.endswith(b"\r")


def _utf8(data: bytes) -> bool:
    # msgspec may not check the UTF-8 of every byte it passes over; the line-by-line check does.
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
        """Check complete lines (``block`` without its last newline): at once if all are valid."""
        if not self._all_fast(block):
            with _gc_paused():
                self._check_each(block)

    def _all_fast(self, block: bytes) -> bool:
        """Count the block's lines as valid if the fast path proves every one is.

        Once the format is known, each line is decoded alone by that format's
        closed msgspec shape, so each is exactly one JSON value (a value split
        over two lines, or two values on one line, is refused); the block's key
        count must equal its examples' (no key twice). Any doubt (that, invalid
        UTF-8 anywhere, a type or content error, a line that may be over-long, a
        hook that wants each example) answers False, and every line is checked
        one by one instead: counts and errors are the same either way.
        """
        decoder = _FAST.get(self.format or "")
        if decoder is None or self.on_example is not None:
            return False
        lines = block.split(b"\n")
        if len(block) > self.max_line_bytes and max(map(len, lines)) > self.max_line_bytes:
            return False
        if _stray_carriage_returns(block) or not _utf8(block):
            return False
        examples = _decode_lines(decoder, lines)
        if examples is None or not _all_valid(examples, self.format or "", block):
            return False
        self._line += len(lines)
        self._examples += len(lines)
        return True

    def _check_each(self, block: bytes) -> None:
        """Every line of ``block`` through :meth:`_check_line`, for its exact verdict.

        Once ``MAX_ERRORS`` reasons are kept, only the counts can change: a run
        of lines none of which holds a key name of the format (nor a backslash,
        which could spell one) has no valid example, and is counted invalid at
        once, so a file of millions of ``1`` or ``{}`` lines costs a few scans of
        its bytes rather than a JSON parse per line.
        """
        start, end = 0, len(block)
        found: dict[bytes, int] = {}  # needle -> its next place at or after a start (-1: none)
        wait = 0  # lines to check one by one before searching again (a search that skipped none)
        while start <= end:
            if _BULK_INVALID and len(self._errors) >= MAX_ERRORS and not wait:
                at = _next_key_name(block, start, _KEY_NAMES[self.format], found)
                first = end if at < 0 else block.rfind(b"\n", start, at) + 1
                if first > start:
                    skipped = block.count(b"\n", start, first) + (at < 0)
                    self._line += skipped
                    self._invalid += skipped
                    start = first
                    if at < 0:
                        return
                else:
                    wait = 64
            wait = max(0, wait - 1)
            stop = block.find(b"\n", start)
            if stop < 0:
                stop = end
            self._check_line(block[start:stop])
            start = stop + 1

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
        if b"\r" in raw:
            # JSON allows it between values, but a loader reading text lines ends the line there.
            self._reject("a carriage return (\\r) inside the line: only \\r\\n may end a line")
            return
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._reject("not valid UTF-8")
            return
        try:
            value = loads(text)
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
