"""Did it get better? The base model beside the tuned one, inside the job (ft/evaluation.py).

One real CPU run of the staged train.py (as Baseten runs it) on the tiny Llama, with a
chat validation_file, ``eval_samples: 1`` and a W&B integration in W&B's offline mode.
What it prints is checked against an independent computation in this process: the
token accuracy over the tokens that carry loss, and the greedy answers of the base
model and of the saved adapter. The W&B run's own files are read back.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import ft.config_io
import ft.errors
import ft.evaluation
import ft.tracking
import pytest
from template_helpers import (
    EXAMPLE_RUNTIME_CONFIG,
    TEMPLATE_DIR,
    RunTrain,
    TrainRun,
    build_tokenizer,
    sentence,
    write_jsonl,
)
from test_template_metrics import served  # noqa: F401 (a fixture: this module's run, served)
from test_template_user_data import file_entry

from finetune_api.insights.training_metrics import MARKER
from tests.wandb_runs import offline_records

REFERENCE = "the quick brown fox jumps over"
HP = {
    **EXAMPLE_RUNTIME_CONFIG["hyperparameters"],
    "learning_rate": 0.1,
    "num_epochs": 2,
    "batch_size": 4,
    "gradient_accumulation_steps": 1,
    "max_seq_length": 32,
    "lora_rank": 4,
    "lora_alpha": 8,
    "lora_dropout": 0.0,
    "seed": 3,
    "eval_samples": 1,
}
WANDB = {"type": "wandb", "wandb": {"project": "tuning", "name": "eval-run", "tags": ["cpu"]}}


def chat(i: int, weight_last: int | None = None) -> dict[str, Any]:
    """A learnable chat: whatever the user says, the assistant answers REFERENCE."""
    answer: dict[str, Any] = {"role": "assistant", "content": REFERENCE}
    if weight_last is not None:
        answer["weight"] = weight_last
    return {"messages": [{"role": "user", "content": sentence(i, 4)}, answer]}


def records(run: TrainRun, kind: str) -> list[dict[str, Any]]:
    """The run's FT_METRICS records of one type, as printed (sample lines included)."""
    found = []
    for line in run.stdout.splitlines():
        if MARKER in line:
            record = json.loads(line[line.index(MARKER) + len(MARKER) :])
            if record["type"] == kind:
                found.append(record)
    return found


@pytest.fixture(scope="module")
def eval_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("eval-data")
    train = write_jsonl(folder / "train.jsonl", [chat(i) for i in range(16)])
    held_out = write_jsonl(folder / "eval.jsonl", [chat(i) for i in range(100, 104)])
    return train, held_out


@pytest.fixture(scope="module")
def run(
    run_train: RunTrain,
    tiny_model: Path,
    eval_files: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> TrainRun:
    train, held_out = eval_files
    config = {
        **EXAMPLE_RUNTIME_CONFIG,
        "dataset_id": str(train),
        "model_id": str(tiny_model),
        "hyperparameters": HP,
        "validation_file": file_entry(held_out, held_out.as_uri(), source="file-eval"),
        "integrations": [WANDB],
    }
    wandb_dir = tmp_path_factory.mktemp("wandb")
    done = run_train(
        DATASET_ID=str(train),
        MODEL_ID=str(tiny_model),
        RUNTIME_CONFIG=config,
        WANDB_MODE="offline",
        WANDB_DIR=str(wandb_dir),
        WANDB_API_KEY=None,
    )
    assert done.returncode == 0, done.describe()
    done.wandb_dir = wandb_dir  # type: ignore[attr-defined]
    return done


def test_the_base_model_is_evaluated_at_step_0_then_the_tuned_one_at_each_epoch_end(
    run: TrainRun,
) -> None:
    evals = records(run, "eval")
    assert [(e["model"], e["step"], e["epoch"]) for e in evals] == [
        ("base", 0, 0.0),
        ("tuned", 4, 1.0),
        ("tuned", 8, 2.0),
    ]
    for record in evals:
        assert 0 <= record["eval_mean_token_accuracy"] <= 1
        assert record["total_steps"] == 8
    base, last = evals[0], evals[-1]
    # A learnable data set: the tuned model does better on held-out chats.
    assert last["eval_loss"] < base["eval_loss"]
    assert last["eval_mean_token_accuracy"] > base["eval_mean_token_accuracy"]


def test_every_step_line_carries_its_token_accuracy(run: TrainRun) -> None:
    steps = records(run, "step")
    assert [s["step"] for s in steps] == list(range(1, 9))
    for step in steps:
        assert isinstance(step["mean_token_accuracy"], float)
        assert 0 <= step["mean_token_accuracy"] <= 1


def _accuracy_and_answers(
    model_dir: Path, adapter: Path | None, held_out: Path, prompts: list[str]
) -> tuple[float, float, list[str]]:
    """Independently of the template's evaluation: (loss, token accuracy over the
    tokens that carry loss, greedy answers) of the base model or base + adapter."""
    import torch
    from ft.labels import IGNORE_INDEX, label_example
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    correct = counted = 0
    loss_sum = 0.0
    rows = [json.loads(line) for line in held_out.read_text().splitlines()]
    with torch.no_grad():
        for row in rows:
            example = label_example(row, "messages", tokenizer)
            ids = torch.tensor([example["input_ids"][:32]])
            labels = torch.tensor([example["labels"][:32]])
            logits = model(input_ids=ids).logits[0, :-1]
            target = labels[0, 1:]
            carried = target != IGNORE_INDEX
            correct += int((logits.argmax(-1)[carried] == target[carried]).sum())
            counted += int(carried.sum())
            loss_sum += float(
                torch.nn.functional.cross_entropy(logits[carried], target[carried], reduction="sum")
            )
        answers = []
        for prompt in prompts:
            ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
            out = model.generate(
                input_ids=ids,
                max_new_tokens=min(256, model.config.max_position_embeddings - ids.shape[1]),
                do_sample=False,
                pad_token_id=0,
                use_cache=True,
            )
            answers.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    # One batch: the loss over all its tokens that carry loss, as the trainer's.
    return loss_sum / counted, correct / counted, answers


def test_accuracy_counts_the_tokens_that_carry_loss_and_samples_are_each_models_answers(
    run: TrainRun, tiny_model: Path, eval_files: tuple[Path, Path]
) -> None:
    _, held_out = eval_files
    evals = records(run, "eval")
    samples = records(run, "sample")
    assert [s["index"] for s in samples] == [0]  # eval_samples: 1 of the 4 held out
    prompts = [s["prompt"] for s in samples]
    for sample, i in zip(samples, (100,), strict=True):
        # The chat up to its last weighted assistant turn, with the generation prompt.
        assert sample["prompt"] == f"<|user|> {sentence(i, 4)} </s> <|assistant|> "
        assert sample["reference"] == REFERENCE
    # The eval set is one batch (4 examples, batch_size 4): the batch mean is the mean.
    loss, accuracy, answers = _accuracy_and_answers(tiny_model, None, held_out, prompts)
    assert evals[0]["eval_mean_token_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert evals[0]["eval_loss"] == pytest.approx(loss, rel=1e-4)
    assert [s["base"] for s in samples] == answers
    loss, accuracy, answers = _accuracy_and_answers(tiny_model, run.final_dir, held_out, prompts)
    assert evals[-1]["eval_mean_token_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert [s["tuned"] for s in samples] == answers
    assert [s["tuned"] for s in samples] != [s["base"] for s in samples]


def test_the_summary_line_and_file_name_base_and_tuned(run: TrainRun) -> None:
    evals = records(run, "eval")
    expected = {
        "base_eval_loss": evals[0]["eval_loss"],
        "eval_loss": evals[-1]["eval_loss"],
        "base_eval_mean_token_accuracy": evals[0]["eval_mean_token_accuracy"],
        "eval_mean_token_accuracy": evals[-1]["eval_mean_token_accuracy"],
    }
    [summary] = records(run, "summary")
    assert {key: summary[key] for key in expected} == expected
    assert summary["best_eval_loss"] == min(e["eval_loss"] for e in evals[1:])  # tuned only
    saved = run.summary
    assert {key: saved[key] for key in expected} == expected
    assert saved["samples"] == records(run, "sample")


def test_the_evaluation_route_answers_from_the_runs_own_lines(
    run: TrainRun,
    served: tuple[str, str],  # noqa: F811 (the fixture imported above)
) -> None:
    """The run's stdout as a sandbox job's log: GET .../evaluation reads it back."""
    import finetune_api

    job_evaluation = getattr(finetune_api, "job_evaluation", None)
    if job_evaluation is None:
        pytest.skip("GET /jobs/{p}/{j}/evaluation is built on branch wt-eval-service")
    answer = job_evaluation(*served)
    evals = records(run, "eval")
    names = ("eval_loss", "eval_mean_token_accuracy")
    assert {k: answer["base"][k] for k in names} == {k: evals[0][k] for k in names}
    assert {k: answer["tuned"][k] for k in names} == {k: evals[-1][k] for k in names}
    assert answer["change"]["eval_loss"] == pytest.approx(
        evals[-1]["eval_loss"] - evals[0]["eval_loss"], abs=1e-6
    )
    texts = ("prompt", "reference", "base", "tuned")
    assert [{k: s[k] for k in texts} for s in answer["samples"]] == [
        {k: s[k] for k in texts} for s in records(run, "sample")
    ]


def test_the_run_reports_every_step_and_evaluation_to_wandb_offline(run: TrainRun) -> None:
    [run_file] = Path(run.wandb_dir).glob("wandb/offline-run-*/run-*.wandb")  # type: ignore[attr-defined]
    found = offline_records(run_file)
    [started] = [r.run for r in found if r.WhichOneof("record_type") == "run"]
    assert (started.project, started.display_name, list(started.tags)) == (
        "tuning",
        "eval-run",
        ["cpu"],
    )
    history = {}
    for record in found:
        if record.WhichOneof("record_type") == "history":
            items = {
                "/".join(i.nested_key) or i.key: json.loads(i.value_json)
                for i in record.history.item
            }
            history.setdefault(items["_step"], {}).update(items)
    for step in records(run, "step"):
        assert history[step["step"]]["train/loss"] == pytest.approx(step["loss"])
        assert history[step["step"]]["train/mean_token_accuracy"] == pytest.approx(
            step["mean_token_accuracy"]
        )
    evals = records(run, "eval")
    assert history[0]["base/eval_loss"] == pytest.approx(evals[0]["eval_loss"])
    assert history[8]["eval/loss"] == pytest.approx(evals[-1]["eval_loss"])
    # The samples as one table (its rows in the run's files).
    [table] = [row for row in history.values() if "samples/nrows" in row]
    assert table["samples/nrows"] == len(records(run, "sample")) == 1
    # The job's stdout stays the service's: W&B captured no console.
    assert not list(Path(run.wandb_dir).glob("wandb/offline-run-*/files/output.log"))  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- pure parts


def test_a_sample_is_the_chat_up_to_its_last_weighted_assistant_turn() -> None:
    tokenizer = build_tokenizer()
    messages = [
        {"role": "system", "content": "quiet"},
        {"role": "user", "content": "the fox"},
        {"role": "assistant", "content": "a dog"},
        {"role": "user", "content": "the sea"},
        {"role": "assistant", "content": "wide hills", "weight": 0},
    ]
    prompt = ft.evaluation.sample_prompt({"messages": messages}, "messages", tokenizer)
    assert prompt is not None
    assert prompt.text == "<|system|> quiet </s> <|user|> the fox </s> <|assistant|> "
    assert (prompt.reference, prompt.add_special_tokens) == ("a dog", False)
    weightless = [m | {"weight": 0} if m["role"] == "assistant" else m for m in messages]
    assert ft.evaluation.sample_prompt({"messages": weightless}, "messages", tokenizer) is None
    pc = ft.evaluation.sample_prompt(
        {"prompt": "the fox", "completion": " runs"}, "prompt_completion", tokenizer
    )
    assert pc == ft.evaluation.SamplePrompt("the fox", " runs", add_special_tokens=True)
    assert ft.evaluation.sample_prompt({"text": "the fox"}, "text", tokenizer) is None
    rows = [{"messages": weightless}, {"messages": messages}, {"messages": messages}]
    assert [p.reference for p in ft.evaluation.sample_prompts(rows, "messages", tokenizer, 5)] == [
        "a dog",
        "a dog",
    ]
    assert ft.evaluation.sample_prompts(rows, "messages", tokenizer, 0) == []


def test_sample_texts_are_cut_at_2000_characters() -> None:
    short = "x" * 2000
    assert ft.evaluation.cut(short) == short
    long = "a" * 10 + "b" * 3000 + "z" * 10
    assert ft.evaluation.cut(long) == "a" * 10 + "b" * 1989 + "…"
    assert ft.evaluation.cut(long, keep_end=True) == "…" + "b" * 1989 + "z" * 10
    assert len(ft.evaluation.cut(long)) == len(ft.evaluation.cut(long, keep_end=True)) == 2000


def test_the_base_model_is_the_adapter_switched_off_even_when_it_is_not_zero(
    tiny_model: Path,
) -> None:
    """A resumed job's adapter is not zero: base_model() still gives the base's logits."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    ids = torch.tensor([[2, 5, 6, 7, 8]])
    plain = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = plain(input_ids=ids).logits
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), config
    ).eval()
    with torch.no_grad():
        # Fresh: LoRA's B is zero, so the adapter changes nothing yet.
        assert torch.allclose(model(input_ids=ids).logits, expected)
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.normal_()
        assert not torch.allclose(model(input_ids=ids).logits, expected)
        with ft.evaluation.base_model(model):
            assert torch.allclose(model(input_ids=ids).logits, expected)
        assert not torch.allclose(model(input_ids=ids).logits, expected)


@pytest.mark.parametrize(
    ("value", "has_validation", "expected"),
    [(None, True, 5), (None, False, 0), (0, True, 0), (50, True, 50), (3, False, 0)],
)
def test_eval_samples_default_to_5_with_a_validation_set(
    value: int | None, has_validation: bool, expected: int
) -> None:
    hp = ft.config_io.parse_hyperparameters({"eval_samples": value})
    assert ft.config_io.resolve_eval_samples(hp, has_validation) == expected


@pytest.mark.parametrize("value", [-1, 51, 2.5, True, "5"])
def test_eval_samples_outside_0_to_50_stop_the_job(value: Any) -> None:
    with pytest.raises(ft.errors.TemplateError, match="eval_samples"):
        ft.config_io.parse_hyperparameters({"eval_samples": value})


def _config(integrations: Any) -> Any:
    raw = {**EXAMPLE_RUNTIME_CONFIG, "integrations": integrations}
    return ft.config_io.load_runtime_config({"RUNTIME_CONFIG": json.dumps(raw)})


@pytest.mark.parametrize(
    ("integrations", "message"),
    [
        ({"type": "wandb"}, "'integrations' must be a list"),
        ([{"type": "comet"}], r"integrations\[0\] has type 'comet'"),
        ([{"type": "wandb", "wandb": {}}], r"integrations\[0\]\.wandb needs a 'project'"),
        ([{"type": "wandb", "wandb": {"project": "p", "tags": [1]}}], "tags must be strings"),
        ([WANDB, WANDB], "more than one wandb entry"),
    ],
)
def test_malformed_integrations_stop_the_job(integrations: Any, message: str) -> None:
    with pytest.raises(ft.errors.TemplateError, match=message):
        ft.tracking.check_integrations(_config(integrations), {"WANDB_MODE": "offline"})


def test_wandb_without_its_key_stops_the_job_before_training() -> None:
    with pytest.raises(ft.errors.TemplateError, match="needs WANDB_API_KEY") as caught:
        ft.tracking.check_integrations(_config([WANDB]), {"WANDB_API_KEY": ""})
    assert "WANDB_API_KEY_SECRET_NAME" in str(caught.value)


def test_wandb_is_imported_only_when_asked_for() -> None:
    """Without an integration nothing imports wandb (a fresh interpreter shows it)."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import ft.config_io, ft.run; "
        "c = ft.config_io.load_runtime_config({'RUNTIME_CONFIG': sys.argv[2]}); "
        "ft.tracking.check_integrations(c, {'WANDB_MODE': 'offline'}); "
        "assert ft.tracking.start_reporting(c) is None; print('wandb' in sys.modules)"
    )
    for integrations, imported in (([], "False"), ([WANDB], "True")):
        raw = json.dumps({**EXAMPLE_RUNTIME_CONFIG, "integrations": integrations})
        if integrations:
            code = code.replace("assert ft.tracking.start_reporting(c) is None; ", "")
        out = subprocess.run(
            [sys.executable, "-c", code, str(TEMPLATE_DIR), raw],
            capture_output=True,
            text=True,
            check=True,
            env={"WANDB_MODE": "offline", "PATH": "/usr/bin:/bin"},
            timeout=60,
        )
        assert out.stdout.strip() == imported
    assert ft.tracking.install_command()[-1] == "wandb==0.31.0"
