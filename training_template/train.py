"""Supervised fine-tuning with LoRA: the Baseten training job's entry point.

Inputs (environment variables, set by config.py):
  RUNTIME_CONFIG  the validated request as JSON; its ``hyperparameters`` drive training
  MODEL_ID        Hugging Face model id, or a local model folder
  DATASET_ID      Hugging Face dataset id, or a local dataset folder / data file
  HF_TOKEN        optional; used for gated or private models and datasets
  BT_CHECKPOINT_DIR  where adapters are written (Baseten sets it; ./checkpoints otherwise)

Datasets with a ``messages`` column (chat; rendered through the tokenizer's chat
template) or a ``text`` column are supported; any other shape stops the job with a
one-line reason. Writes, under BT_CHECKPOINT_DIR, one ``checkpoint-<step>`` per epoch
and ``final/`` (LoRA adapter, tokenizer, training_summary.json).

Progress is reported in machine-readable log lines: the marker ``FT_METRICS`` and one
JSON object, one line per optimizer step (``type`` "step": step, total_steps, epoch,
loss, learning_rate, grad_norm, tokens_per_second, tokens_seen), one per evaluation
(``type`` "eval": step, total_steps, epoch, eval_loss; with validation_split > 0, at
each epoch's end) and one at the end (``type`` "summary": step, total_steps, epoch,
final_loss, best_eval_loss, runtime_seconds). The service reads these lines from the
job's log for GET .../metrics, progress and events; a custom script can print the same.

Uses bf16 on GPUs that support it, every GPU of every node (it re-launches itself
under torchrun when there are several), and the CPU when there is no GPU.

Only the standard library is imported at module level, so tests and tools can
import the pure helpers without torch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time
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
MASTER_PORT = 29500
# transformers.set_seed seeds NumPy, which takes 0 to 2**32 - 1.
MAX_SEED = 2**32 - 1
# The marker of the machine-readable progress lines (see the module docstring).
METRICS_MARKER = "FT_METRICS "

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
class RuntimeConfig:
    model_id: str
    dataset_id: str
    hyperparameters: Hyperparameters
    raw: dict[str, Any]


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


def load_runtime_config(environ: Mapping[str, str]) -> RuntimeConfig:
    """Read RUNTIME_CONFIG (and MODEL_ID / DATASET_ID, which win when set)."""
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
    ids = {}
    for key, env_name in (("model_id", "MODEL_ID"), ("dataset_id", "DATASET_ID")):
        from_env = environ.get(env_name) or None
        from_config = raw.get(key)
        if from_config is not None and not isinstance(from_config, str):
            raise TemplateError(f"RUNTIME_CONFIG: {key!r} must be a string")
        if from_env and from_config and from_env != from_config:
            log.warning(
                "%s=%r overrides RUNTIME_CONFIG %s=%r", env_name, from_env, key, from_config
            )
        value = from_env or from_config
        if not value:
            raise TemplateError(f"{env_name} is not set and RUNTIME_CONFIG has no {key!r}")
        ids[key] = value
    return RuntimeConfig(
        model_id=ids["model_id"],
        dataset_id=ids["dataset_id"],
        hyperparameters=parse_hyperparameters(raw.get("hyperparameters")),
        raw=raw,
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
    """'messages' (chat) or 'text'; any other shape is a TemplateError naming the columns."""
    if "messages" in columns:
        return "messages"
    if "text" in columns:
        return "text"
    found = ", ".join(repr(c) for c in columns) or "none"
    raise TemplateError(
        "unsupported dataset shape: expected a 'messages' column (chat) or a 'text' column, "
        f"found columns: {found}"
    )


def _check_example(example: Mapping[str, Any], fmt: str) -> None:
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
    value = example[fmt]
    return bool(value.strip()) if isinstance(value, str) else bool(value)


def format_dataset(dataset: Any) -> tuple[Any, str]:
    """Keep only the column the trainer reads, without empty rows.

    Returns (dataset, 'messages' | 'text').
    """
    fmt = detect_format(list(dataset.column_names))
    kept = dataset.select_columns([fmt]).filter(_has_content, fn_kwargs={"fmt": fmt})
    if len(kept) == 0:
        raise TemplateError(f"the dataset's training split has no non-empty {fmt!r} rows")
    if len(kept) < len(dataset):
        log.warning("dropped %d empty %r rows", len(dataset) - len(kept), fmt)
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
    text = render_chat(example["messages"], tokenizer) if fmt == "messages" else example["text"]
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
            else:
                return
            log.info("%s", metrics_line(record))

    return MetricsLineCallback()


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
) -> Any:
    """An SFTTrainer with a LoRA adapter, every hyperparameter applied."""
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
        callbacks=[_metrics_callback()],
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

    ``evaluate``: a validation split exists, evaluated at each epoch's end.
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
        save_strategy="epoch",
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


def train(config: RuntimeConfig, environ: Mapping[str, str]) -> dict[str, Any]:
    """Run the fine-tuning; returns the summary written to final/training_summary.json."""
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
        "model=%s dataset=%s device=%s processes=%d bf16=%s hf_token=%s output=%s",
        config.model_id,
        config.dataset_id,
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

    # Each node downloads once; its other processes then read the local cache.
    with state.local_main_process_first():
        dataset, fmt = format_dataset(load_training_dataset(config.dataset_id, token))
        tokenizer = load_tokenizer(config.model_id, token)
        # Fails here, before the model download, when a chat dataset meets a
        # tokenizer without a chat template.
        first_example = preview_example(dataset[0], fmt, tokenizer)
        model = load_model(config.model_id, token, use_cuda, bf16)
    dataset, eval_dataset = split_validation(dataset, hp.validation_split, hp.seed)
    if eval_dataset is not None:
        log.info("holding out %d examples for evaluation at each epoch's end", len(eval_dataset))
    log.info(
        "dataset: %d examples, format %r; expecting %d optimizer steps",
        len(dataset),
        fmt,
        expected_optimizer_steps(len(dataset), hp, state.num_processes),
    )
    log.info("first example starts: %s", json.dumps(first_example[:200]))

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
    )
    result = trainer.train()
    final_dir = out_dir / FINAL_DIR
    trainer.save_model(str(final_dir))  # adapter + tokenizer; every rank must call it
    summary: dict[str, Any] = {}
    if state.is_main_process:
        losses = _finite_losses(trainer.state.log_history)
        summary = {
            "model_id": config.model_id,
            "dataset_id": config.dataset_id,
            "dataset_format": fmt,
            "num_examples": len(dataset),
            "first_example": first_example,
            "hyperparameters": dataclasses.asdict(hp),
            "world_size": state.num_processes,
            "device": "cuda" if use_cuda else "cpu",
            "bf16": bf16,
            "global_step": trainer.state.global_step,
            "epochs": trainer.state.epoch,
            "train_loss": result.training_loss,
            "losses": losses,
            "log_history": trainer.state.log_history,
            "runtime_seconds": round(time.monotonic() - started, 3),
        }
        eval_losses = [
            entry["eval_loss"]
            for entry in trainer.state.log_history
            if _finite(entry.get("eval_loss")) is not None
        ]
        log.info(
            "%s",
            metrics_line(
                {
                    "type": "summary",
                    "step": trainer.state.global_step,
                    "total_steps": trainer.state.max_steps,
                    "epoch": _finite(trainer.state.epoch),
                    "final_loss": losses[-1],
                    "best_eval_loss": min(eval_losses) if eval_losses else None,
                    "runtime_seconds": summary["runtime_seconds"],
                }
            ),
        )
        final_dir.mkdir(parents=True, exist_ok=True)
        (final_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str))
        log.info(
            "done: %d steps, final loss %.4f, adapter in %s",
            trainer.state.global_step,
            losses[-1],
            final_dir,
        )
    return summary


def main(environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    configure_logging()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        config = load_runtime_config(env)
        if "HF_TOKEN" in os.environ and not os.environ["HF_TOKEN"]:
            del os.environ["HF_TOKEN"]  # an empty token would be sent and rejected
        import torch

        command = distributed_launch_command(torch.cuda.device_count(), env, __file__)
        if command is not None:
            log.info("re-launching on every GPU: %s", " ".join(command))
            sys.stdout.flush()
            os.execv(command[0], command)  # noqa: S606 (fixed argv, no shell)
        train(config, env)
    except TemplateError as exc:
        print(f"train.py: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
