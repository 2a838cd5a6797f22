"""Token counts with the model's own tokenizer, fetched from the Hugging Face Hub.

Only the dry run comes here (``POST /jobs`` with ``"dry_run": true`` naming a
``training_file``); ``huggingface_hub`` and ``tokenizers`` are imported on the
first such request, never at start-up.

What is fetched: the repository's ``tokenizer.json`` at revision ``main``
(``hf_hub_download``, which honours ``HF_ENDPOINT``; anonymous unless the
function's environment holds ``HF_TOKEN``), into a scratch directory that is
removed as soon as the file is loaded, so nothing stays on the instance's
in-memory disk. A model without a ``tokenizer.json`` (only a SentencePiece
``tokenizer.model``), a gated or private one, or a Hub that does not answer
within ``timeout`` seconds gives ``None``: the dry run then counts with the
rule of :mod:`finetune_api.jobs.estimate` and says ``tokens_method: "estimate"``.
Beside it, best effort, the chat template (``chat_template.jinja``, and
``tokenizer_config.json`` for its ``chat_template`` and special tokens; each at most
1 MiB): the dry run checks it against the tools the data holds
(:mod:`finetune_api.jobs.chat_template`). A model without either is not checked.

What is counted: the text of each example as :func:`~finetune_api.files.check.example_pieces`
joins it (for a chat, ``role: content`` per turn, one per line, tool calls as
``name(arguments)`` and the tools' JSON first; a preference pair's prompt and
both outputs, each its own text), encoded with
the tokenizer's own post-processor (its BOS/EOS special tokens included). The
chat template's markup (a few tokens per turn) is not rendered: the counts are
the model's tokens of the example's words, which is what ``max_seq_length``
mostly holds.

Cache: per model and process, at most ``max_models`` tokenizers (default 2:
a 128k-vocabulary tokenizer holds tens of MB, and the function has 512 MiB;
least recently used goes first); a model that could not be fetched is not asked
for again for ``retry_after`` seconds (5 minutes). Thread-safe; two requests
for the same model download it once. A first dry run for a model waits for the
download (``tokenizer.json`` is 2-30 MB); the next ones do not.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from finetune_api.core.logs import get_logger, log
from finetune_api.files.check import example_pieces
from finetune_api.jobs.estimate import sizes

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


def fetch_tokenizer(model_id: str, *, endpoint: str | None, timeout: float) -> Any:
    """The ``tokenizers.Tokenizer`` of ``model_id`` from the Hub (raises on any failure)."""
    from huggingface_hub import hf_hub_download
    from tokenizers import Tokenizer

    scratch = tempfile.mkdtemp(prefix="tokenizer-")
    try:
        path = hf_hub_download(
            model_id,
            TOKENIZER_FILE,
            revision=REVISION,
            endpoint=endpoint,
            local_dir=scratch,
            etag_timeout=timeout,
        )
        return Tokenizer.from_file(path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def fetch_chat_template(model_id: str, *, endpoint: str | None, timeout: float) -> ChatTemplate:
    """The model's chat template files from the Hub (a file it lacks is skipped; raises when
    neither can be read)."""
    import json

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    found: dict[str, str] = {}
    scratch = tempfile.mkdtemp(prefix="tokenizer-")
    try:
        for name in TEMPLATE_FILES:
            try:
                path = hf_hub_download(
                    model_id,
                    name,
                    revision=REVISION,
                    endpoint=endpoint,
                    local_dir=scratch,
                    etag_timeout=timeout,
                )
            except EntryNotFoundError:
                continue
            with open(path, "rb") as handle:
                data = handle.read(MAX_TEMPLATE_FILE_BYTES + 1)
            if len(data) <= MAX_TEMPLATE_FILE_BYTES:
                found[name] = data.decode("utf-8", errors="replace")
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
        fetch: Callable[[str], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._endpoint = endpoint
        self._max = max(1, max_models)
        self._retry_after = retry_after
        self._timeout = timeout
        self._fetch = fetch
        self._clock = clock
        self._counters: OrderedDict[str, TokenizerCounter] = OrderedDict()
        self._failed: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()
        self._fetching: dict[str, threading.Lock] = {}

    def __call__(self, model_id: str) -> TokenizerCounter | None:
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
                        self._counters.popitem(last=False)
            return counter

    def _cached(self, model_id: str) -> TokenizerCounter | None:
        counter = self._counters.get(model_id)
        if counter is not None:
            self._counters.move_to_end(model_id)
            return counter
        until = self._failed.get(model_id)
        if until is not None and self._clock() >= until:
            del self._failed[model_id]
        return None

    def _load(self, model_id: str) -> TokenizerCounter | None:
        endpoint = self._endpoint or os.environ.get("HF_ENDPOINT") or None
        started = time.monotonic()
        try:
            if self._fetch is not None:
                tokenizer = self._fetch(model_id)
            else:
                tokenizer = fetch_tokenizer(model_id, endpoint=endpoint, timeout=self._timeout)
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
        return TokenizerCounter(tokenizer, template)
