"""What carries loss, proven by training: `python train.py` in a copy of the template,
as the Baseten job runs it, on the CPU, with the tiny Llama whose chat template
renders tools (tests/template/template_helpers.py)."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest
from template_helpers import EXAMPLE_RUNTIME_CONFIG, WORDS, RunTrain, TrainRun, write_jsonl

pytestmark = pytest.mark.usefixtures("training_stack")

N = 16
ANSWER = "the quick brown fox"  # what the assistant always says
HP = {
    "learning_rate": 0.05,
    "num_epochs": 4,
    "batch_size": 4,
    "gradient_accumulation_steps": 1,
    "max_seq_length": 192,
    "lora_rank": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
    "seed": 3,
}


def noise(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def run_on(run_train: RunTrain, model: Path, data: Path, **hyperparameters: Any) -> TrainRun:
    hp = {**HP, **hyperparameters}
    config = {
        **EXAMPLE_RUNTIME_CONFIG,
        "dataset_id": str(data),
        "model_id": str(model),
        "hyperparameters": hp,
    }
    return run_train(DATASET_ID=str(data), MODEL_ID=str(model), RUNTIME_CONFIG=config)


def final_loss(run: TrainRun) -> float:
    assert run.returncode == 0, run.describe()
    loss = run.summary_line["final_loss"]
    assert isinstance(loss, float) and math.isfinite(loss)
    return loss


@pytest.fixture(scope="module")
def fixed_answer_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """User turns of random words; the assistant always answers ANSWER."""
    rng = random.Random(0)
    rows = [
        {
            "messages": [
                {"role": "user", "content": noise(rng, 24)},
                {"role": "assistant", "content": ANSWER},
            ]
        }
        for _ in range(N)
    ]
    return write_jsonl(tmp_path_factory.mktemp("fixed-answer") / "train.jsonl", rows)


@pytest.fixture(scope="module")
def default_run(run_train: RunTrain, tiny_tools_model: Path, fixed_answer_data: Path) -> TrainRun:
    return run_on(run_train, tiny_tools_model, fixed_answer_data)


def test_by_default_only_the_answer_carries_loss(
    run_train: RunTrain, tiny_tools_model: Path, fixed_answer_data: Path, default_run: TrainRun
) -> None:
    """Learning a fixed answer is easy; predicting random words is not: with the user's
    tokens in the loss the final loss stays far higher."""
    answer_only = final_loss(default_run)
    everything = final_loss(
        run_on(run_train, tiny_tools_model, fixed_answer_data, train_on_inputs=True)
    )
    assert answer_only < 0.25 * everything, (answer_only, everything)
    assert default_run.summary["hyperparameters"]["train_on_inputs"] is False


def test_a_weight_0_assistant_turn_does_not_raise_the_loss(
    run_train: RunTrain, tiny_tools_model: Path, default_run: TrainRun, tmp_path: Path
) -> None:
    rng = random.Random(1)
    rows = [
        {
            "messages": [
                {"role": "user", "content": noise(rng, 8)},
                {"role": "assistant", "content": noise(rng, 40), "weight": 0},
                {"role": "user", "content": noise(rng, 8)},
                {"role": "assistant", "content": ANSWER},
            ]
        }
        for _ in range(N)
    ]
    run = run_on(run_train, tiny_tools_model, write_jsonl(tmp_path / "w0.jsonl", rows))
    with_weight_0 = final_loss(run)
    # Were the 40 random words in the loss, each would cost at least ln(24) ≈ 3.2 (a
    # uniform choice among the 24 words) and they would be most of the loss's tokens:
    # the loss could not fall below about 2.7. Without them it falls as the default
    # run's does.
    assert with_weight_0 < 1.0, (with_weight_0, final_loss(default_run))


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "jumps",
            "description": "makes the fox jump",
            "parameters": {
                "type": "object",
                "properties": {"over": {"type": "string"}},
                "required": ["over"],
            },
        },
    }
]


def tool_rows(n: int) -> list[dict[str, Any]]:
    rng = random.Random(2)
    rows = []
    for i in range(n):
        target = rng.choice(WORDS)
        call = {
            "id": f"call_{i}",
            "type": "function",
            "function": {"name": "jumps", "arguments": f'{{"over": "{target}"}}'},
        }
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": "the fox helps"},
                    {"role": "user", "content": f"jump over the {target}"},
                    {"role": "assistant", "content": None, "tool_calls": [call]},
                    {"role": "tool", "tool_call_id": f"call_{i}", "content": "jumped"},
                    {"role": "assistant", "content": f"the fox jumps over the {target}"},
                ],
                "tools": TOOLS,
                "parallel_tool_calls": False,
            }
        )
    return rows


def test_a_tool_calling_data_set_trains_to_the_end(
    run_train: RunTrain, tiny_tools_model: Path, tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "tools.jsonl", tool_rows(8))
    run = run_on(run_train, tiny_tools_model, data, num_epochs=1)
    final_loss(run)
    assert run.summary["global_step"] == run.summary["total_steps"] == 2
    assert [record["step"] for record in run.progress] == [1, 2]
    assert run.summary["num_examples"] == 8
    assert "<tool_call>" in run.summary["first_example"]
    assert (run.final_dir / "adapter_model.safetensors").is_file()


def test_a_template_that_cannot_render_tool_calls_stops_the_job_at_once(
    run_train: RunTrain, tiny_model: Path, tmp_path: Path
) -> None:
    """The other tiny model's template renders role and content only."""
    data = write_jsonl(tmp_path / "tools.jsonl", tool_rows(4))
    run = run_on(run_train, tiny_model, data)
    assert run.returncode == 2, run.describe()
    assert run.error_line.startswith(
        "train.py: error: the model's chat template cannot render tools"
    ), run.error_line
    assert "Traceback" not in run.stderr
    assert not run.checkpoint_dir.exists() or not any(run.checkpoint_dir.iterdir())
