"""DPO's memory: peak RSS of a ``method: "dpo"`` run of train.py vs a supervised one.

The template runs DPO with the base model as its own reference (the LoRA adapter
switched off for the reference pass), so no second copy of the model is loaded.
This measures it: the staged template's ``python train.py``, as the job runs it
(tests/template's ``prepare_job``: the job's working area and environment), on the
CPU, twice per method, interleaved:

* **baseline**: ``method: "supervised"`` on ``examples`` chats (a user turn and
  the preferred answer);
* **ours**: ``method: "dpo"`` on the same number of preference pairs (the same
  user turn and preferred answer, plus a rejected answer of the same length),
  same batch size, steps, ``max_seq_length`` and LoRA settings.

The model is a Llama of ``hidden`` x ``layers`` (about 85 M parameters, 340 MB of
float32 weights by default), written once per run: large enough that a second
copy of it would show (``copy_ratio`` is what the ratio would be with one). The
figure is each process's peak resident set (``ru_maxrss`` from ``wait4``: the
process and nothing else); the ratio is the median DPO peak over the median
supervised peak (goal <= 1.15).

Run alone: ``python -m bench.dpo_memory``.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.train_memory import HYPERPARAMETERS, save_model, train_peak_rss_mb
from tests.template.template_helpers import sentence, write_jsonl

GOAL_RATIO = 1.15


def write_data(directory: Path, examples: int) -> dict[str, Path]:
    """The same conversations as chats (supervised) and as preference pairs (DPO)."""
    chats, pairs = [], []
    for i in range(examples):
        user = {"role": "user", "content": sentence(i, 12)}
        good = {"role": "assistant", "content": sentence(i + 7, 12)}
        bad = {"role": "assistant", "content": sentence(i + 13, 12)}
        chats.append({"messages": [user, good]})
        pairs.append(
            {
                "input": {"messages": [user]},
                "preferred_output": [good],
                "non_preferred_output": [bad],
            }
        )
    return {
        "supervised": write_jsonl(directory / "chats.jsonl", chats),
        "dpo": write_jsonl(directory / "pairs.jsonl", pairs),
    }


def peak_rss_mb(workdir: Path, model: Path, data: Path, method: str) -> float:
    """Peak RSS (MB) of one ``python train.py`` of ``method``; raises if it fails."""
    config = {
        "model_id": str(model),
        "dataset_id": str(data),
        "project_name": "bench",
        "job_name": f"bench-{method}",
        "method": method,
        "hyperparameters": {**HYPERPARAMETERS, **({"dpo_beta": 0.1} if method == "dpo" else {})},
        "compute": {"accelerator": None, "gpu_count": None, "node_count": None},
    }
    peak, text = train_peak_rss_mb(workdir, model, data, config, method)
    if not any('"type":"step"' in line for line in text.splitlines()):
        raise RuntimeError(f"{method} run printed no step line")
    return peak


def run(runs: int = 2, examples: int = 8, hidden: int = 768, layers: int = 12) -> dict[str, Any]:
    peaks: dict[str, list[float]] = {"supervised": [], "dpo": []}
    with tempfile.TemporaryDirectory(prefix="bench-dpo-memory-") as tmp:
        root = Path(tmp)
        model = root / "model"
        weight_bytes = save_model(model, hidden, layers, max_positions=256)
        data = write_data(root, examples)
        for i in range(runs):
            for method in ("supervised", "dpo"):
                workdir = root / f"{method}-{i}"
                workdir.mkdir()
                peaks[method].append(peak_rss_mb(workdir, model, data[method], method))
    supervised = statistics.median(peaks["supervised"])
    dpo = statistics.median(peaks["dpo"])
    weights_mb = round(weight_bytes / (1 << 20), 1)
    return {
        "runs": runs,
        "examples": examples,
        "hidden": hidden,
        "layers": layers,
        "weights_mb": weights_mb,
        "supervised_peaks_mb": peaks["supervised"],
        "dpo_peaks_mb": peaks["dpo"],
        "supervised_peak_mb": supervised,
        "dpo_peak_mb": dpo,
        "ratio": round(dpo / supervised, 3),
        # What the ratio would be if DPO held a second copy of the model.
        "copy_ratio": round((supervised + weights_mb) / supervised, 3),
        "goal_ratio": GOAL_RATIO,
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
