"""What the job is asked to do: runtime_config.json (RUNTIME_CONFIG) and its hyperparameters.

Read before anything heavy is imported, so a bad config stops the job in a second.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ft.errors import TemplateError

log = logging.getLogger("train")

DEFAULT_CHECKPOINT_DIR = "checkpoints"
# transformers.set_seed seeds NumPy, which takes 0 to 2**32 - 1.
MAX_SEED = 2**32 - 1
# A File's format (as the service's check names it) and the rows train.py reads.
FILE_FORMATS = {
    "chat": "messages",
    "text": "text",
    "prompt_completion": "prompt_completion",
    "preference": "preference",
}
# The methods a request may name (runtime_config.json's "method"; see ft.methods).
METHOD_NAMES = ("supervised", "dpo")
# The file format a method needs (as the service's check names it): a dpo job trains
# on preference pairs and only on them; a supervised one on anything else.
PREFERENCE_FILE_FORMAT = "preference"
# Hyperparameters whose default depends on the method: absent or null means "the
# method's default" (older jobs have neither), and each belongs to one method.
METHOD_HYPERPARAMETERS = {"train_on_inputs": "supervised", "dpo_beta": "dpo"}
DEFAULT_TRAIN_ON_INPUTS = False
DEFAULT_DPO_BETA = 0.1
MAX_DPO_BETA = 10.0
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
# hyperparameters.eval_samples: held-out prompts answered by the base and the tuned
# model after training; absent or null: DEFAULT_EVAL_SAMPLES with a validation set.
MAX_EVAL_SAMPLES = 50
DEFAULT_EVAL_SAMPLES = 5


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
    # Method-dependent (see resolve_method_hyperparameters): null until resolved.
    train_on_inputs: bool | None = None  # supervised: every token carries loss (default false)
    dpo_beta: float | None = None  # dpo: the KL penalty's strength (default 0.1)
    # Held-out prompts answered after training (ft.evaluation): null until resolved.
    eval_samples: int | None = None


@dataclasses.dataclass(frozen=True)
class DataFile:
    """A user's JSONL file as runtime_config.json names it (``url`` is a credential)."""

    field: str  # "training_file" or "validation_file"
    source: str  # what the caller named: a File id or gs:// URI (safe to log)
    url: str  # short-lived read URL: never logged, never in a message
    sha256: str
    bytes: int | None = None
    format: str | None = None  # "chat" | "text" | "prompt_completion" | "preference"
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
    method: str = "supervised"  # see ft.methods

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


def _as_method_value(name: str, value: Any) -> bool | float | None:
    if value is None:
        return None
    if name == "train_on_inputs":
        if not isinstance(value, bool):
            raise TemplateError(f"hyperparameter {name} must be true, false or null, got {value!r}")
        return value
    beta = _as_float(name, value)
    if not 0 < beta <= MAX_DPO_BETA:
        raise TemplateError(f"RUNTIME_CONFIG: dpo_beta must be in (0, {MAX_DPO_BETA:g}]")
    return beta


def resolve_method_hyperparameters(hp: Hyperparameters, method: str) -> Hyperparameters:
    """The method's defaults for the hyperparameters left null; one set for another
    method is an error (``train_on_inputs: false`` with dpo is taken as null)."""
    if method == "supervised":
        if hp.dpo_beta is not None:
            raise TemplateError("RUNTIME_CONFIG: hyperparameter dpo_beta applies only to dpo")
        if hp.train_on_inputs is None:
            return dataclasses.replace(hp, train_on_inputs=DEFAULT_TRAIN_ON_INPUTS)
        return hp
    if hp.train_on_inputs:
        raise TemplateError(
            "RUNTIME_CONFIG: hyperparameter train_on_inputs applies only to method supervised"
        )
    beta = DEFAULT_DPO_BETA if hp.dpo_beta is None else hp.dpo_beta
    return dataclasses.replace(hp, train_on_inputs=None, dpo_beta=beta)


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
    absent = [
        name
        for name in fields
        if name not in raw and name not in METHOD_HYPERPARAMETERS and name != "eval_samples"
    ]
    if absent:
        log.warning("RUNTIME_CONFIG sets no %s; using train.py's defaults", ", ".join(absent))
    defaults = Hyperparameters()
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name in METHOD_HYPERPARAMETERS:
            values[name] = _as_method_value(name, value)
        elif name == "eval_samples":
            values[name] = None if value is None else _as_int(name, value)
        elif isinstance(getattr(defaults, name), float):
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
    if hp.eval_samples is not None and not 0 <= hp.eval_samples <= MAX_EVAL_SAMPLES:
        problems.append(f"eval_samples must be in [0, {MAX_EVAL_SAMPLES}]")
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


def parse_method(raw: Any) -> str:
    """``method``: "supervised" (also when absent or null, as in older jobs) or "dpo"."""
    if raw is None:
        return "supervised"
    if raw not in METHOD_NAMES:
        raise TemplateError(
            f"RUNTIME_CONFIG: 'method' must be one of {', '.join(METHOD_NAMES)}, not {raw!r}"
        )
    return str(raw)


def check_method_files(method: str, files: tuple[DataFile | None, ...]) -> None:
    """A preference file trains only with dpo, and dpo only on preference files (the
    recorded ``format`` of each file); else a TemplateError. The service refuses both
    earlier, so this guards a hand-written runtime_config.json, before anything heavy.
    """
    for data_file in files:
        if data_file is None or data_file.format is None:
            continue
        if method == "dpo" and data_file.format != PREFERENCE_FILE_FORMAT:
            raise TemplateError(
                f"RUNTIME_CONFIG: method 'dpo' trains on preference pairs, but "
                f"{data_file.field} {data_file.source} is a {data_file.format!r} file; a dpo "
                f"job needs a {PREFERENCE_FILE_FORMAT!r} file"
            )
        if method != "dpo" and data_file.format == PREFERENCE_FILE_FORMAT:
            raise TemplateError(
                f"RUNTIME_CONFIG: {data_file.field} {data_file.source} is a "
                f"{PREFERENCE_FILE_FORMAT!r} file (preference pairs), which only method 'dpo' "
                f"trains on; this job's method is {method!r}"
            )


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
    method = parse_method(raw.get("method"))
    check_method_files(method, (training_file, validation_file))
    return RuntimeConfig(
        model_id=str(ids["model_id"]),
        dataset_id=ids["dataset_id"],
        hyperparameters=resolve_method_hyperparameters(
            parse_hyperparameters(raw.get("hyperparameters")), method
        ),
        raw=raw,
        training_file=training_file,
        validation_file=validation_file,
        resume_from=parse_resume_from(raw.get("resume_from")),
        method=method,
    )


def resolve_eval_samples(hp: Hyperparameters, has_validation: bool) -> int:
    """How many held-out prompts the job answers: ``eval_samples``, or its default
    (DEFAULT_EVAL_SAMPLES with a validation set, else 0); none without a validation set."""
    if not has_validation:
        if hp.eval_samples:
            log.warning(
                "eval_samples is %d but there is no validation set: no samples", hp.eval_samples
            )
        return 0
    return DEFAULT_EVAL_SAMPLES if hp.eval_samples is None else hp.eval_samples


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
