"""Token counts with the model's own tokenizer, fetched from the Hugging Face Hub.

Only the dry run comes here (``POST /jobs`` with ``"dry_run": true`` naming a
``training_file``); ``huggingface_hub`` is imported on the first such request,
never at start-up, and ``tokenizers`` only in the counting process.

The model is the caller's choice, so its ``tokenizer.json`` is untrusted input:
a ``Split`` pre-tokenizer holding a backtracking regex makes ``tokenizers``
panic (a ``BaseException`` that would end the worker) or run for ever, and the
file may be huge. So:

- **Size.** The Hub's metadata (``HEAD``) gives the file's size: over
  ``max_bytes`` (``TOKENIZER_MAX_BYTES``, 64 MiB; the largest real ones are
  ~35 MB) it is not downloaded; the download itself stops at ``max_bytes``
  whatever the Hub said.
- **Isolation.** The file is loaded and every batch counted in a process of its
  own (:mod:`finetune_api.jobs.tokenizer_worker`, started with ``python -I``
  and an empty environment, its address space bounded by ``memory_bytes``), kept
  per cached model. A panic or crash ends only that process; a batch that takes
  longer than ``batch_seconds`` (``TOKENIZER_BATCH_SECONDS``, 20 s) or a load
  longer than ``load_seconds`` gets it killed. Either way the dry run counts by
  the rule of :mod:`finetune_api.jobs.estimate` (``tokens_method: "estimate"``),
  and the model is not tried again for ``retry_after`` seconds.

What is fetched: the repository's ``tokenizer.json`` at revision ``main``
(honours ``HF_ENDPOINT``; anonymous unless the function's environment holds
``HF_TOKEN``), into a scratch directory removed as soon as the worker has
loaded it, so nothing stays on the instance's in-memory disk. A model without a
``tokenizer.json``, a gated or private one, or a Hub that does not answer within
``timeout`` seconds gives ``None``: the rule again. Beside it, best effort, the
chat template (``chat_template.jinja``, and ``tokenizer_config.json`` for its
``chat_template`` and special tokens; each at most 1 MiB, bounded the same way:
a larger one is not downloaded): the dry run checks it against the tools the
data holds (:mod:`finetune_api.jobs.chat_template`). A model without either is
not checked.

What is counted: the text of each example as :func:`~finetune_api.files.check.example_pieces`
joins it (for a chat, ``role: content`` per turn, one per line, tool calls as
``name(arguments)`` and the tools' JSON first; a preference pair's prompt and
both outputs, each its own text), encoded with
the tokenizer's own post-processor (its BOS/EOS special tokens included). The
chat template's markup is not rendered.

Cache: per model and process, at most ``max_models`` counting processes
(default 2; least recently used goes first and its process ends); a model that
could not be fetched, or whose process failed, is not asked for again for
``retry_after`` seconds (5 minutes). Thread-safe; two requests for the same
model download it once; batches to one process go one at a time.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_api.core.logs import get_logger, log
from finetune_api.files.check import example_pieces
from finetune_api.jobs.estimate import CountFailed, sizes

_logger = get_logger("tokenizer")

TOKENIZER_FILE = "tokenizer.json"
#: Where the chat template may be: its own file (newer repositories), else the config.
TEMPLATE_FILES = ("chat_template.jinja", "tokenizer_config.json")
MAX_TEMPLATE_FILE_BYTES = 1024 * 1024
REVISION = "main"


@dataclass(frozen=True)
class ChatTemplate:
    """What the model's tokenizer config says about rendering chats (see jobs/chat_template.py)."""

    config: dict[str, Any]
    jinja: str | None

    def problem(self, needs: set[str]) -> str | None:
        """Why this template cannot render what the data needs (tools, tool calls, …)."""
        from finetune_api.jobs.chat_template import (
            chat_template_of,
            special_tokens,
            template_problem,
        )

        template = chat_template_of(self.config, self.jinja, "tools" in needs)
        return template_problem(template, needs, special_tokens(self.config))


class TokenizerCounter:
    """Counts an example's tokens with one ``tokenizers.Tokenizer`` (batched where it can).

    ``chat_template``: the model's, when it could be read (None: not checked).
    """

    method = "tokenizer"

    def __init__(self, tokenizer: Any, chat_template: ChatTemplate | None = None) -> None:
        self.tokenizer = tokenizer
        self.chat_template = chat_template

    def count(self, example: dict[str, Any]) -> int:
        pieces = example_pieces(example)
        return sizes([len(encoding) for encoding in self.tokenizer.encode_batch(list(pieces))])[0]

    def count_batch(self, texts: list[str]) -> list[int]:
        """Token counts of many texts in one call (the library spreads it over its threads)."""
        return [len(encoding) for encoding in self.tokenizer.encode_batch_fast(texts)]


class TokenizerRefused(Exception):
    """The Hub's file is larger than we download."""


def download_tokenizer(
    model_id: str,
    dest: Path,
    *,
    endpoint: str | None,
    timeout: float,
    max_bytes: int,
    filename: str = TOKENIZER_FILE,
) -> int:
    """Write ``model_id``'s ``filename`` to ``dest``; its size (raises on any failure).

    Refused before any byte when the Hub's metadata says it is over ``max_bytes``,
    and stopped at ``max_bytes`` while downloading whatever the metadata said.
    """
    import requests
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils._headers import build_hf_headers
    from huggingface_hub.utils._validators import validate_repo_id

    validate_repo_id(model_id)
    url = hf_hub_url(model_id, filename, revision=REVISION, endpoint=endpoint)
    meta = get_hf_file_metadata(url, timeout=timeout, endpoint=endpoint)
    if meta.size is None or meta.size > max_bytes:
        raise TokenizerRefused(f"{filename} holds {meta.size} bytes (at most {max_bytes})")
    received = 0
    with requests.get(
        meta.location or url, headers=build_hf_headers(), stream=True, timeout=timeout
    ) as response:
        response.raise_for_status()
        with dest.open("wb") as out:
            for chunk in response.iter_content(1024 * 1024):
                received += len(chunk)
                if received > max_bytes:
                    raise TokenizerRefused(f"{filename} is over {max_bytes} bytes")
                out.write(chunk)
    return received


WORKER = Path(__file__).with_name("tokenizer_worker.py")


class WorkerCounter:
    """Counts in a :mod:`tokenizer_worker` process; any failure there is a :class:`CountFailed`.

    ``broken`` once its process failed, timed out or was closed: it is never used again.
    """

    method = "tokenizer"

    def __init__(self, process: subprocess.Popen[bytes], batch_seconds: float) -> None:
        self._process = process
        self._batch_seconds = batch_seconds
        self._buffer = b""
        self._lock = threading.Lock()
        self.broken = False
        self.chat_template: ChatTemplate | None = None

    @classmethod
    def start(
        cls, path: Path, *, load_seconds: float, batch_seconds: float, memory_bytes: int
    ) -> WorkerCounter:
        process = subprocess.Popen(  # a fixed script; no request value in argv
            [sys.executable, "-I", str(WORKER), str(path), str(memory_bytes)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={"LANG": "C.UTF-8", "RAYON_NUM_THREADS": "2"},
            close_fds=True,
        )
        counter = cls(process, batch_seconds)
        with counter._lock:
            counter._receive(time.monotonic() + load_seconds, "ready")
        return counter

    def count(self, example: dict[str, Any]) -> int:
        return sizes(self.count_batch(list(example_pieces(example))))[0]

    def count_batch(self, texts: list[str]) -> list[int]:
        with self._lock:
            if self.broken:
                raise CountFailed("the tokenizer's process has ended")
            line = (json.dumps(texts) + "\n").encode("utf-8")
            try:
                assert self._process.stdin is not None
                self._process.stdin.write(line)
                self._process.stdin.flush()
            except (OSError, ValueError):
                self._fail()
                raise CountFailed("the tokenizer's process has ended") from None
            counts = self._receive(time.monotonic() + self._batch_seconds, "counts")
        if not isinstance(counts, list) or len(counts) != len(texts):
            raise CountFailed("the tokenizer's process answered something else")
        return [int(count) for count in counts]

    def _receive(self, deadline: float, key: str) -> Any:
        """The next answer line's ``key`` by ``deadline``; else the process is killed."""
        assert self._process.stdout is not None
        stream = self._process.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            ready = select.select([stream], [], [], max(0.0, left))[0] if left > 0 else []
            chunk = os.read(stream, 1 << 16) if ready else b""
            if not chunk:
                self._fail()
                reason = "took too long" if not ready else "ended"
                raise CountFailed(f"the tokenizer's process {reason}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            answer = json.loads(line)
        except ValueError:
            answer = {}
        if key not in answer:
            self._fail()
            raise CountFailed(f"the tokenizer failed ({answer.get('error', 'no answer')})")
        return answer[key]

    def _fail(self) -> None:
        self.broken = True
        self.close()

    def close(self) -> None:
        """End the process (idempotent)."""
        self.broken = True
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        for pipe in (self._process.stdin, self._process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def fetch_chat_template(model_id: str, *, endpoint: str | None, timeout: float) -> ChatTemplate:
    """The model's chat template files from the Hub (a file it lacks is skipped; raises when
    neither can be read)."""
    from huggingface_hub.errors import EntryNotFoundError

    found: dict[str, str] = {}
    scratch = Path(tempfile.mkdtemp(prefix="tokenizer-"))
    try:
        for name in TEMPLATE_FILES:
            path = scratch / name
            try:
                download_tokenizer(
                    model_id,
                    path,
                    endpoint=endpoint,
                    timeout=timeout,
                    max_bytes=MAX_TEMPLATE_FILE_BYTES,
                    filename=name,
                )
            except (EntryNotFoundError, TokenizerRefused):
                continue  # absent, or over 1 MiB (never downloaded past it)
            found[name] = path.read_bytes().decode("utf-8", errors="replace")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if not found:
        raise LookupError("no chat template file")
    config: Any = {}
    if "tokenizer_config.json" in found:
        try:
            config = json.loads(found["tokenizer_config.json"])
        except ValueError:
            config = {}
    return ChatTemplate(
        config if isinstance(config, dict) else {}, found.get("chat_template.jinja")
    )


class HubTokenizers:
    """``model_id -> TokenizerCounter | None``: the estimate's TokenizerSource."""

    def __init__(
        self,
        *,
        endpoint: str | None = None,
        max_models: int = 2,
        retry_after: float = 300.0,
        timeout: float = 10.0,
        max_bytes: int = 64 * 1024 * 1024,
        batch_seconds: float = 20.0,
        load_seconds: float = 30.0,
        memory_bytes: int = 2 * 1024**3,
        fetch: Callable[[str], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._endpoint = endpoint
        self._max = max(1, max_models)
        self._retry_after = retry_after
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._batch_seconds = batch_seconds
        self._load_seconds = load_seconds
        self._memory_bytes = memory_bytes
        self._fetch = fetch
        self._clock = clock
        self._counters: OrderedDict[str, Any] = OrderedDict()
        self._failed: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()
        self._fetching: dict[str, threading.Lock] = {}

    def __call__(self, model_id: str) -> Any:
        with self._lock:
            found = self._cached(model_id)
            if found is not None or model_id in self._failed:
                return found
            gate = self._fetching.setdefault(model_id, threading.Lock())
        with gate:  # one download per model at a time; the others wait for it
            with self._lock:
                found = self._cached(model_id)
                if found is not None or model_id in self._failed:
                    return found
            counter = self._load(model_id)
            with self._lock:
                self._fetching.pop(model_id, None)
                if counter is None:
                    self._failed[model_id] = self._clock() + self._retry_after
                    while len(self._failed) > 64:
                        self._failed.popitem(last=False)
                else:
                    self._counters[model_id] = counter
                    while len(self._counters) > self._max:
                        _, evicted = self._counters.popitem(last=False)
                        _close(evicted)
            return counter

    def _cached(self, model_id: str) -> Any:
        counter = self._counters.get(model_id)
        if counter is not None and getattr(counter, "broken", False):
            # Its process failed: count by the rule, and ask the Hub again only later.
            del self._counters[model_id]
            self._failed[model_id] = self._clock() + self._retry_after
            return None
        if counter is not None:
            self._counters.move_to_end(model_id)
            return counter
        until = self._failed.get(model_id)
        if until is not None and self._clock() >= until:
            del self._failed[model_id]
        return None

    def _start(self, model_id: str) -> WorkerCounter:
        """Download the file (bounded) and start its counting process (bounded)."""
        endpoint = self._endpoint or os.environ.get("HF_ENDPOINT") or None
        scratch = Path(tempfile.mkdtemp(prefix="tokenizer-"))
        try:
            path = scratch / TOKENIZER_FILE
            download_tokenizer(
                model_id, path, endpoint=endpoint, timeout=self._timeout, max_bytes=self._max_bytes
            )
            return WorkerCounter.start(
                path,
                load_seconds=self._load_seconds,
                batch_seconds=self._batch_seconds,
                memory_bytes=self._memory_bytes,
            )
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _load(self, model_id: str) -> Any:
        endpoint = self._endpoint or os.environ.get("HF_ENDPOINT") or None
        started = time.monotonic()
        try:
            if self._fetch is not None:
                counter: Any = TokenizerCounter(self._fetch(model_id))
            else:
                counter = self._start(model_id)
        except Exception as error:  # noqa: BLE001 - any failure means: count by the rule
            log(
                _logger,
                30,
                "model tokenizer unavailable; the dry run estimates tokens by rule",
                model_id=model_id,
                error_type=type(error).__name__,
            )
            return None
        template = None
        if self._fetch is None:
            try:
                template = fetch_chat_template(model_id, endpoint=endpoint, timeout=self._timeout)
            except Exception as error:  # noqa: BLE001 - only the tool check is skipped
                log(
                    _logger,
                    30,
                    "model chat template unavailable; the dry run does not check it",
                    model_id=model_id,
                    error_type=type(error).__name__,
                )
        log(
            _logger,
            20,
            "model tokenizer loaded",
            model_id=model_id,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )
        if template is not None:
            counter.chat_template = template
        return counter


def _close(counter: Any) -> None:
    close = getattr(counter, "close", None)
    if close is not None:
        close()
