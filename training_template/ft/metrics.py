"""Progress in machine-readable ``FT_METRICS`` log lines (see train.py's docstring)."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ft.errors import TemplateError

log = logging.getLogger("train")

# The marker of the machine-readable progress lines (see the module docstring).
METRICS_MARKER = "FT_METRICS "


def finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def metrics_line(record: Mapping[str, Any]) -> str:
    """``FT_METRICS {json}``: the machine-readable progress line (numbers or null)."""
    return METRICS_MARKER + json.dumps(record, separators=(",", ":"), allow_nan=False)


# Where a record goes besides the log line (e.g. ft.tracking's W&B run).
Sink = Callable[[Mapping[str, Any]], None]


def emit(record: Mapping[str, Any], sinks: Sequence[Sink] = ()) -> None:
    """Print ``record`` as an FT_METRICS line and hand it to each sink."""
    log.info("%s", metrics_line(record))
    for sink in sinks:
        sink(record)


def metrics_callback(extra_keys: Sequence[str] = (), sinks: Sequence[Sink] = ()) -> Any:
    """One FT_METRICS line per optimizer step and per evaluation (main process only).

    ``extra_keys``: keys of the trainer's logs each step line carries too (numbers or
    null), e.g. a method's own metrics. ``sinks`` receive every record printed.
    Step lines carry the trainer's ``mean_token_accuracy`` (TRL's SFTTrainer: the share
    of the tokens that carry loss whose label is the most likely next token; null when
    the trainer does not compute it); eval lines ``eval_mean_token_accuracy`` and
    ``model`` ("tuned", or what ``evaluating`` says while ft.evaluation runs the base).
    """
    from transformers import TrainerCallback

    class MetricsLineCallback(TrainerCallback):  # type: ignore[misc]
        """One FT_METRICS line per optimizer step and per evaluation (main process only)."""

        def __init__(self) -> None:
            self._last: tuple[float, int] | None = None
            # The last step line printed: the summary line repeats its loss.
            self.last_step: dict[str, Any] | None = None
            # The last eval line printed, and what overrides its fields (set by
            # ft.evaluation while the base model is evaluated: model, step, epoch).
            self.last_eval: dict[str, Any] | None = None
            self.evaluating: dict[str, Any] = {}

        def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self._last = (time.monotonic(), state.num_input_tokens_seen)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any) -> None:
            if not state.is_world_process_zero or not logs:
                return
            common = {
                "step": state.global_step,
                "total_steps": state.max_steps,
                "epoch": finite(logs.get("epoch", state.epoch)),
            }
            if "eval_loss" in logs:
                record = {
                    "type": "eval",
                    **common,
                    "eval_loss": finite(logs["eval_loss"]),
                    "eval_mean_token_accuracy": finite(logs.get("eval_mean_token_accuracy")),
                    "model": "tuned",
                    **self.evaluating,
                }
                self.last_eval = record
            elif "loss" in logs:
                now, tokens = time.monotonic(), state.num_input_tokens_seen
                rate = None
                if self._last is not None and now > self._last[0]:
                    rate = round((tokens - self._last[1]) / (now - self._last[0]), 1)
                self._last = (now, tokens)
                record = {
                    "type": "step",
                    **common,
                    "loss": finite(logs["loss"]),
                    "learning_rate": finite(logs.get("learning_rate")),
                    "grad_norm": finite(logs.get("grad_norm")),
                    "tokens_per_second": rate,
                    "tokens_seen": tokens,
                    "mean_token_accuracy": finite(logs.get("mean_token_accuracy")),
                    **{key: finite(logs.get(key)) for key in extra_keys},
                }
                self.last_step = record
            else:
                return
            emit(record, sinks)

    return MetricsLineCallback()


def finite_losses(log_history: Sequence[Mapping[str, Any]]) -> list[float]:
    losses = [entry["loss"] for entry in log_history if "loss" in entry]
    bad = [loss for loss in losses if not math.isfinite(loss)]
    if bad or not losses:
        raise TemplateError(f"training produced no finite loss (logged losses: {losses})")
    return [float(loss) for loss in losses]


def summary_record(
    trainer: Any,
    last_step: Mapping[str, Any] | None,
    runtime_seconds: float,
    extra_keys: Sequence[str] = (),
) -> dict[str, Any]:
    """The FT_METRICS summary: ``final_loss`` is the loss of the last step line printed,
    and each of ``extra_keys`` (a method's own step metrics) its value on that line.

    A run that printed no step line (it resumed at its last step) repeats the last
    step of the restored history instead.
    """
    state = trainer.state
    if last_step is None:
        last: Mapping[str, Any] = next((e for e in reversed(state.log_history) if "loss" in e), {})
        last_step = {key: finite(last.get(key)) for key in ("loss", *extra_keys)}
    final_loss = last_step["loss"]
    eval_losses = [
        entry["eval_loss"]
        for entry in state.log_history
        if finite(entry.get("eval_loss")) is not None
    ]
    return {
        "type": "summary",
        "step": state.global_step,
        "total_steps": state.max_steps,
        "epoch": finite(state.epoch),
        "final_loss": final_loss,
        "best_eval_loss": min(eval_losses) if eval_losses else None,
        "runtime_seconds": runtime_seconds,
        **{key: last_step.get(key) for key in extra_keys},
    }
