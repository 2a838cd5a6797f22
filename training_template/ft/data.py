"""The training data: a hub dataset or the user's own files (fetched, sha256-checked),
shaped into one of the formats the trainer reads."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ft.config_io import FILE_FORMATS, DataFile, RuntimeConfig
from ft.dpo import preference_columns
from ft.errors import TemplateError

log = logging.getLogger("train")

# The user's own data (training_file / validation_file): fetched into this folder of
# the job's working directory, in chunks of this size, with this socket timeout and
# this many attempts on a transient failure (connection, timeout, HTTP 5xx / 429).
DATA_DIR = "user_data"
DOWNLOAD_CHUNK_BYTES = 1 << 20
DOWNLOAD_TIMEOUT_SECONDS = 60
DOWNLOAD_ATTEMPTS = 3

# Local data files that DATASET_ID may point at, and the `datasets` builder for each.
DATA_FILE_BUILDERS = {
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".txt": "text",
    ".arrow": "arrow",
}


def _pick_split(loaded: Any, dataset_id: str) -> Any:
    from datasets import DatasetDict

    if not isinstance(loaded, DatasetDict):
        return loaded
    if "train" in loaded:
        return loaded["train"]
    if not loaded:
        raise TemplateError(f"dataset {dataset_id!r} has no splits")
    split = next(iter(loaded))
    log.warning("dataset %r has no 'train' split; using %r", dataset_id, split)
    return loaded[split]


def load_training_dataset(dataset_id: str, token: str | None = None) -> Any:
    """The training split of a hub dataset, a saved dataset folder or a local data file."""
    from datasets import load_dataset, load_from_disk

    path = Path(dataset_id)
    if path.is_dir() and any(
        (path / marker).is_file() for marker in ("dataset_dict.json", "state.json")
    ):
        loaded = load_from_disk(str(path))
    elif path.is_file():
        builder = DATA_FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise TemplateError(
                f"DATASET_ID {dataset_id!r} is a file of unsupported type; "
                f"use one of {', '.join(sorted(DATA_FILE_BUILDERS))}"
            )
        loaded = load_dataset(builder, data_files=str(path))
    else:  # a Hugging Face hub id, or a local folder of data files
        loaded = load_dataset(dataset_id, token=token)
    return _pick_split(loaded, dataset_id)


def detect_format(columns: Sequence[str]) -> str:
    """'preference' (pairs, for method dpo), 'messages' (chat), 'text' or
    'prompt_completion'; any other shape is a TemplateError."""
    if preference_columns(columns):  # chosen / rejected columns mark preference data
        return "preference"
    if "messages" in columns:
        return "messages"
    if "text" in columns:
        return "text"
    if "prompt" in columns and "completion" in columns:
        return "prompt_completion"
    found = ", ".join(repr(c) for c in columns) or "none"
    raise TemplateError(
        "unsupported dataset shape: expected a 'messages' column (chat), a 'text' column, "
        "'prompt' and 'completion' columns, or preference pairs ('input', 'preferred_output', "
        f"'non_preferred_output', or 'chosen' and 'rejected'), found columns: {found}"
    )


def _columns(fmt: str, available: Sequence[str] = ()) -> list[str]:
    """The columns the trainer reads: a chat example's ``tools`` too, when the data has them."""
    if fmt == "prompt_completion":
        return ["prompt", "completion"]
    if fmt == "messages" and "tools" in available:
        return ["messages", "tools"]
    return [fmt]


def _check_example(example: Mapping[str, Any], fmt: str) -> None:
    if fmt == "preference":  # checked pair by pair by ft.dpo
        return
    if fmt == "prompt_completion":
        for column in ("prompt", "completion"):
            if not isinstance(example[column], str):
                raise TemplateError(
                    f"column {column!r} must hold strings, found {type(example[column]).__name__}"
                )
        return
    value = example[fmt]
    if fmt == "text":
        if not isinstance(value, str):
            raise TemplateError(f"column 'text' must hold strings, found {type(value).__name__}")
        return
    if not isinstance(value, list) or not value:
        raise TemplateError("column 'messages' must hold non-empty lists of chat messages")
    for message in value:
        if not isinstance(message, Mapping) or "role" not in message:
            raise TemplateError(
                "column 'messages' must hold lists of {'role': ..., 'content': ...} objects"
            )


def _has_content(example: Mapping[str, Any], fmt: str) -> bool:
    if fmt == "preference":  # ft.dpo refuses a malformed pair, naming its row
        return True
    value = example["completion" if fmt == "prompt_completion" else fmt]
    return bool(value.strip()) if isinstance(value, str) else bool(value)


def format_dataset(dataset: Any, name: str = "training split") -> tuple[Any, str]:
    """Keep only the column(s) the trainer reads, without empty rows.

    Returns (dataset, 'messages' | 'text' | 'prompt_completion').
    """
    fmt = detect_format(list(dataset.column_names))
    if fmt == "preference":
        columns = preference_columns(list(dataset.column_names))
    else:
        columns = _columns(fmt, list(dataset.column_names))
    kept = dataset.select_columns(columns).filter(_has_content, fn_kwargs={"fmt": fmt})
    if len(kept) == 0:
        raise TemplateError(f"the dataset's {name} has no non-empty {fmt!r} rows")
    if len(kept) < len(dataset):
        log.warning("dropped %d empty %r rows of the %s", len(dataset) - len(kept), fmt, name)
    _check_example(kept[0], fmt)
    return kept, fmt


# ----------------------------------------------------------------- the user's own files


class _Transient(Exception):
    """A download failure worth another attempt."""


def data_dir() -> Path:
    """Where the user's files are fetched: a folder of the job's working directory."""
    return Path.cwd() / DATA_DIR


def _download(data_file: DataFile, part: Path) -> tuple[str, int]:
    """Stream ``data_file.url`` into ``part`` chunk by chunk; (sha256 hex, bytes)."""
    field = data_file.field
    digest = hashlib.sha256()
    size = 0
    limit = data_file.bytes
    try:
        # The URL's scheme was checked (http, https or file) when the config was read.
        with (
            urllib.request.urlopen(  # noqa: S310
                data_file.url, timeout=DOWNLOAD_TIMEOUT_SECONDS
            ) as response,
            part.open("wb") as out,
        ):
            announced = _content_length(response)
            while chunk := response.read(DOWNLOAD_CHUNK_BYTES):
                size += len(chunk)
                if limit is not None and size > limit:
                    raise TemplateError(
                        f"{field}: size mismatch: expected {limit} bytes, got more; "
                        f"refusing the file (expected sha256 {data_file.sha256})"
                    )
                digest.update(chunk)
                out.write(chunk)
        if announced is not None and size < announced:
            # read(n) returns b"" when the server hangs up early; that is no changed file
            raise _Transient(
                f"{field}: download of {data_file.source} failed: the connection closed "
                f"after {size} of {announced} bytes"
            )
    except urllib.error.HTTPError as exc:  # before URLError: it is one
        message = f"{field}: download of {data_file.source} failed: HTTP {exc.code}"
        if exc.code >= 500 or exc.code == 429:
            raise _Transient(message) from None
        raise TemplateError(
            message + (" (the read URL may have expired)" if exc.code in (401, 403) else "")
        ) from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, OSError) and data_file.url.lower().startswith("file:"):
            raise TemplateError(
                f"{field}: cannot read {data_file.source}: {reason.strerror or reason}"
            ) from None
        raise _Transient(f"{field}: download of {data_file.source} failed: {reason}") from None
    except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        # e.g. a read timeout, a reset, or IncompleteRead when the server stops early
        raise _Transient(f"{field}: download of {data_file.source} failed: {exc}") from None
    return digest.hexdigest(), size


def _content_length(response: Any) -> int | None:
    value = response.headers.get("Content-Length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def fetch_data_file(data_file: DataFile, directory: Path) -> Path:
    """The user's file, fetched into ``directory`` with its sha256 checked.

    Streams (never holds the file in memory) into a ``.part`` file that becomes
    ``<field>.jsonl`` only when its digest matches the one in runtime_config.json.
    A mismatch, or any failure, leaves no file behind and raises TemplateError
    (``<field>: sha256 mismatch: expected …, got …``). Logs the source and digest,
    never the URL.
    """
    field = data_file.field
    target = directory / f"{field}.jsonl"
    if target.is_file() and _file_sha256(target) == data_file.sha256:
        log.info("%s: already fetched here: %s", field, data_file.describe())
        return target  # another process of this node fetched it first
    directory.mkdir(parents=True, exist_ok=True)
    part = directory / f".{field}.{os.getpid()}.part"
    started = time.monotonic()
    try:
        for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
            try:
                actual, size = _download(data_file, part)
                break
            except _Transient as exc:
                part.unlink(missing_ok=True)
                if attempt == DOWNLOAD_ATTEMPTS:
                    raise TemplateError(f"{exc} (after {attempt} attempts)") from None
                log.warning("%s; retrying (attempt %d of %d)", exc, attempt + 1, DOWNLOAD_ATTEMPTS)
                time.sleep(2 ** (attempt - 1))
        if actual != data_file.sha256:
            raise TemplateError(
                f"{field}: sha256 mismatch: expected {data_file.sha256}, got {actual} "
                f"({size} bytes read from {data_file.source}); the file changed after it was "
                "checked"
            )
        if data_file.bytes is not None and size != data_file.bytes:  # same digest: cannot happen
            raise TemplateError(f"{field}: size mismatch: expected {data_file.bytes}, got {size}")
        part.replace(target)
    except BaseException:
        part.unlink(missing_ok=True)
        _remove_if_empty(directory)
        raise
    log.info(
        "%s: fetched %s, %d bytes, sha256 verified, in %.1fs",
        field,
        data_file.source,
        size,
        time.monotonic() - started,
    )
    return target


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(DOWNLOAD_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _remove_if_empty(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not empty (another file is kept), or already gone
        directory.rmdir()


def load_data_file(data_file: DataFile, path: Path) -> tuple[Any, str]:
    """The fetched JSONL as a formatted dataset, exactly as a hub dataset is formatted."""
    from datasets import load_dataset

    try:
        loaded = load_dataset("json", data_files=str(path), split="train")
    except Exception as exc:  # noqa: BLE001 (the json builder raises many kinds)
        raise TemplateError(
            f"{data_file.field}: {data_file.source} is not readable as JSONL: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None
    dataset, fmt = format_dataset(loaded, data_file.field)
    recorded = FILE_FORMATS.get(data_file.format or "")
    if recorded is not None and recorded != fmt:
        raise TemplateError(
            f"{data_file.field}: recorded as {data_file.format!r} but its rows are {fmt!r}"
        )
    if data_file.examples is not None and data_file.examples != len(dataset):
        log.warning(
            "%s: the check counted %d examples, train.py reads %d",
            data_file.field,
            data_file.examples,
            len(dataset),
        )
    return dataset, fmt


def fetch_user_files(config: RuntimeConfig, directory: Path | None = None) -> dict[str, Path]:
    """The request's training_file / validation_file, fetched and verified: {field: path}.

    Runs before any heavy import (a changed file stops the job in a second) and
    before the re-launch on several GPUs (one download per node; the processes
    then find the verified copy). On any failure nothing fetched here is kept.
    """
    directory = directory or data_dir()
    fetched: dict[str, Path] = {}
    try:
        for data_file in (config.training_file, config.validation_file):
            if data_file is not None:
                fetched[data_file.field] = fetch_data_file(data_file, directory)
    except BaseException:
        for path in fetched.values():
            path.unlink(missing_ok=True)
        _remove_if_empty(directory)
        raise
    return fetched


def load_training_data(
    config: RuntimeConfig, token: str | None, fetched: Mapping[str, Path] | None = None
) -> tuple[Any, str, Any]:
    """(train dataset, format, validation dataset or None) from DATASET_ID or the user's
    files (fetched by fetch_user_files, which runs here when ``fetched`` is None)."""
    if fetched is None:
        fetched = fetch_user_files(config)
    if config.training_file is not None:
        dataset, fmt = load_data_file(config.training_file, fetched["training_file"])
    else:
        dataset, fmt = format_dataset(load_training_dataset(str(config.dataset_id), token))
    eval_dataset = None
    if config.validation_file is not None:
        eval_dataset, eval_fmt = load_data_file(config.validation_file, fetched["validation_file"])
        if eval_fmt != fmt:
            raise TemplateError(
                f"validation_file: its rows are {eval_fmt!r} but the training data is {fmt!r}"
            )
    return dataset, fmt, eval_dataset


def split_validation(dataset: Any, fraction: float, seed: int) -> tuple[Any, Any]:
    """(train, validation): ``fraction`` of the examples held out, at least one each."""
    if fraction <= 0:
        return dataset, None
    if len(dataset) < 2:
        raise TemplateError("validation_split needs at least 2 examples in the dataset")
    held_out = min(len(dataset) - 1, max(1, round(len(dataset) * fraction)))
    parts = dataset.train_test_split(test_size=held_out, seed=seed, shuffle=True)
    return parts["train"], parts["test"]
