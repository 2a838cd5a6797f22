"""train.py really fine-tunes: a tiny local Llama, on the CPU, run as the job runs it.

Each run is `python train.py` in a copy of the template with the job's environment
variables (RUNTIME_CONFIG, MODEL_ID, DATASET_ID, BT_CHECKPOINT_DIR) and no network.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import ft.config_io
import ft.launch
import ft.model
import pytest
from template_helpers import (
    EXAMPLE_RUNTIME_CONFIG,
    RunTrain,
    TrainRun,
    save_tiny_gpt_oss,
    sentence,
    write_jsonl,
)

pytestmark = pytest.mark.usefixtures("training_stack")

N_EXAMPLES = 24
TEXT_HP = {
    "learning_rate": 0.01,
    "num_epochs": 2,
    "batch_size": 2,
    "gradient_accumulation_steps": 3,
    "max_seq_length": 8,  # every sentence is 16 tokens + EOS, so truncation shows
    "lora_rank": 4,
    "lora_alpha": 8,
    "lora_dropout": 0.1,
    "seed": 7,
}
CHAT_HP = {
    **TEXT_HP,
    "num_epochs": 1,
    "batch_size": 4,
    "gradient_accumulation_steps": 1,
    "max_seq_length": 128,
    "lora_rank": 2,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
}


def runtime_config(dataset: Path, model: Path, hp: dict[str, Any]) -> dict[str, Any]:
    return {
        **EXAMPLE_RUNTIME_CONFIG,
        "dataset_id": str(dataset),
        "model_id": str(model),
        "hyperparameters": hp,
        "compute": {"accelerator": "H100", "gpu_count": 1, "node_count": 1},
    }


def job_env(dataset: Path, model: Path, hp: dict[str, Any]) -> dict[str, Any]:
    return {
        "DATASET_ID": str(dataset),
        "MODEL_ID": str(model),
        "RUNTIME_CONFIG": runtime_config(dataset, model, hp),
    }


@pytest.fixture(scope="module")
def text_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [{"text": sentence(i), "source": "test"} for i in range(N_EXAMPLES)]
    return write_jsonl(tmp_path_factory.mktemp("text-data") / "train.jsonl", rows)


@pytest.fixture(scope="module")
def text_run(run_train: RunTrain, tiny_model: Path, text_dataset: Path) -> TrainRun:
    run = run_train(**job_env(text_dataset, tiny_model, TEXT_HP))
    assert run.returncode == 0, run.describe()
    return run


@pytest.fixture(scope="module")
def chat_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shaped like HuggingFaceH4/Multilingual-Thinking: extra columns beside `messages`,
    saved with `save_to_disk` (a local dataset folder as DATASET_ID)."""
    from datasets import Dataset

    rows = [
        {
            "reasoning_language": "English",
            "user": sentence(i, 6),
            "messages": [
                {"role": "system", "content": sentence(i + 1, 4)},
                {"role": "user", "content": sentence(i, 6)},
                {"role": "assistant", "content": sentence(i + 2, 8)},
            ],
        }
        for i in range(N_EXAMPLES)
    ]
    path = tmp_path_factory.mktemp("chat-data") / "dataset"
    Dataset.from_list(rows).save_to_disk(str(path))
    return path


@pytest.fixture(scope="module")
def chat_run(run_train: RunTrain, tiny_model: Path, chat_dataset: Path) -> TrainRun:
    run = run_train(**job_env(chat_dataset, tiny_model, CHAT_HP))
    assert run.returncode == 0, run.describe()
    return run


# ----------------------------------------------------------------------- text


def test_text_run_logs_finite_decreasing_loss(text_run: TrainRun) -> None:
    losses = [record["loss"] for record in text_run.progress if "loss" in record]
    assert len(losses) == 8  # one log line per optimizer step
    assert all(math.isfinite(loss) for loss in losses)
    assert losses == pytest.approx(text_run.summary["losses"])
    assert math.isfinite(text_run.summary["train_loss"])
    assert losses[-1] < losses[0], "a learning rate of 0.01 should lower the loss"


def test_text_run_without_validation_has_token_accuracy_and_no_evaluation(
    text_run: TrainRun,
) -> None:
    """No validation set: no base or tuned evaluation, no samples, nulls in the summary;
    every step line still carries its token accuracy (every token carries loss here)."""
    assert all(0 <= record["mean_token_accuracy"] <= 1 for record in text_run.progress)
    assert not [r for r in text_run.metrics if r["type"] == "eval"]
    assert '"type":"sample"' not in text_run.stdout
    keys = ("base_eval_loss", "eval_loss", "base_eval_mean_token_accuracy")
    assert [text_run.summary_line[key] for key in keys] == [None, None, None]
    assert text_run.summary["eval_mean_token_accuracy"] is None
    assert text_run.summary["samples"] == []


def test_text_run_writes_adapter_and_tokenizer_checkpoints(text_run: TrainRun) -> None:
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "training_summary.json",
    ):
        assert (text_run.final_dir / name).is_file(), name
    # Resumable checkpoints, as the Baseten checkpoint list shows them: each epoch's end
    # (4, 8) and every ceil(8 / MIN_CHECKPOINTS) = 2 steps.
    saved = sorted(p.name for p in text_run.checkpoint_dir.glob("checkpoint-*"))
    assert saved == ["checkpoint-2", "checkpoint-4", "checkpoint-6", "checkpoint-8"]
    for name in saved:
        assert (text_run.checkpoint_dir / name / "adapter_model.safetensors").is_file()
        assert (text_run.checkpoint_dir / name / "tokenizer.json").is_file()


def test_text_run_applies_lora_hyperparameters(text_run: TrainRun, tiny_model: Path) -> None:
    adapter = json.loads((text_run.final_dir / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA"
    assert adapter["r"] == TEXT_HP["lora_rank"]
    assert adapter["lora_alpha"] == TEXT_HP["lora_alpha"]
    assert adapter["lora_dropout"] == pytest.approx(TEXT_HP["lora_dropout"])
    assert adapter["base_model_name_or_path"] == str(tiny_model)
    adapted = {module.rsplit(".", 1)[-1] for module in adapter["target_modules"]}
    assert {"q_proj", "v_proj", "down_proj"} <= adapted  # "all-linear"


def test_text_run_steps_follow_epochs_batch_size_and_accumulation(text_run: TrainRun) -> None:
    summary = text_run.summary
    # 24 examples / batch 2 = 12 batches; / accumulation 3 = 4 steps per epoch; x 2 epochs.
    assert summary["global_step"] == 8
    assert summary["global_step"] == ft.launch.expected_optimizer_steps(
        N_EXAMPLES, ft.config_io.Hyperparameters(**TEXT_HP)
    )
    assert summary["epochs"] == pytest.approx(TEXT_HP["num_epochs"])
    assert summary["hyperparameters"] == {
        **TEXT_HP,
        "validation_split": 0.0,
        "train_on_inputs": False,
        "dpo_beta": None,
        "eval_samples": 0,  # no validation set: none
    }
    assert summary["dataset_format"] == "text"


def test_text_run_applies_learning_rate_and_max_seq_length(text_run: TrainRun) -> None:
    records = text_run.progress
    peak = max(record["learning_rate"] for record in records if "learning_rate" in record)
    assert peak == pytest.approx(TEXT_HP["learning_rate"])
    # Every example is truncated to max_seq_length tokens, every epoch.
    tokens_seen = max(record["tokens_seen"] for record in records)
    assert tokens_seen == N_EXAMPLES * TEXT_HP["max_seq_length"] * TEXT_HP["num_epochs"]


def test_same_seed_reproduces_the_run_and_another_seed_does_not(
    run_train: RunTrain, text_run: TrainRun, tiny_model: Path, text_dataset: Path
) -> None:
    again = run_train(**job_env(text_dataset, tiny_model, TEXT_HP))
    assert again.returncode == 0, again.describe()
    assert again.summary["losses"] == pytest.approx(text_run.summary["losses"], rel=1e-5)

    other = run_train(**job_env(text_dataset, tiny_model, {**TEXT_HP, "seed": 8}))
    assert other.returncode == 0, other.describe()
    assert other.summary["losses"] != pytest.approx(text_run.summary["losses"], rel=1e-5)


# ----------------------------------------------------------------------- chat


def test_chat_run_trains_through_the_chat_template(chat_run: TrainRun) -> None:
    summary = chat_run.summary
    assert summary["dataset_format"] == "messages"
    # The first example, as trained on: rendered by the tokenizer's chat template.
    assert summary["first_example"].startswith("<|system|> ")
    assert "<|user|>" in summary["first_example"]
    assert "<|assistant|>" in summary["first_example"]
    assert summary["global_step"] == 6  # 24 examples / batch 4, one epoch
    assert all(math.isfinite(loss) for loss in summary["losses"])
    adapter = json.loads((chat_run.final_dir / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"]) == (2, 16)
    assert (chat_run.final_dir / "chat_template.jinja").is_file()


def test_recipe_shape_gpt_oss_on_multilingual_thinking_rows(
    run_train: RunTrain, tmp_path: Path
) -> None:
    """The recipe's example, in miniature: a GPT-OSS model (mixture of experts, attention
    sinks) on rows shaped like HuggingFaceH4/Multilingual-Thinking, as a JSONL file."""
    model = save_tiny_gpt_oss(tmp_path / "tiny-gpt-oss")
    rows = [
        {
            "reasoning_language": "English",
            "developer": sentence(i, 3),
            "user": sentence(i, 5),
            "analysis": sentence(i + 1, 5),
            "final": sentence(i + 2, 5),
            "messages": [
                {"role": "system", "content": sentence(i, 3), "thinking": None},
                {"role": "user", "content": sentence(i, 5), "thinking": None},
                {"role": "assistant", "content": sentence(i + 2, 5), "thinking": sentence(i, 5)},
            ],
        }
        for i in range(8)
    ]
    dataset = write_jsonl(tmp_path / "multilingual-thinking.jsonl", rows)
    hp = {**CHAT_HP, "batch_size": 2}
    run = run_train(**job_env(dataset, model, hp))
    assert run.returncode == 0, run.describe()
    summary = run.summary
    assert summary["dataset_format"] == "messages"
    assert summary["global_step"] == 4
    assert all(math.isfinite(loss) for loss in summary["losses"])
    adapter = json.loads((run.final_dir / "adapter_config.json").read_text())
    # "all-linear" on GPT-OSS: the attention projections (its experts are not nn.Linear).
    assert {m.rsplit(".", 1)[-1] for m in adapter["target_modules"]} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
    }


@pytest.mark.parametrize(
    ("quantization", "use_cuda", "bf16", "expected"),
    [
        (None, False, False, {"dtype": "float32"}),
        (None, True, True, {"dtype": "bfloat16"}),
        ({"quant_method": "mxfp4"}, True, True, {"dtype": "bfloat16", "mxfp4": True}),
        ({"quant_method": "mxfp4"}, False, False, {"dtype": "bfloat16", "mxfp4": True}),
    ],
)
def test_model_loading_options(
    monkeypatch: pytest.MonkeyPatch,
    quantization: Any,
    use_cuda: bool,
    bf16: bool,
    expected: dict[str, Any],
) -> None:
    """How the base model is loaded, without loading one: bf16 on GPUs, fp32 on the CPU,
    and MXFP4 checkpoints (openai/gpt-oss-*) dequantized to bf16 so LoRA can train."""
    import torch
    import transformers

    seen: dict[str, Any] = {}
    model = SimpleNamespace(config=SimpleNamespace(use_cache=True))

    def fake_model(model_id: str, **kwargs: Any) -> Any:
        seen.update(kwargs, model_id=model_id)
        return model

    model_config = SimpleNamespace(quantization_config=quantization)
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", lambda *a, **k: model_config)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_model)
    monkeypatch.delenv("LOCAL_RANK", raising=False)

    assert ft.model.load_model("openai/gpt-oss-20b", "hf_x", use_cuda, bf16) is model
    assert model.config.use_cache is False
    assert seen["model_id"] == "openai/gpt-oss-20b"
    assert seen["token"] == "hf_x"
    assert seen["dtype"] is getattr(torch, expected["dtype"])
    assert seen.get("device_map") == ({"": 0} if use_cuda else None)
    if expected.get("mxfp4"):
        assert isinstance(seen["quantization_config"], transformers.Mxfp4Config)
        assert seen["quantization_config"].dequantize is True
    else:
        assert "quantization_config" not in seen


# ----------------------------------------------------------------------- failures


def test_unsupported_dataset_shape_fails_with_one_line_naming_the_columns(
    run_train: RunTrain, tiny_model: Path, tmp_path: Path
) -> None:
    dataset = write_jsonl(
        tmp_path / "qa.jsonl", [{"question": sentence(i, 4), "answer": "fox"} for i in range(4)]
    )
    run = run_train(**job_env(dataset, tiny_model, TEXT_HP))
    assert run.returncode == 2, run.describe()
    last_line = run.stderr.strip().splitlines()[-1]
    assert last_line == (
        "train.py: error: unsupported dataset shape: expected a 'messages' column (chat), "
        "a 'text' column, 'prompt' and 'completion' columns, or preference pairs ('input', "
        "'preferred_output', 'non_preferred_output', or 'chosen' and 'rejected'), found "
        "columns: 'question', 'answer'"
    )
    assert "Traceback" not in run.stderr
    assert not run.final_dir.exists()


def test_chat_dataset_with_a_tokenizer_without_chat_template_fails_clearly(
    run_train: RunTrain, tiny_model_without_chat_template: Path, chat_dataset: Path
) -> None:
    run = run_train(**job_env(chat_dataset, tiny_model_without_chat_template, CHAT_HP))
    assert run.returncode == 2, run.describe()
    assert run.stderr.strip().splitlines()[-1] == (
        "train.py: error: the dataset is chat ('messages') but the model's tokenizer "
        "has no chat template"
    )
