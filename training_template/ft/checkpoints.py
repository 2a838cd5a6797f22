"""Checkpoints: when they are saved, what marks them complete, and resuming from one
(found under BT_LOAD_CHECKPOINT_DIR and checked before any model is loaded)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ft.config_io import Hyperparameters, RuntimeConfig
from ft.errors import TemplateError
from ft.metrics import finite

log = logging.getLogger("train")

# Resumable checkpoints: at each epoch's end, and in between at least this many per run
# (every ceil(total_steps / MIN_CHECKPOINTS) steps), so a failed one-epoch job loses at
# most a quarter of its steps. See checkpoint_steps().
MIN_CHECKPOINTS = 4
# Resuming: what a resumable checkpoint holds. The marker is written last, by this
# script, into every checkpoint-<step> it saves.
CHECKPOINT_MARKER = "ft_checkpoint.json"
TRAINER_STATE_FILE = "trainer_state.json"
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILES = ("adapter_model.safetensors", "adapter_model.bin")
TORCH_STATE_FILES = ("optimizer.pt", "scheduler.pt")


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A checkpoint that the trainer can resume from, checked before any model loads."""

    path: Path
    global_step: int
    max_steps: int | None
    base_model: str
    epoch: float | None = None


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


def check_checkpoint(
    path: Path, model_id: str, hp: Hyperparameters, method: str = "supervised"
) -> Checkpoint:
    """Everything the trainer needs to resume, checked before any model is loaded.

    Another base model, another method (a marker without one is ``supervised``: older
    jobs), other LoRA settings, or a missing or damaged file is a TemplateError naming
    the checkpoint and the reason.
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
    trained_as = marker.get("method") or "supervised"
    if trained_as != method:
        raise TemplateError(
            f"{what}: it was trained with method {trained_as!r}, and this job's method is "
            f"{method!r}; a checkpoint resumes only with its own method (its optimizer and "
            "step belong to that run)"
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
        epoch=finite(state.get("epoch")),
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
    checkpoint = check_checkpoint(found, config.model_id, config.hyperparameters, config.method)
    log.info(
        "resuming from %s: step %d%s, base model %s",
        found,
        checkpoint.global_step,
        f" of {checkpoint.max_steps}" if checkpoint.max_steps else "",
        checkpoint.base_model,
    )
    return checkpoint


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


def checkpoint_schedule_callback() -> Any:
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


def checkpoint_marker_callback(marker: Mapping[str, Any]) -> Any:
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
                "epoch": finite(state.epoch),
            }
            tmp = folder / f".{CHECKPOINT_MARKER}.tmp"
            tmp.write_text(json.dumps(record, indent=2))
            tmp.replace(folder / CHECKPOINT_MARKER)

    return CheckpointMarkerCallback()
