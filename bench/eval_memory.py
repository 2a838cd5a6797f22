"""The samples' memory: peak RSS of a run with ``eval_samples: 5`` vs the same run with none.

After training, the template answers ``eval_samples`` held-out prompts twice (greedy,
up to 256 new tokens): with the base model, by switching the LoRA adapter off, and
with the tuned one. No second copy of the model is loaded, so the samples should
cost only generation's small working set (the KV cache of one prompt). This
measures it: the staged template's ``python train.py``, as the job runs it
(tests/template's ``prepare_job``), on the CPU, interleaved, ``runs`` times each:

* **baseline**: a supervised chat run with a validation_file and ``eval_samples: 0``
  (the base and tuned evaluations still run);
* **ours**: the same run with ``eval_samples: 5``.

The model is a Llama of ``hidden`` x ``layers`` over the test vocabulary (about 37 M
parameters, 149 MB of float32 weights by default): large enough that a second copy
would show (``copy_ratio``: what the ratio would be with one). The figure is each
process's peak resident set (``ru_maxrss`` from ``wait4``: that process alone); the
ratio is the median peak with samples over the median without (goal <= 1.1).

Run alone: ``python -m bench.eval_memory``.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.train_memory import HYPERPARAMETERS, save_model, train_peak_rss_mb
from tests.template.template_helpers import sentence, write_jsonl

GOAL_RATIO = 1.1
SAMPLES = 5


def _chats(directory: Path, name: str, first: int, count: int) -> Path:
    rows = [
        {
            "messages": [
                {"role": "user", "content": sentence(i, 12)},
                {"role": "assistant", "content": sentence(i + 7, 12)},
            ]
        }
        for i in range(first, first + count)
    ]
    return write_jsonl(directory / name, rows)


def peak_rss_mb(
    workdir: Path, model: Path, train: Path, held_out: Path, samples: int
) -> tuple[float, int]:
    """(peak RSS in MB, sample lines printed) of one ``python train.py``; raises if it fails."""
    data = held_out.read_bytes()
    config = {
        "model_id": str(model),
        "dataset_id": str(train),
        "project_name": "bench",
        "job_name": f"bench-eval-samples-{samples}",
        "method": "supervised",
        "hyperparameters": {**HYPERPARAMETERS, "eval_samples": samples},
        "validation_file": {
            "source": "file-bench-eval",
            "url": held_out.as_uri(),
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "format": "chat",
        },
        "compute": {"accelerator": None, "gpu_count": None, "node_count": None},
    }
    peak, text = train_peak_rss_mb(workdir, model, train, config, f"eval_samples {samples}")
    if '"model":"base"' not in text:
        raise RuntimeError(f"eval_samples {samples} run printed no base evaluation")
    printed = text.count('"type":"sample"')
    if printed != samples:
        raise RuntimeError(f"eval_samples {samples} run printed {printed} sample line(s)")
    return peak, printed


def run(runs: int = 2, examples: int = 8, hidden: int = 768, layers: int = 6) -> dict[str, Any]:
    peaks: dict[int, list[float]] = {0: [], SAMPLES: []}
    with tempfile.TemporaryDirectory(prefix="bench-eval-memory-") as tmp:
        root = Path(tmp)
        model = root / "model"
        weight_bytes = save_model(model, hidden, layers, max_positions=512)
        train = _chats(root, "train.jsonl", 0, examples)
        held_out = _chats(root, "eval.jsonl", 100, SAMPLES)
        for i in range(runs):
            for samples in (0, SAMPLES):
                workdir = root / f"samples-{samples}-{i}"
                workdir.mkdir()
                peak, _ = peak_rss_mb(workdir, model, train, held_out, samples)
                peaks[samples].append(peak)
    without = statistics.median(peaks[0])
    with_samples = statistics.median(peaks[SAMPLES])
    weights_mb = round(weight_bytes / (1 << 20), 1)
    return {
        "runs": runs,
        "examples": examples,
        "eval_samples": SAMPLES,
        "hidden": hidden,
        "layers": layers,
        "weights_mb": weights_mb,
        "without_samples_peaks_mb": peaks[0],
        "with_samples_peaks_mb": peaks[SAMPLES],
        "without_samples_peak_mb": without,
        "with_samples_peak_mb": with_samples,
        "ratio": round(with_samples / without, 3),
        # What the ratio would be if the base answers came from a second copy of the model.
        "copy_ratio": round((without + weights_mb) / without, 3),
        "goal_ratio": GOAL_RATIO,
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
