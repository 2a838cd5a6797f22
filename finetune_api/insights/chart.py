"""The metrics answer drawn as an SVG chart (matplotlib, imported only here).

Top panel: training loss and eval loss against the step. Bottom panel: the
learning rate, or, for a job whose script printed no training lines, GPU
utilisation over time. The title names the job and its status.

Only the route that answers ``image/svg+xml`` imports this module, so
matplotlib (~0.3 s, ~30 MB) never weighs on a cold start. Figures are built
with the object API (no pyplot, no global state), so concurrent requests do
not share a figure. Text stays text (``svg.fonttype: none``) and every series
is a ``<g id="…">`` group holding one path, so the SVG can be read back.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any


def _config_dir_is_writable() -> bool:
    """Whether matplotlib's default config dir can be used (else it would make one in /tmp)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    try:
        path = Path(base) / "matplotlib"
        path.mkdir(parents=True, exist_ok=True)
    except (OSError, RuntimeError):
        return False
    return os.access(path, os.W_OK)


# matplotlib writes its font list to a config dir on first use. Where the default
# one is not writable it makes a `matplotlib-*` dir in /tmp that lives as long as
# the process, and the service leaves /tmp as it found it: so build the font list
# in a scratch dir of our own and remove it at once (the list stays in memory).
# Module-level code runs once per process, under the import lock.
if "MPLCONFIGDIR" not in os.environ and not _config_dir_is_writable():
    _scratch = tempfile.mkdtemp(prefix="finetune-matplotlib-")
    os.environ["MPLCONFIGDIR"] = _scratch
    try:
        import matplotlib.font_manager  # noqa: F401 - loads the font list into memory
    finally:
        shutil.rmtree(_scratch, ignore_errors=True)

from matplotlib import rc_context  # noqa: E402 - after the config dir is settled
from matplotlib.backends.backend_svg import FigureCanvasSVG  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

# Chart text is plain text: names come from callers and Baseten, and ``$…$`` in them
# must never reach mathtext (which raises on what it cannot parse).
_STYLE: dict[Any, Any] = {
    "svg.fonttype": "none",
    "svg.hashsalt": "finetune",
    "font.size": 9,
    "text.parse_math": False,
    "text.usetex": False,
}


def _xy(records: list[dict[str, Any]], x: str, y: str) -> tuple[list[float], list[float]]:
    xs: list[float] = []
    ys: list[float] = []
    for record in records:
        value = record.get(y)
        if isinstance(value, int | float) and math.isfinite(value):
            xs.append(float(record[x]))
            ys.append(float(value))
    return xs, ys


def _title(answer: dict[str, Any]) -> str:
    name = answer.get("job_name") or answer.get("training_job_id") or "training job"
    return f"{name} — {answer.get('status', 'unknown')}"


def render_svg(answer: dict[str, Any]) -> str:
    """The chart of a metrics answer (see :meth:`JobInsights.metrics`) as SVG text."""
    with rc_context(_STYLE):
        figure = Figure(figsize=(8, 6), layout="constrained")
        FigureCanvasSVG(figure)
        top, bottom = figure.subplots(2, 1)
        figure.suptitle(_title(answer))
        training = answer.get("training")
        if training:
            _training_panels(training, top, bottom)
        else:
            top.set_title("no training lines in this job's log")
            top.set_axis_off()
            _gpu_panel(answer.get("system") or {}, bottom)
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    return buffer.getvalue()


def _training_panels(training: dict[str, Any], top: Any, bottom: Any) -> None:
    steps = training.get("steps") or []
    evaluations = training.get("evaluations") or []
    xs, ys = _xy(steps, "step", "loss")
    (line,) = top.plot(xs, ys, label="loss", linewidth=1.2)
    line.set_gid("loss")
    exs, eys = _xy(evaluations, "step", "eval_loss")
    if exs:
        (eval_line,) = top.plot(exs, eys, "o-", label="eval loss", linewidth=1.2, markersize=3)
        eval_line.set_gid("eval_loss")
    top.set_xlabel("step")
    top.set_ylabel("loss")
    top.grid(alpha=0.3)
    top.legend(loc="upper right")
    summary = training.get("summary") or {}
    if summary.get("total_steps"):
        top.set_xlim(0, summary["total_steps"])
    lxs, lys = _xy(steps, "step", "learning_rate")
    (lr_line,) = bottom.plot(lxs, lys, color="tab:green", linewidth=1.2)
    lr_line.set_gid("learning_rate")
    bottom.set_xlabel("step")
    bottom.set_ylabel("learning rate")
    bottom.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    bottom.grid(alpha=0.3)
    if summary.get("total_steps"):
        bottom.set_xlim(0, summary["total_steps"])


def _gpu_panel(system: dict[str, Any], axis: Any) -> None:
    drawn = False
    for node in system.get("nodes") or []:
        for rank, series in (node.get("gpu_utilization") or {}).items():
            points = [
                (datetime.fromisoformat(str(p["timestamp"]).replace("Z", "+00:00")), p["value"])
                for p in series
                if isinstance(p.get("value"), int | float)
            ]
            if not points:
                continue
            (line,) = axis.plot(
                [p[0] for p in points],
                [100 * p[1] for p in points],
                label=f"{node['node_id']} GPU {rank}",
                linewidth=1.0,
            )
            line.set_gid(f"gpu_utilization-{node['node_id']}-{rank}")
            drawn = True
    axis.set_ylabel("GPU utilisation (%)")
    axis.grid(alpha=0.3)
    if drawn:
        axis.legend(loc="lower right", fontsize=7)
    else:
        axis.set_title("no GPU metrics")


__all__ = ["render_svg"]
