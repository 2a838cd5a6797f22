"""What the train.py memory benches share: the model they train, the hyperparameters,
and the peak resident set of one staged ``python train.py`` run.

The run is the staged template's ``python train.py`` as the job runs it
(tests/template's ``prepare_job``: the job's working area and environment), on the
CPU; its figure is the process's peak resident set (``ru_maxrss`` from ``wait4``:
that process alone). Used by ``bench.dpo_memory`` and ``bench.eval_memory``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.template.template_helpers import build_tokenizer, prepare_job

HYPERPARAMETERS = {
    "learning_rate": 0.0001,
    "num_epochs": 1,
    "batch_size": 2,
    "gradient_accumulation_steps": 1,
    "max_seq_length": 64,
    "lora_rank": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
    "seed": 3,
}


def save_model(directory: Path, hidden: int, layers: int, max_positions: int) -> int:
    """A Llama of the test vocabulary at ``hidden`` x ``layers``; returns its weight bytes."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(directory)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3,
        num_hidden_layers=layers,
        num_attention_heads=max(hidden // 64, 1),
        num_key_value_heads=max(hidden // 128, 1),
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    return sum(p.numel() * p.element_size() for p in model.parameters())


def train_peak_rss_mb(
    workdir: Path, model: Path, data: Path, config: dict[str, Any], what: str
) -> tuple[float, str]:
    """(peak RSS in MB, printed output) of one ``python train.py`` of ``config``
    (``RUNTIME_CONFIG``); raises, naming ``what``, if it fails."""
    app, env, _ = prepare_job(
        workdir, {"RUNTIME_CONFIG": config, "MODEL_ID": str(model), "DATASET_ID": str(data)}
    )
    out_path = workdir / "out.txt"
    with out_path.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "train.py"], cwd=app, env=env, stdout=out, stderr=subprocess.STDOUT
        )
        _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    text = out_path.read_text()
    if code != 0:
        raise RuntimeError(f"{what} run failed (exit {code}):\n{text[-3000:]}")
    return round(usage.ru_maxrss / 1024, 1), text  # Linux: kilobytes
