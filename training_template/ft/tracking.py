"""Weights & Biases, when runtime_config.json's ``integrations`` asks for it.

``integrations`` is OpenAI's list: ``[{"type": "wandb", "wandb": {"project", "entity"?,
"name"?, "tags"?}}]`` (absent or empty: nothing here runs and ``wandb`` is never
imported). With a wandb entry the main process reports every record it prints as an
``FT_METRICS`` line to a W&B run under that project (run name: ``name``, else the
job's name): step lines as ``train/<key>``, the base model's evaluation as
``base/eval_loss`` and ``base/eval_mean_token_accuracy``, the tuned one's as
``eval/loss`` and ``eval/mean_token_accuracy``, each at its step; the samples as one
table (``samples``) and the summary line in the run's summary.

The key is ``WANDB_API_KEY`` in the job's environment (a Baseten secret, see
config.py); wandb reads it itself, and nothing here prints or passes it. ``wandb`` is
not among the job's default requirements: a job that asks for W&B installs
WANDB_REQUIREMENT when its image lacks it. W&B failing never stops the training: the
reporting stops with one warning.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

from ft.config_io import RuntimeConfig
from ft.errors import TemplateError

log = logging.getLogger("train")

# Installed by a job that asks for W&B (the tests run this pin).
WANDB_REQUIREMENT = "wandb==0.31.0"
# WANDB_MODE values that need no key (the tests run offline).
KEYLESS_MODES = ("offline", "disabled", "dryrun")


@dataclasses.dataclass(frozen=True)
class WandbSettings:
    project: str
    entity: str | None = None
    name: str | None = None
    tags: tuple[str, ...] = ()


def _optional_text(settings: Mapping[str, Any], key: str) -> str | None:
    value = settings.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise TemplateError(f"RUNTIME_CONFIG: integrations wandb.{key} must be a non-empty string")
    return value


def wandb_settings(config: RuntimeConfig) -> WandbSettings | None:
    """The wandb entry of ``integrations``, checked; None when there is none."""
    raw = config.raw.get("integrations")
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise TemplateError("RUNTIME_CONFIG: 'integrations' must be a list")
    found: list[WandbSettings] = []
    for i, item in enumerate(raw):
        kind = item.get("type") if isinstance(item, Mapping) else None
        if kind != "wandb":
            raise TemplateError(
                f"RUNTIME_CONFIG: integrations[{i}] has type {kind!r}; train.py knows 'wandb'"
            )
        settings = item.get("wandb")
        if not isinstance(settings, Mapping) or not isinstance(settings.get("project"), str):
            raise TemplateError(f"RUNTIME_CONFIG: integrations[{i}].wandb needs a 'project'")
        tags = settings.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
            raise TemplateError(f"RUNTIME_CONFIG: integrations[{i}].wandb.tags must be strings")
        found.append(
            WandbSettings(
                project=settings["project"],
                entity=_optional_text(settings, "entity"),
                name=_optional_text(settings, "name"),
                tags=tuple(tags),
            )
        )
    if len(found) > 1:
        raise TemplateError("RUNTIME_CONFIG: integrations holds more than one wandb entry")
    return found[0] if found else None


def install_command() -> list[str]:
    """The pip command that installs WANDB_REQUIREMENT into this Python (fixed argv)."""
    return [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-cache-dir",
        "--disable-pip-version-check",
        WANDB_REQUIREMENT,
    ]


def ensure_wandb() -> Any:
    """``wandb``, installed first when this image lacks it."""
    try:
        return importlib.import_module("wandb")
    except ImportError:
        log.info("installing %s for the wandb integration", WANDB_REQUIREMENT)
        done = subprocess.run(install_command(), check=False)  # fixed argv, no shell
        if done.returncode != 0:
            raise TemplateError(
                f"the wandb integration needs {WANDB_REQUIREMENT}, and pip could not install "
                f"it (exit status {done.returncode})"
            ) from None
        importlib.invalidate_caches()
        return importlib.import_module("wandb")


def check_integrations(config: RuntimeConfig, environ: Mapping[str, str]) -> None:
    """Before anything heavy: the integrations are well formed, the key is there and
    wandb is importable (installed if need be). Nothing happens without a wandb entry."""
    settings = wandb_settings(config)
    if settings is None:
        return
    mode = (environ.get("WANDB_MODE") or "").lower()
    if not environ.get("WANDB_API_KEY") and mode not in KEYLESS_MODES:
        raise TemplateError(
            "the wandb integration needs WANDB_API_KEY: the Baseten secret that "
            "WANDB_API_KEY_SECRET_NAME names is missing or empty"
        )
    ensure_wandb()


class WandbReporter:
    """A W&B run fed with the FT_METRICS records (call it with each one: a sink)."""

    def __init__(self, run: Any, wandb: Any) -> None:
        self._run = run
        self._wandb = wandb
        self._samples: list[list[Any]] = []
        self._failed = False

    def __call__(self, record: Mapping[str, Any]) -> None:
        if self._failed:
            return
        try:
            self._report(record)
        except Exception as exc:  # noqa: BLE001 (W&B never stops the training)
            self._failed = True
            log.warning("W&B reporting stopped: %s", f"{type(exc).__name__}: {exc}"[:300])

    def _report(self, record: Mapping[str, Any]) -> None:
        kind = record.get("type")
        step = record.get("step")
        if kind == "step":
            data = {
                f"train/{key}": value
                for key, value in record.items()
                if key not in ("type", "step", "total_steps") and value is not None
            }
        elif kind == "eval":
            if record.get("model") == "base":
                data = {
                    "base/eval_loss": record.get("eval_loss"),
                    "base/eval_mean_token_accuracy": record.get("eval_mean_token_accuracy"),
                }
            else:
                data = {
                    "eval/loss": record.get("eval_loss"),
                    "eval/mean_token_accuracy": record.get("eval_mean_token_accuracy"),
                }
            data = {key: value for key, value in data.items() if value is not None}
        elif kind == "sample":
            self._samples.append(
                [record.get(key) for key in ("index", "prompt", "reference", "base", "tuned")]
            )
            return
        elif kind == "summary":
            self._run.summary.update(
                {key: value for key, value in record.items() if key != "type" and value is not None}
            )
            return
        else:
            return
        self._run.log(data, step=step if isinstance(step, int) else None)

    def finish(self) -> None:
        """The samples table, then the run closed (its files flushed)."""
        if self._samples and not self._failed:
            columns = ["index", "prompt", "reference", "base", "tuned"]
            try:
                self._run.log({"samples": self._wandb.Table(columns=columns, data=self._samples)})
            except Exception as exc:  # noqa: BLE001
                log.warning("W&B samples table not logged: %s", f"{type(exc).__name__}"[:100])
        try:
            self._run.finish()
        except Exception as exc:  # noqa: BLE001
            log.warning("W&B run not finished cleanly: %s", f"{type(exc).__name__}"[:100])


def start_reporting(config: RuntimeConfig) -> WandbReporter | None:
    """The W&B run of this job (main process), or None without a wandb integration."""
    settings = wandb_settings(config)
    if settings is None:
        return None
    wandb = ensure_wandb()
    job_name = config.raw.get("job_name")
    run = wandb.init(
        project=settings.project,
        entity=settings.entity,
        name=settings.name or (job_name if isinstance(job_name, str) else None),
        tags=list(settings.tags) or None,
        job_type="fine-tune",
        config={
            "model_id": config.model_id,
            "method": config.method,
            "data": config.data_source,  # a File id, gs:// URI or dataset id, never a URL
            "hyperparameters": dataclasses.asdict(config.hyperparameters),
        },
        # The job's own stdout stays as printed: the service reads its FT_METRICS lines.
        settings=wandb.Settings(console="off"),
    )
    log.info("reporting to W&B project %s, run %s", settings.project, run.name)
    return WandbReporter(run, wandb)
