"""Supervised fine-tuning with LoRA: the Baseten training job's entry point.

Inputs (environment variables, set by config.py and by Baseten):
  RUNTIME_CONFIG  the validated request as JSON; its ``hyperparameters`` drive training,
                  its ``training_file`` / ``validation_file`` name the user's own data
                  and its ``resume_from`` names the checkpoint a resumed job continues
  MODEL_ID        Hugging Face model id, or a local model folder
  DATASET_ID      Hugging Face dataset id, or a local dataset folder / data file; set
                  only when the request names a dataset (not with ``training_file``)
  HF_TOKEN        optional; used for gated or private models and datasets
  BT_CHECKPOINT_DIR  where checkpoints are written (Baseten sets it; ./checkpoints otherwise)
  BT_LOAD_CHECKPOINT_DIR  where Baseten put the checkpoint to resume from (rank-<node>/)

Data: a hub dataset (DATASET_ID) or the user's JSONL file (``training_file``: fetched
from its short-lived ``url`` into ./user_data/ while its sha256 is checked against the
one recorded when the file was checked; a mismatch stops the job). Rows with a
``messages`` column (chat; rendered through the tokenizer's chat template), a
``text`` column, or ``prompt`` and ``completion`` columns are supported; any other
shape stops the job with a one-line reason. ``validation_file``, when given, is the
evaluation set (instead of ``validation_split``).

Writes, under BT_CHECKPOINT_DIR, a resumable ``checkpoint-<step>`` at each epoch's end
and at least every quarter of the run (adapter, optimizer, scheduler, RNG state,
trainer_state.json and this script's ``ft_checkpoint.json`` marker), and ``final/``
(LoRA adapter, tokenizer, training_summary.json). With a checkpoint under
BT_LOAD_CHECKPOINT_DIR the run restores all of that and continues at the next step.

Progress is reported in machine-readable log lines: the marker ``FT_METRICS`` and one
JSON object, one line per optimizer step (``type`` "step": step, total_steps, epoch,
loss, learning_rate, grad_norm, tokens_per_second, tokens_seen), one per evaluation
(``type`` "eval": step, total_steps, epoch, eval_loss; with a validation set, at
each epoch's end) and one at the end (``type`` "summary": step, total_steps, epoch,
final_loss, best_eval_loss, runtime_seconds; final_loss is the loss of the last
step line). The service reads these lines from the job's log for GET .../metrics,
progress and events; a custom script can print the same.

Uses bf16 on GPUs that support it, every GPU of every node (it re-launches itself
under torchrun when there are several), and the CPU when there is no GPU.

Only the standard library is imported at module level, so tests and tools can
import the pure helpers without torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.client
import json
import logging
import math
import os
import re
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("train")

EXIT_USAGE = 2  # the job's inputs are unusable; retrying will not help

SUMMARY_FILE = "training_summary.json"
FINAL_DIR = "final"
DEFAULT_CHECKPOINT_DIR = "checkpoints"

# Training settings that are not request parameters. Change them here.
LORA_TARGET_MODULES = "all-linear"
LR_SCHEDULER = "cosine"
WARMUP_RATIO = 0.03
LOGGING_STEPS = 1
# Resumable checkpoints: at each epoch's end, and in between at least this many per run
# (every ceil(total_steps / MIN_CHECKPOINTS) steps), so a failed one-epoch job loses at
# most a quarter of its steps. See checkpoint_steps().
MIN_CHECKPOINTS = 4
MASTER_PORT = 29500
# transformers.set_seed seeds NumPy, which takes 0 to 2**32 - 1.
MAX_SEED = 2**32 - 1
# The marker of the machine-readable progress lines (see the module docstring).
METRICS_MARKER = "FT_METRICS "

# The user's own data (training_file / validation_file): fetched into this folder of
# the job's working directory, in chunks of this size, with this socket timeout and
# this many attempts on a transient failure (connection, timeout, HTTP 5xx / 429).
DATA_DIR = "user_data"
DOWNLOAD_CHUNK_BYTES = 1 << 20
DOWNLOAD_TIMEOUT_SECONDS = 60
DOWNLOAD_ATTEMPTS = 3
# A File's format (as the service's check names it) and the rows train.py reads.
FILE_FORMATS = {"chat": "messages", "text": "text", "prompt_completion": "prompt_completion"}
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")

# Resuming: what a resumable checkpoint holds. The marker is written last, by this
# script, into every checkpoint-<step> it saves.
CHECKPOINT_MARKER = "ft_checkpoint.json"
TRAINER_STATE_FILE = "trainer_state.json"
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILES = ("adapter_model.safetensors", "adapter_model.bin")
TORCH_STATE_FILES = ("optimizer.pt", "scheduler.pt")

# Local data files that DATASET_ID may point at, and the `datasets` builder for each.
DATA_FILE_BUILDERS = {
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".txt": "text",
    ".arrow": "arrow",
}


class TemplateError(Exception):
    """The job's inputs cannot be used; the message is the one-line reason."""


@dataclasses.dataclass(frozen=True)
class Hyperparameters:
    """Every request hyperparameter; the defaults apply only to keys that are absent."""

    learning_rate: float = 2e-4
    num_epochs: int = 1
    batch_size: int = 4
    gradient_accumulation_steps: int = 4
    max_seq_length: int = 2048
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    seed: int = 42
    validation_split: float = 0.0


@dataclasses.dataclass(frozen=True)
class DataFile:
    """A user's JSONL file as runtime_config.json names it (``url`` is a credential)."""

    field: str  # "training_file" or "validation_file"
    source: str  # what the caller named: a File id or gs:// URI (safe to log)
    url: str  # short-lived read URL: never logged, never in a message
    sha256: str
    bytes: int | None = None
    format: str | None = None  # "chat" | "text" | "prompt_completion"
    examples: int | None = None

    def __repr__(self) -> str:  # keeps the signed URL out of any accidental repr
        return f"DataFile({self.field}, source={self.source!r}, sha256={self.sha256})"

    def describe(self) -> str:
        return f"{self.field} {self.source} (sha256 {self.sha256})"


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    model_id: str
    dataset_id: str | None
    hyperparameters: Hyperparameters
    raw: dict[str, Any]
    training_file: DataFile | None = None
    validation_file: DataFile | None = None
    resume_from: dict[str, str] | None = None

    @property
    def data_source(self) -> str:
        """What the run trains on, safe to log (never a URL)."""
        if self.training_file is not None:
            return self.training_file.describe()
        return str(self.dataset_id)


# --------------------------------------------------------------------------- config


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TemplateError(f"hyperparameter {name} must be a number, got {value!r}")
    return float(value)


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TemplateError(f"hyperparameter {name} must be an integer, got {value!r}")
    return value


def parse_hyperparameters(raw: Any) -> Hyperparameters:
    """Validate the request's hyperparameters; unknown keys are an error.

    An unknown key means the service accepted a parameter that this script would
    silently ignore, so the job stops instead of training with the wrong settings.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise TemplateError("RUNTIME_CONFIG: 'hyperparameters' must be an object")
    fields = {f.name: f for f in dataclasses.fields(Hyperparameters)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise TemplateError(
            f"RUNTIME_CONFIG: unknown hyperparameter(s) {', '.join(unknown)}; "
            f"train.py honours {', '.join(fields)}"
        )
    absent = [name for name in fields if name not in raw]
    if absent:
        log.warning("RUNTIME_CONFIG sets no %s; using train.py's defaults", ", ".join(absent))
    defaults = Hyperparameters()
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if isinstance(getattr(defaults, name), float):
            values[name] = _as_float(name, value)
        else:
            values[name] = _as_int(name, value)
    hp = Hyperparameters(**values)
    problems = []
    if hp.learning_rate <= 0:
        problems.append("learning_rate must be > 0")
    for name in (
        "num_epochs",
        "batch_size",
        "gradient_accumulation_steps",
        "max_seq_length",
        "lora_rank",
        "lora_alpha",
    ):
        if getattr(hp, name) < 1:
            problems.append(f"{name} must be >= 1")
    if not 0 <= hp.lora_dropout < 1:
        problems.append("lora_dropout must be in [0, 1)")
    if not 0 <= hp.seed <= MAX_SEED:
        problems.append(f"seed must be in [0, {MAX_SEED}]")
    if not 0 <= hp.validation_split < 0.5:
        problems.append("validation_split must be in [0, 0.5)")
    if problems:
        raise TemplateError("RUNTIME_CONFIG: " + "; ".join(problems))
    return hp


def parse_data_file(raw: Any, field: str) -> DataFile | None:
    """``training_file`` / ``validation_file`` of runtime_config.json, or None when null.

    Error messages name the field, never the URL (a signed URL is a credential).
    """
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise TemplateError(f"RUNTIME_CONFIG: {field!r} must be an object or null")
    url = raw.get("url")
    if not isinstance(url, str) or not url:
        raise TemplateError(f"RUNTIME_CONFIG: {field}.url must be a non-empty string")
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https", "file"):
        raise TemplateError(
            f"RUNTIME_CONFIG: {field}.url must be an http, https or file URL, "
            + (f"not {scheme!r}" if scheme else "not a relative one")
        )
    sha256 = raw.get("sha256")
    if not isinstance(sha256, str) or not SHA256_PATTERN.fullmatch(sha256.lower()):
        raise TemplateError(f"RUNTIME_CONFIG: {field}.sha256 must be 64 hex digits")
    source = raw.get("source")
    if source is not None and not isinstance(source, str):
        raise TemplateError(f"RUNTIME_CONFIG: {field}.source must be a string")
    counts: dict[str, int | None] = {}
    for key in ("bytes", "examples"):
        value = raw.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 0
        ):
            raise TemplateError(f"RUNTIME_CONFIG: {field}.{key} must be a non-negative integer")
        counts[key] = value
    fmt = raw.get("format")
    if fmt is not None and fmt not in FILE_FORMATS:
        raise TemplateError(
            f"RUNTIME_CONFIG: {field}.format must be one of {', '.join(FILE_FORMATS)}, not {fmt!r}"
        )
    return DataFile(
        field=field,
        source=source or "(unnamed)",
        url=url,
        sha256=sha256.lower(),
        bytes=counts["bytes"],
        format=fmt,
        examples=counts["examples"],
    )


def parse_resume_from(raw: Any) -> dict[str, str] | None:
    """``resume_from``: {training_project_id, training_job_id, checkpoint_id} or null."""
    if raw is None:
        return None
    keys = ("training_project_id", "training_job_id", "checkpoint_id")
    if not isinstance(raw, Mapping) or not all(
        isinstance(raw.get(key), str) and raw.get(key) for key in keys
    ):
        raise TemplateError(
            "RUNTIME_CONFIG: 'resume_from' must be null or an object with string " + ", ".join(keys)
        )
    return {key: str(raw[key]) for key in keys}


def load_runtime_config(environ: Mapping[str, str]) -> RuntimeConfig:
    """Read RUNTIME_CONFIG (and MODEL_ID / DATASET_ID, which win when set).

    The data is exactly one of ``dataset_id`` (or DATASET_ID) and ``training_file``.
    """
    text = environ.get("RUNTIME_CONFIG")
    if not text:
        raise TemplateError(
            "RUNTIME_CONFIG is not set: it must hold the request as JSON "
            "(config.py sets it for Baseten jobs)"
        )
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TemplateError(f"RUNTIME_CONFIG is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise TemplateError("RUNTIME_CONFIG must be a JSON object")
    ids: dict[str, str | None] = {}
    for key, env_name in (("model_id", "MODEL_ID"), ("dataset_id", "DATASET_ID")):
        from_env = environ.get(env_name) or None
        from_config = raw.get(key)
        if from_config is not None and not isinstance(from_config, str):
            raise TemplateError(f"RUNTIME_CONFIG: {key!r} must be a string")
        if from_env and from_config and from_env != from_config:
            log.warning(
                "%s=%r overrides RUNTIME_CONFIG %s=%r", env_name, from_env, key, from_config
            )
        ids[key] = from_env or from_config or None
    if not ids["model_id"]:
        raise TemplateError("MODEL_ID is not set and RUNTIME_CONFIG has no 'model_id'")
    training_file = parse_data_file(raw.get("training_file"), "training_file")
    validation_file = parse_data_file(raw.get("validation_file"), "validation_file")
    if training_file is not None and ids["dataset_id"]:
        raise TemplateError(
            "RUNTIME_CONFIG: exactly one of 'dataset_id' (DATASET_ID) and 'training_file' "
            "may be set, not both"
        )
    if training_file is None and not ids["dataset_id"]:
        raise TemplateError(
            "DATASET_ID is not set and RUNTIME_CONFIG has neither 'dataset_id' nor 'training_file'"
        )
    return RuntimeConfig(
        model_id=str(ids["model_id"]),
        dataset_id=ids["dataset_id"],
        hyperparameters=parse_hyperparameters(raw.get("hyperparameters")),
        raw=raw,
        training_file=training_file,
        validation_file=validation_file,
        resume_from=parse_resume_from(raw.get("resume_from")),
    )


def hf_token(environ: Mapping[str, str]) -> str | None:
    """HF_TOKEN when it holds a value (an empty secret means: no token)."""
    return environ.get("HF_TOKEN") or None


def checkpoint_dir(environ: Mapping[str, str]) -> Path:
    value = environ.get("BT_CHECKPOINT_DIR")
    if not value:
        log.warning(
            "BT_CHECKPOINT_DIR is not set; writing checkpoints to ./%s", DEFAULT_CHECKPOINT_DIR
        )
        value = DEFAULT_CHECKPOINT_DIR
    return Path(value)


# --------------------------------------------------------------------------- launch


def distributed_launch_command(
    gpu_count: int, environ: Mapping[str, str], script: str, python: str = sys.executable
) -> list[str] | None:
    """The torchrun command that uses every GPU of every node, or None to run as is.

    None when already launched by torchrun (LOCAL_RANK set) or when one process is
    enough (at most one GPU on a single node). Multi-node jobs read Baseten's
    BT_GROUP_SIZE, BT_NODE_RANK and BT_LEADER_ADDR.
    """
    if "LOCAL_RANK" in environ:
        return None
    try:
        nnodes = int(environ.get("BT_GROUP_SIZE") or 1)
    except ValueError:
        raise TemplateError(f"BT_GROUP_SIZE={environ['BT_GROUP_SIZE']!r} is not a number") from None
    if gpu_count <= 1 and nnodes <= 1:
        return None
    command = [python, "-m", "torch.distributed.run", f"--nproc_per_node={max(gpu_count, 1)}"]
    if nnodes > 1:
        leader = environ.get("BT_LEADER_ADDR")
        if not leader:
            raise TemplateError(f"BT_GROUP_SIZE={nnodes} but BT_LEADER_ADDR is not set")
        command += [
            f"--nnodes={nnodes}",
            f"--node_rank={environ.get('BT_NODE_RANK') or 0}",
            f"--master_addr={leader}",
            f"--master_port={MASTER_PORT}",
        ]
    return [*command, script]


def expected_optimizer_steps(num_examples: int, hp: Hyperparameters, world_size: int = 1) -> int:
    """Optimizer steps the trainer takes: ceil(ceil(N / global batch) / accumulation) per epoch."""
    batches = math.ceil(num_examples / (hp.batch_size * world_size))
    per_epoch = max(math.ceil(batches / hp.gradient_accumulation_steps), 1)
    return per_epoch * hp.num_epochs


# --------------------------------------------------------------------------- data


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
    """'messages' (chat), 'text' or 'prompt_completion'; any other shape is a TemplateError."""
    if "messages" in columns:
        return "messages"
    if "text" in columns:
        return "text"
    if "prompt" in columns and "completion" in columns:
        return "prompt_completion"
    found = ", ".join(repr(c) for c in columns) or "none"
    raise TemplateError(
        "unsupported dataset shape: expected a 'messages' column (chat), a 'text' column, "
        f"or 'prompt' and 'completion' columns, found columns: {found}"
    )


def _columns(fmt: str) -> list[str]:
    return ["prompt", "completion"] if fmt == "prompt_completion" else [fmt]


def _check_example(example: Mapping[str, Any], fmt: str) -> None:
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
        if not isinstance(message, Mapping) or not {"role", "content"} <= set(message):
            raise TemplateError(
                "column 'messages' must hold lists of {'role': ..., 'content': ...} objects"
            )


def _has_content(example: Mapping[str, Any], fmt: str) -> bool:
    value = example["completion" if fmt == "prompt_completion" else fmt]
    return bool(value.strip()) if isinstance(value, str) else bool(value)


def format_dataset(dataset: Any, name: str = "training split") -> tuple[Any, str]:
    """Keep only the column(s) the trainer reads, without empty rows.

    Returns (dataset, 'messages' | 'text' | 'prompt_completion').
    """
    fmt = detect_format(list(dataset.column_names))
    kept = dataset.select_columns(_columns(fmt)).filter(_has_content, fn_kwargs={"fmt": fmt})
    if len(kept) == 0:
        raise TemplateError(f"the dataset's {name} has no non-empty {fmt!r} rows")
    if len(kept) < len(dataset):
        log.warning("dropped %d empty %r rows of the %s", len(dataset) - len(kept), fmt, name)
    _check_example(kept[0], fmt)
    return kept, fmt


def render_chat(messages: Sequence[Mapping[str, Any]], tokenizer: Any) -> str:
    """The text a chat example becomes through the tokenizer's chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise TemplateError(
            "the dataset is chat ('messages') but the model's tokenizer has no chat template"
        )
    rendered: str = tokenizer.apply_chat_template(list(messages), tokenize=False)
    return rendered


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


# --------------------------------------------------------------------------- resume


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A checkpoint that the trainer can resume from, checked before any model loads."""

    path: Path
    global_step: int
    max_steps: int | None
    base_model: str


def load_checkpoint_root(environ: Mapping[str, str]) -> Path | None:
    """``$BT_LOAD_CHECKPOINT_DIR/rank-<node>/``, where Baseten puts a loaded checkpoint."""
    value = environ.get("BT_LOAD_CHECKPOINT_DIR")
    if not value:
        return None
    return Path(value) / f"rank-{environ.get('BT_NODE_RANK') or 0}"


def _looks_like_checkpoint(path: Path) -> bool:
    names = (TRAINER_STATE_FILE, ADAPTER_CONFIG_FILE, CHECKPOINT_MARKER, *ADAPTER_WEIGHTS_FILES)
    return any((path / name).is_file() for name in names)


def _step_of(path: Path) -> int:
    """The step a checkpoint folder holds, for choosing the newest: its trainer state,
    else the number its name ends in, else -1."""
    try:
        state = json.loads((path / TRAINER_STATE_FILE).read_text(encoding="utf-8"))
        step = state.get("global_step") if isinstance(state, dict) else None
        if isinstance(step, int) and not isinstance(step, bool):
            return step
    except (OSError, ValueError):
        pass
    match = re.search(r"(\d+)$", path.name)
    return int(match.group(1)) if match else -1


def find_checkpoint(root: Path | None, checkpoint_id: str | None = None) -> Path | None:
    """The loaded checkpoint's folder: ``root/<checkpoint-name>/`` or ``root`` itself.

    With several checkpoint folders, the one named ``checkpoint_id`` (from
    ``resume_from``) wins, else the newest. None when nothing was loaded.
    """
    if root is None or not root.is_dir():
        return None
    if checkpoint_id and "/" not in checkpoint_id and checkpoint_id not in (".", ".."):
        named = root / checkpoint_id
        if named.is_dir() and _looks_like_checkpoint(named):
            return named
    if _looks_like_checkpoint(root):
        return root
    folders = sorted(d for d in root.iterdir() if d.is_dir() and _looks_like_checkpoint(d))
    if not folders:
        if any(root.iterdir()):
            raise TemplateError(
                f"the loaded checkpoint in {root} is unreadable: it holds no "
                f"{TRAINER_STATE_FILE} or {ADAPTER_CONFIG_FILE}"
            )
        return None
    chosen = max(folders, key=lambda d: (_step_of(d), d.name))
    if len(folders) > 1:
        log.warning(
            "%s holds %d checkpoints (%s); resuming from the newest, %s",
            root,
            len(folders),
            ", ".join(d.name for d in folders),
            chosen.name,
        )
    if checkpoint_id and chosen.name != checkpoint_id:
        log.warning("resume_from names %r; resuming from %r", checkpoint_id, chosen.name)
    return chosen


def _read_json_object(path: Path, what: str) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TemplateError(f"{what}: {path.name} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TemplateError(f"{what}: {path.name} is unreadable ({type(exc).__name__})") from None
    if not isinstance(loaded, dict):
        raise TemplateError(f"{what}: {path.name} is not a JSON object")
    return loaded


def _check_safetensors(path: Path, what: str) -> None:
    """The safetensors header parses and the file is as long as the header says."""
    try:
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > 100 * 1024 * 1024:
                raise ValueError("header too large")
            raw_header = handle.read(length)
            if len(raw_header) < length:
                raise ValueError("truncated")
            try:
                header = json.loads(raw_header)
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise ValueError("damaged header") from None
            if not isinstance(header, dict):
                raise ValueError("damaged header")
        ends = [
            entry["data_offsets"][1]
            for key, entry in header.items()
            if key != "__metadata__" and isinstance(entry, dict)
        ]
        if path.stat().st_size < 8 + length + max(ends, default=0):
            raise ValueError("truncated")
    except (OSError, ValueError, KeyError, IndexError, TypeError, struct.error) as exc:
        raise TemplateError(f"{what}: {path.name} is unreadable ({exc})") from None


def _check_torch_archive(path: Path, what: str) -> None:
    """torch.save files are zip archives: check every member's CRC without loading them."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except FileNotFoundError:
        raise TemplateError(f"{what}: {path.name} is missing") from None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise TemplateError(f"{what}: {path.name} is unreadable ({exc})") from None
    if bad is not None:
        raise TemplateError(f"{what}: {path.name} is unreadable (corrupt member {bad})")


def check_checkpoint(path: Path, model_id: str, hp: Hyperparameters) -> Checkpoint:
    """Everything the trainer needs to resume, checked before any model is loaded.

    Another base model, other LoRA settings, or a missing or damaged file is a
    TemplateError naming the checkpoint and the reason.
    """
    what = f"checkpoint {path.name!r} cannot be resumed"
    if not (path / TRAINER_STATE_FILE).is_file() and (path / ADAPTER_CONFIG_FILE).is_file():
        raise TemplateError(
            f"{what}: it holds an adapter but no {TRAINER_STATE_FILE} (optimizer, scheduler "
            "and step); resume from a checkpoint-<step> folder, not final/"
        )
    state = _read_json_object(path / TRAINER_STATE_FILE, what)
    step = state.get("global_step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise TemplateError(f"{what}: {TRAINER_STATE_FILE} has no global_step")
    adapter = _read_json_object(path / ADAPTER_CONFIG_FILE, what)
    marker_path = path / CHECKPOINT_MARKER
    marker = _read_json_object(marker_path, what) if marker_path.exists() else {}
    base = marker.get("model_id") or adapter.get("base_model_name_or_path")
    if base != model_id:
        raise TemplateError(
            f"{what}: it was trained from base model {base!r}, and this job's model is "
            f"{model_id!r}; a checkpoint resumes only on its own base model"
        )
    for key, wanted in (("r", hp.lora_rank), ("lora_alpha", hp.lora_alpha)):
        if adapter.get(key) != wanted:
            name = "lora_rank" if key == "r" else key
            raise TemplateError(
                f"{what}: it was trained with {name} {adapter.get(key)!r}, this job asks for "
                f"{wanted}"
            )
    weights = [path / name for name in ADAPTER_WEIGHTS_FILES if (path / name).is_file()]
    if not weights:
        raise TemplateError(f"{what}: no adapter weights ({' or '.join(ADAPTER_WEIGHTS_FILES)})")
    if weights[0].suffix == ".safetensors":
        _check_safetensors(weights[0], what)
    else:
        _check_torch_archive(weights[0], what)
    for name in TORCH_STATE_FILES:
        _check_torch_archive(path / name, what)
    if (path / "rng_state.pth").is_file():
        _check_torch_archive(path / "rng_state.pth", what)
    max_steps = state.get("max_steps")
    return Checkpoint(
        path=path,
        global_step=step,
        max_steps=max_steps if isinstance(max_steps, int) else None,
        base_model=str(base),
    )


def resolve_resume(config: RuntimeConfig, environ: Mapping[str, str]) -> Checkpoint | None:
    """The checkpoint this run continues from, checked; None for a fresh start."""
    resume_from = config.resume_from
    if resume_from is not None:
        log.info("resume_from %s", json.dumps(resume_from, sort_keys=True))
    root = load_checkpoint_root(environ)
    found = find_checkpoint(root, resume_from["checkpoint_id"] if resume_from else None)
    if found is None:
        if resume_from is not None:
            raise TemplateError(
                f"resume_from names checkpoint {resume_from['checkpoint_id']!r} of job "
                f"{resume_from['training_job_id']!r}, but no checkpoint was loaded "
                f"(BT_LOAD_CHECKPOINT_DIR={environ.get('BT_LOAD_CHECKPOINT_DIR') or 'unset'}); "
                "the job needs runtime.load_checkpoint_config"
            )
        return None
    checkpoint = check_checkpoint(found, config.model_id, config.hyperparameters)
    log.info(
        "resuming from %s: step %d%s, base model %s",
        found,
        checkpoint.global_step,
        f" of {checkpoint.max_steps}" if checkpoint.max_steps else "",
        checkpoint.base_model,
    )
    return checkpoint


# --------------------------------------------------------------------------- model


def _quant_method(model_config: Any) -> str | None:
    quant = getattr(model_config, "quantization_config", None)
    if isinstance(quant, Mapping):
        return quant.get("quant_method")
    return getattr(quant, "quant_method", None)


def load_tokenizer(model_id: str, token: str | None) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_id, token=token)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(model_id: str, token: str | None, use_cuda: bool, bf16: bool) -> Any:
    """The base model: bf16 weights on capable GPUs, fp32 on the CPU."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model_config = AutoConfig.from_pretrained(model_id, token=token)
    kwargs: dict[str, Any] = {"token": token, "dtype": torch.bfloat16 if bf16 else torch.float32}
    if _quant_method(model_config) == "mxfp4":
        # e.g. openai/gpt-oss-*: LoRA trains on the weights dequantized to bf16.
        from transformers import Mxfp4Config

        kwargs["quantization_config"] = Mxfp4Config(dequantize=True)
        kwargs["dtype"] = torch.bfloat16
    if use_cuda:
        # Straight onto this process's GPU (one process per GPU under torchrun).
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    model = AutoModelForCausalLM.from_pretrained(model_id, **kwargs)
    model.config.use_cache = False  # incompatible with gradient checkpointing
    return model


def preview_example(example: Mapping[str, Any], fmt: str, tokenizer: Any, limit: int = 500) -> str:
    """The start of what the model is trained on for one example (chat rendered)."""
    if fmt == "messages":
        text = render_chat(example["messages"], tokenizer)
    elif fmt == "prompt_completion":
        text = example["prompt"] + example["completion"]
    else:
        text = example["text"]
    return str(text)[:limit]


# --------------------------------------------------------------------------- trainer


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def metrics_line(record: Mapping[str, Any]) -> str:
    """``FT_METRICS {json}``: the machine-readable progress line (numbers or null)."""
    return METRICS_MARKER + json.dumps(record, separators=(",", ":"), allow_nan=False)


def split_validation(dataset: Any, fraction: float, seed: int) -> tuple[Any, Any]:
    """(train, validation): ``fraction`` of the examples held out, at least one each."""
    if fraction <= 0:
        return dataset, None
    if len(dataset) < 2:
        raise TemplateError("validation_split needs at least 2 examples in the dataset")
    held_out = min(len(dataset) - 1, max(1, round(len(dataset) * fraction)))
    parts = dataset.train_test_split(test_size=held_out, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


def _metrics_callback() -> Any:
    from transformers import TrainerCallback

    class MetricsLineCallback(TrainerCallback):  # type: ignore[misc]
        """One FT_METRICS line per optimizer step and per evaluation (main process only)."""

        def __init__(self) -> None:
            self._last: tuple[float, int] | None = None
            # The last step line printed: the summary line repeats its loss.
            self.last_step: dict[str, Any] | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self._last = (time.monotonic(), state.num_input_tokens_seen)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any) -> None:
            if not state.is_world_process_zero or not logs:
                return
            common = {
                "step": state.global_step,
                "total_steps": state.max_steps,
                "epoch": _finite(logs.get("epoch", state.epoch)),
            }
            if "eval_loss" in logs:
                record = {"type": "eval", **common, "eval_loss": _finite(logs["eval_loss"])}
            elif "loss" in logs:
                now, tokens = time.monotonic(), state.num_input_tokens_seen
                rate = None
                if self._last is not None and now > self._last[0]:
                    rate = round((tokens - self._last[1]) / (now - self._last[0]), 1)
                self._last = (now, tokens)
                record = {
                    "type": "step",
                    **common,
                    "loss": _finite(logs["loss"]),
                    "learning_rate": _finite(logs.get("learning_rate")),
                    "grad_norm": _finite(logs.get("grad_norm")),
                    "tokens_per_second": rate,
                    "tokens_seen": tokens,
                }
                self.last_step = record
            else:
                return
            log.info("%s", metrics_line(record))

    return MetricsLineCallback()


def checkpoint_steps(max_steps: int, num_epochs: int) -> set[int]:
    """The optimizer steps after which a checkpoint is saved: every epoch's end and
    every ceil(max_steps / MIN_CHECKPOINTS) steps."""
    if max_steps < 1:
        return set()
    per_epoch = max(max_steps // max(num_epochs, 1), 1)
    every = max(math.ceil(max_steps / MIN_CHECKPOINTS), 1)
    steps = set(range(every, max_steps + 1, every))
    steps |= {min(epoch * per_epoch, max_steps) for epoch in range(1, num_epochs + 1)}
    steps.add(max_steps)
    return steps


def _checkpoint_schedule_callback() -> Any:
    """Asks the trainer to save after each step of checkpoint_steps() (the trainer's own
    save strategy is off, so no step is saved twice)."""
    from transformers import TrainerCallback

    class CheckpointScheduleCallback(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.steps: set[int] = set()

        def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self.steps = checkpoint_steps(state.max_steps, math.ceil(args.num_train_epochs))

        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if state.global_step in self.steps:
                control.should_save = True

    return CheckpointScheduleCallback()


def _checkpoint_marker_callback(marker: Mapping[str, Any]) -> Any:
    """Writes ``ft_checkpoint.json`` into each checkpoint once the trainer has saved it.

    It names the base model (checked on resume) and, written last, it says the
    checkpoint is complete.
    """
    from transformers import TrainerCallback

    class CheckpointMarkerCallback(TrainerCallback):  # type: ignore[misc]
        def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if not state.is_world_process_zero:
                return
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if not folder.is_dir():
                return
            record = {
                **marker,
                "global_step": state.global_step,
                "max_steps": state.max_steps,
                "epoch": _finite(state.epoch),
            }
            tmp = folder / f".{CHECKPOINT_MARKER}.tmp"
            tmp.write_text(json.dumps(record, indent=2))
            tmp.replace(folder / CHECKPOINT_MARKER)

    return CheckpointMarkerCallback()


def build_trainer(
    model: Any,
    tokenizer: Any,
    dataset: Any,
    hp: Hyperparameters,
    output_dir: Path,
    *,
    use_cuda: bool,
    bf16: bool,
    distributed: bool,
    eval_dataset: Any = None,
    callbacks: Sequence[Any] = (),
) -> Any:
    """An SFTTrainer with a LoRA adapter, every hyperparameter applied.

    ``callbacks`` replace the default FT_METRICS callback (pass it among them).
    """
    from transformers import PrinterCallback
    from trl import SFTTrainer

    args, peft_config = trainer_configs(
        hp,
        output_dir,
        use_cuda=use_cuda,
        bf16=bf16,
        distributed=distributed,
        evaluate=eval_dataset is not None,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=list(callbacks) or [_metrics_callback()],
    )
    trainer.remove_callback(PrinterCallback)  # the FT_METRICS lines replace its prints
    return trainer


def trainer_configs(
    hp: Hyperparameters,
    output_dir: Path,
    *,
    use_cuda: bool,
    bf16: bool,
    distributed: bool,
    evaluate: bool = False,
) -> tuple[Any, Any]:
    """The SFTConfig and LoraConfig that carry every hyperparameter to the trainer.

    ``evaluate``: a validation set exists, evaluated at each epoch's end.
    """
    from peft import LoraConfig
    from trl import SFTConfig

    args = SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=hp.num_epochs,
        per_device_train_batch_size=hp.batch_size,
        per_device_eval_batch_size=hp.batch_size,
        eval_strategy="epoch" if evaluate else "no",
        include_num_input_tokens_seen="non_padding",
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        learning_rate=hp.learning_rate,
        max_length=hp.max_seq_length,
        seed=hp.seed,
        data_seed=hp.seed,
        bf16=bf16,
        fp16=False,
        use_cpu=not use_cuda,
        activation_checkpointing=True,  # a.k.a. gradient checkpointing
        activation_checkpointing_kwargs={"use_reentrant": False},
        lr_scheduler_type=LR_SCHEDULER,
        warmup_steps=WARMUP_RATIO,
        logging_steps=LOGGING_STEPS,
        logging_first_step=True,
        save_strategy="no",  # checkpoint_steps() decides, through a callback
        report_to="none",
        disable_tqdm=True,
        ddp_find_unused_parameters=False if distributed else None,
    )
    peft_config = LoraConfig(
        r=hp.lora_rank,
        lora_alpha=hp.lora_alpha,
        lora_dropout=hp.lora_dropout,
        target_modules=LORA_TARGET_MODULES,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return args, peft_config


def _finite_losses(log_history: Sequence[Mapping[str, Any]]) -> list[float]:
    losses = [entry["loss"] for entry in log_history if "loss" in entry]
    bad = [loss for loss in losses if not math.isfinite(loss)]
    if bad or not losses:
        raise TemplateError(f"training produced no finite loss (logged losses: {losses})")
    return [float(loss) for loss in losses]


# --------------------------------------------------------------------------- main


def configure_logging() -> None:
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s",
        stream=sys.stdout,
        force=True,
    )


def _summary_record(
    trainer: Any, last_step: Mapping[str, Any] | None, runtime_seconds: float
) -> dict[str, Any]:
    """The FT_METRICS summary: ``final_loss`` is the loss of the last step line printed.

    A run that printed no step line (it resumed at its last step) repeats the last
    loss of the restored history instead.
    """
    state = trainer.state
    if last_step is not None:
        final_loss = last_step["loss"]
    else:
        final_loss = _finite(
            next((e["loss"] for e in reversed(state.log_history) if "loss" in e), None)
        )
    eval_losses = [
        entry["eval_loss"]
        for entry in state.log_history
        if _finite(entry.get("eval_loss")) is not None
    ]
    return {
        "type": "summary",
        "step": state.global_step,
        "total_steps": state.max_steps,
        "epoch": _finite(state.epoch),
        "final_loss": final_loss,
        "best_eval_loss": min(eval_losses) if eval_losses else None,
        "runtime_seconds": runtime_seconds,
    }


@dataclasses.dataclass(frozen=True)
class Prepared:
    """What main() checks and fetches before the heavy imports and any re-launch."""

    resume: Checkpoint | None
    files: dict[str, Path]


def prepare(config: RuntimeConfig, environ: Mapping[str, str]) -> Prepared:
    """The checkpoint to resume from (checked) and the user's files (fetched, verified).

    Either failing stops the job in about a second, before torch is imported.
    """
    resume = resolve_resume(config, environ)
    return Prepared(resume=resume, files=fetch_user_files(config))


def train(
    config: RuntimeConfig, environ: Mapping[str, str], prepared: Prepared | None = None
) -> dict[str, Any]:
    """Run the fine-tuning; returns the summary written to final/training_summary.json."""
    if prepared is None:
        prepared = prepare(config, environ)
    resume = prepared.resume

    import torch
    from accelerate import PartialState
    from transformers import set_seed

    started = time.monotonic()
    hp = config.hyperparameters
    token = hf_token(environ)
    use_cuda = torch.cuda.is_available()
    bf16 = use_cuda and torch.cuda.is_bf16_supported()
    state = PartialState()
    distributed = state.num_processes > 1
    out_dir = checkpoint_dir(environ)
    log.info(
        "model=%s data=%s device=%s processes=%d bf16=%s hf_token=%s output=%s",
        config.model_id,
        config.data_source,
        "cuda" if use_cuda else "cpu",
        state.num_processes,
        bf16,
        "set" if token else "unset",
        out_dir,
    )
    log.info("hyperparameters %s", json.dumps(dataclasses.asdict(hp)))
    set_seed(hp.seed)

    requested_gpus = (config.raw.get("compute") or {}).get("gpu_count")
    gpus_here = torch.cuda.device_count()
    if use_cuda and isinstance(requested_gpus, int) and requested_gpus != gpus_here:
        log.warning(
            "the request asked for %d GPU(s) per node; this node has %d", requested_gpus, gpus_here
        )

    # Each node downloads once; its other processes then read the local copy / cache.
    with state.local_main_process_first():
        dataset, fmt, eval_dataset = load_training_data(config, token, prepared.files)
        tokenizer = load_tokenizer(config.model_id, token)
        # Fails here, before the model download, when a chat dataset meets a
        # tokenizer without a chat template.
        first_example = preview_example(dataset[0], fmt, tokenizer)
        model = load_model(config.model_id, token, use_cuda, bf16)
    if eval_dataset is not None:
        if hp.validation_split > 0:
            log.warning("validation_file is the evaluation set; validation_split is ignored")
        log.info("evaluating on the validation_file's %d examples", len(eval_dataset))
    else:
        dataset, eval_dataset = split_validation(dataset, hp.validation_split, hp.seed)
        if eval_dataset is not None:
            log.info(
                "holding out %d examples for evaluation at each epoch's end", len(eval_dataset)
            )
    total = expected_optimizer_steps(len(dataset), hp, state.num_processes)
    log.info(
        "dataset: %d examples, format %r; expecting %d optimizer steps", len(dataset), fmt, total
    )
    if resume is not None:
        if resume.max_steps is not None and resume.max_steps != total:
            log.warning(
                "the checkpoint's run had %d steps in all; this one has %d",
                resume.max_steps,
                total,
            )
        log.info("continuing at step %d of %d", resume.global_step + 1, total)
    log.info("first example starts: %s", json.dumps(first_example[:200]))

    metrics = _metrics_callback()
    marker = {
        "model_id": config.model_id,
        "data": config.data_source,
        "seed": hp.seed,
        "hyperparameters": dataclasses.asdict(hp),
    }
    trainer = build_trainer(
        model,
        tokenizer,
        dataset,
        hp,
        out_dir,
        use_cuda=use_cuda,
        bf16=bf16,
        distributed=distributed,
        eval_dataset=eval_dataset,
        callbacks=[metrics, _checkpoint_schedule_callback(), _checkpoint_marker_callback(marker)],
    )
    result = trainer.train(resume_from_checkpoint=str(resume.path) if resume else None)
    final_dir = out_dir / FINAL_DIR
    trainer.save_model(str(final_dir))  # adapter + tokenizer; every rank must call it
    summary: dict[str, Any] = {}
    if state.is_main_process:
        losses = _finite_losses(trainer.state.log_history)
        record = _summary_record(trainer, metrics.last_step, round(time.monotonic() - started, 3))
        summary = {
            "model_id": config.model_id,
            "dataset_id": config.dataset_id,
            "training_file": _file_summary(config.training_file),
            "validation_file": _file_summary(config.validation_file),
            "dataset_format": fmt,
            "num_examples": len(dataset),
            "num_eval_examples": len(eval_dataset) if eval_dataset is not None else 0,
            "first_example": first_example,
            "hyperparameters": dataclasses.asdict(hp),
            "world_size": state.num_processes,
            "device": "cuda" if use_cuda else "cpu",
            "bf16": bf16,
            "resumed_from": _resume_summary(config, resume),
            "global_step": trainer.state.global_step,
            "total_steps": trainer.state.max_steps,
            "epochs": trainer.state.epoch,
            "final_loss": record["final_loss"],
            "best_eval_loss": record["best_eval_loss"],
            # The mean of this run's step losses (transformers' training_loss).
            "train_loss": result.training_loss,
            "losses": losses,
            "log_history": trainer.state.log_history,
            "runtime_seconds": record["runtime_seconds"],
        }
        log.info("%s", metrics_line(record))
        final_dir.mkdir(parents=True, exist_ok=True)
        (final_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str))
        log.info(
            "done: %d steps, final loss %s, adapter in %s",
            trainer.state.global_step,
            record["final_loss"],
            final_dir,
        )
    return summary


def _file_summary(data_file: DataFile | None) -> dict[str, Any] | None:
    if data_file is None:
        return None
    return {"source": data_file.source, "sha256": data_file.sha256, "bytes": data_file.bytes}


def _resume_summary(config: RuntimeConfig, resume: Checkpoint | None) -> dict[str, Any] | None:
    if resume is None:
        return None
    return {
        **(config.resume_from or {}),
        "checkpoint": resume.path.name,
        "global_step": resume.global_step,
    }


def main(environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    configure_logging()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        config = load_runtime_config(env)
        if "HF_TOKEN" in os.environ and not os.environ["HF_TOKEN"]:
            del os.environ["HF_TOKEN"]  # an empty token would be sent and rejected
        prepared = prepare(config, env)
        import torch

        command = distributed_launch_command(torch.cuda.device_count(), env, __file__)
        if command is not None:
            log.info("re-launching on every GPU: %s", " ".join(command))
            sys.stdout.flush()
            os.execv(command[0], command)  # noqa: S606 (fixed argv, no shell)
        train(config, env, prepared)
    except TemplateError as exc:
        print(f"train.py: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
