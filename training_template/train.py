"""Fine-tuning with LoRA, supervised or by preference (DPO): the Baseten training job's
entry point. RUNTIME_CONFIG's ``method`` ("supervised", the default, or "dpo") picks
the trainer (ft/methods.py).

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
shape stops the job with a one-line reason. A "dpo" job trains on preference pairs
(OpenAI's ``input`` / ``preferred_output`` / ``non_preferred_output``, or TRL's
``prompt`` / ``chosen`` / ``rejected``) and nothing else (ft/dpo.py).
``validation_file``, when given, is the evaluation set (instead of
``validation_split``).

Writes, under BT_CHECKPOINT_DIR, a resumable ``checkpoint-<step>`` at each epoch's end
and at least every quarter of the run (adapter, optimizer, scheduler, RNG state,
trainer_state.json and this script's ``ft_checkpoint.json`` marker), and ``final/``
(LoRA adapter, tokenizer, training_summary.json). With a checkpoint under
BT_LOAD_CHECKPOINT_DIR the run restores all of that and continues at the next step.

Progress is reported in machine-readable log lines: the marker ``FT_METRICS`` and one
JSON object, one line per optimizer step (``type`` "step": step, total_steps, epoch,
loss, learning_rate, grad_norm, tokens_per_second, tokens_seen, mean_token_accuracy;
a dpo job adds rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies),
one per evaluation (``type`` "eval": step, total_steps, epoch, eval_loss,
eval_mean_token_accuracy, model; with a validation set, the base model's before the
first step, ``"model": "base"``, then the tuned one's at each epoch's end), one per
held-out prompt answered after training by the base and the tuned model (``type``
"sample": index, prompt, reference, base, tuned; up to ``eval_samples``) and one at the
end (``type`` "summary": step, total_steps, epoch, final_loss, best_eval_loss,
runtime_seconds, base_eval_loss, eval_loss, base_eval_mean_token_accuracy,
eval_mean_token_accuracy; final_loss is the loss of the last step line). See
ft/evaluation.py. The service reads these lines from the job's log for GET .../metrics,
.../evaluation, progress and events; a custom script can print the same. With a wandb
entry in ``integrations`` the same records go to W&B (ft/tracking.py).

Uses bf16 on GPUs that support it, every GPU of every node (it re-launches itself
under torchrun when there are several), and the CPU when there is no GPU.

The parts live in the ``ft`` package beside this file (see ft/__init__.py); this
script puts its own folder on sys.path, so ``python train.py`` in the uploaded folder
and an import of this file from elsewhere both find it. Only the standard library is
imported at module level, here and in ``ft``, so tests and tools can import the pure
helpers without torch.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from ft.config_io import load_runtime_config  # noqa: E402 (needs the path above)
from ft.errors import EXIT_USAGE, TemplateError  # noqa: E402
from ft.launch import configure_logging, distributed_launch_command  # noqa: E402
from ft.run import prepare, train  # noqa: E402

log = logging.getLogger("train")


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
