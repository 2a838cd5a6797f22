"""Preference tuning (``method: "dpo"``): pairs → tokens, and train.py's DPO runs on the CPU.

The unit tests turn OpenAI's DPO lines (and TRL's preference rows) into the
tokens DPOTrainer trains on, on the tiny tokenizer with its real chat template.
The CPU proof runs ``python train.py`` as the job does, on a ``preference`` file
served as a ``file://`` URL (as runtime_config.json names the user's file):

- a DPO job of 4 steps trains to the end; every step line carries ``loss`` and the
  four reward metrics as numbers; step 1's rewards are exactly 0 (the LoRA adapter
  starts at zero, so the policy *is* the reference: the base model with the
  adapter off) and the margin grows after it; the summary line repeats the last
  step's rewards; final/ holds the adapter;
- a new job resuming from that run's checkpoint-2 continues at step 3 and
  reproduces steps 3-4 (loss and rewards);
- a chat file given to a dpo job, and a preference file to a supervised one, stop
  the job at once with exit 2 and one line.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import ft.checkpoints
import ft.config_io
import ft.data
import ft.dpo
import ft.errors
import ft.metrics
import pytest
from template_helpers import EXAMPLE_RUNTIME_CONFIG, WORDS, RunTrain, TrainRun, write_jsonl

REWARDS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")
HP = {
    "learning_rate": 0.02,
    "num_epochs": 1,
    "batch_size": 2,
    "gradient_accumulation_steps": 1,
    "max_seq_length": 64,
    "lora_rank": 4,
    "lora_alpha": 8,
    "lora_dropout": 0.0,
    "seed": 11,
    "dpo_beta": 0.1,
}
N_PAIRS = 8  # / batch 2 = 4 steps; a checkpoint after every step (ceil(4 / 4) = 1)
TOTAL_STEPS = 4
PREFERRED = "the quick brown fox"
RESUME_FROM = {
    "training_project_id": "proj-1",
    "training_job_id": "job-dpo",
    "checkpoint_id": "checkpoint-2",
}


def words(i: int, n: int) -> str:
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(n))


def openai_pair(i: int) -> dict[str, Any]:
    """OpenAI's DPO line: the preferred answer is always the same phrase."""
    return {
        "input": {"messages": [{"role": "user", "content": words(i, 6)}]},
        "preferred_output": [{"role": "assistant", "content": PREFERRED}],
        "non_preferred_output": [{"role": "assistant", "content": words(i + 3, 4)}],
    }


# ----------------------------------------------------------------------- rows → pairs


def test_an_openai_line_becomes_prompt_chosen_rejected() -> None:
    line = {
        "input": {
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
                {"role": "user", "content": "where is it", "name": "ann"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "find", "arguments": '{"q": "it"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "here"},
            ],
            "tools": [{"type": "function", "function": {"name": "find", "parameters": {}}}],
            "parallel_tool_calls": False,
        },
        "preferred_output": [{"role": "assistant", "content": "here it is", "weight": 1}],
        "non_preferred_output": [{"role": "assistant", "content": "no idea"}],
    }
    pair = ft.dpo.pair_from_openai(line, "training_file line 1")
    # The messages as given; ft.labels.chat_messages normalizes them when the pair is
    # tokenized, as it does for supervised chat (see the tools test below).
    assert pair.prompt == line["input"]["messages"]
    assert pair.chosen == line["preferred_output"]
    assert pair.rejected == line["non_preferred_output"]
    assert pair.tools == line["input"]["tools"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"preferred_output": [{"role": "assistant", "content": "a"}] * 2},
            "line 3: preferred_output must hold exactly one assistant message",
        ),
        (
            {"non_preferred_output": [{"role": "user", "content": "a"}]},
            "line 3: non_preferred_output must hold exactly one assistant message",
        ),
        (
            {"input": {"messages": [{"role": "assistant", "content": "a"}]}},
            "line 3: input.messages must end with a user or tool message",
        ),
        ({"input": {"messages": []}}, "line 3: input.messages must be a non-empty list"),
    ],
)
def test_a_malformed_pair_is_refused_naming_the_line(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ft.errors.TemplateError) as caught:
        ft.dpo.pair_from_openai({**openai_pair(0), **change}, "training_file line 3")
    assert message in str(caught.value)


def test_trl_rows_with_and_without_a_prompt_column() -> None:
    user = {"role": "user", "content": "hi"}
    good, bad = {"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}
    explicit = ft.dpo.pair_from_trl({"prompt": [user], "chosen": [good], "rejected": [bad]}, "r")
    implicit = ft.dpo.pair_from_trl({"chosen": [user, good], "rejected": [user, bad]}, "r")
    assert explicit == implicit == ft.dpo.PreferencePair([user], [good], [bad])
    text = ft.dpo.pair_from_trl({"prompt": "p", "chosen": "a", "rejected": "b"}, "r")
    assert not text.conversational
    assert ft.dpo.preference_shape(["prompt", "chosen", "rejected", "score"]) == "trl"
    assert (
        ft.dpo.preference_shape(["input", "preferred_output", "non_preferred_output"]) == "openai"
    )
    with pytest.raises(ft.errors.TemplateError) as caught:
        ft.dpo.preference_shape(["messages"])
    assert str(caught.value).endswith("found columns: 'messages'")


# ----------------------------------------------------------------------- pairs → tokens


def test_the_answers_tokens_are_exactly_each_answers_turn(tiny_tokenizer: Any) -> None:
    pair = ft.dpo.pair_from_openai(openai_pair(1), "line 1")
    tokens = ft.dpo.tokenize_pair(pair, tiny_tokenizer, "pair 1")
    decode = tiny_tokenizer.decode
    assert decode(tokens["prompt_ids"]) == f"<|user|> {words(1, 6)} </s> <|assistant|>"
    assert decode(tokens["chosen_ids"]) == f"{PREFERRED} </s>"  # the answer and its end of turn
    assert decode(tokens["rejected_ids"]) == f"{words(4, 4)} </s>"


def test_tools_and_tool_calls_render_as_the_models_template_renders_them() -> None:
    """On the byte-level tokenizer with a Qwen2.5-style tools template (decoding gives
    back the exact text): the prompt is the input as apply_chat_template renders it with
    the tools and the generation prompt, and each answer's tokens are exactly what the
    template adds for that answer (a tool call included), end of turn and all."""
    from template_helpers import build_tools_tokenizer

    tools = [{"type": "function", "function": {"name": "jumps", "parameters": {}}}]
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "jumps", "arguments": '{"over": "dog"}'},
    }
    line = {
        "input": {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "the "}, {"type": "text", "text": "fox"}],
                },
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": "quiet hills"},
                {"role": "user", "content": "and now"},
            ],
            "tools": tools,
        },
        "preferred_output": [{"role": "assistant", "content": PREFERRED}],
        "non_preferred_output": [{"role": "assistant", "content": None, "tool_calls": [call]}],
    }
    tokenizer = build_tools_tokenizer()
    pair = ft.dpo.pair_from_openai(line, "line 1")
    tokens = ft.dpo.tokenize_pair(pair, tokenizer, "pair 1")
    # What the template renders from the normalized messages (parts joined, arguments parsed).
    parsed = {**call, "function": {"name": "jumps", "arguments": {"over": "dog"}}}
    prompt = [
        {"role": "user", "content": "the fox"},
        {"role": "assistant", "content": "", "tool_calls": [parsed]},
        {"role": "tool", "tool_call_id": "c1", "content": "quiet hills"},
        {"role": "user", "content": "and now"},
    ]

    def render(messages: list[dict[str, Any]], **kwargs: Any) -> str:
        text: str = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, **kwargs)
        return text

    prompt_text = render(prompt, add_generation_prompt=True)
    chosen_text = render([*prompt, {"role": "assistant", "content": PREFERRED}])
    rejected_text = render([*prompt, {"role": "assistant", "content": "", "tool_calls": [parsed]}])
    assert "jumps" in prompt_text.split("<|im_start|>user")[0]  # the tools are shown
    assert tokenizer.decode(tokens["prompt_ids"]) == prompt_text
    assert tokenizer.decode(tokens["chosen_ids"]) == chosen_text[len(prompt_text) :]
    assert tokenizer.decode(tokens["rejected_ids"]) == rejected_text[len(prompt_text) :]
    assert '"over": "dog"' in tokenizer.decode(tokens["rejected_ids"])


def test_a_template_that_leaves_out_the_tools_stops_the_job(tiny_tokenizer: Any) -> None:
    line = openai_pair(3)
    line["input"]["tools"] = [{"type": "function", "function": {"name": "run"}}]
    pair = ft.dpo.pair_from_openai(line, "line 1")
    with pytest.raises(ft.errors.TemplateError) as caught:
        ft.dpo.preference_dataset([pair], tiny_tokenizer, max_length=64)
    assert str(caught.value).startswith(
        "training data pair 1: the model's chat template cannot render tools"
    )


def test_text_pairs_end_with_eos_like_trl(tiny_tokenizer: Any) -> None:
    pair = ft.dpo.PreferencePair(prompt="the fox", chosen=" jumps", rejected=" run")
    tokens = ft.dpo.tokenize_pair(pair, tiny_tokenizer, "pair 1")
    assert tiny_tokenizer.decode(tokens["chosen_ids"]) == "jumps </s>"
    assert tiny_tokenizer.decode(tokens["rejected_ids"]) == "run </s>"


def test_pairs_whose_prompt_fills_max_seq_length_are_dropped(tiny_tokenizer: Any) -> None:
    long = openai_pair(0)
    long["input"]["messages"][0]["content"] = words(0, 30)
    pairs = [ft.dpo.pair_from_openai(row, "l") for row in (openai_pair(1), long)]
    dataset = ft.dpo.preference_dataset(pairs, tiny_tokenizer, max_length=16)
    assert len(dataset) == 1 and dataset.column_names == [
        "prompt_ids",
        "chosen_ids",
        "rejected_ids",
    ]
    with pytest.raises(
        ft.errors.TemplateError, match=r"every preference pair's prompt is at least"
    ):
        ft.dpo.preference_dataset(pairs[1:], tiny_tokenizer, max_length=16)


def test_without_a_chat_template_conversational_pairs_are_refused() -> None:
    from template_helpers import build_tokenizer

    pair = ft.dpo.pair_from_openai(openai_pair(0), "l")
    with pytest.raises(ft.errors.TemplateError, match="tokenizer has no chat template"):
        ft.dpo.tokenize_pair(pair, build_tokenizer(chat_template=None), "pair 1")


def test_a_dataset_of_trl_preference_rows_is_read_through_datasets(
    tmp_path: Path, tiny_tokenizer: Any
) -> None:
    """dataset_id with TRL's columns: read by ft.data as every format is, detected as
    'preference' (other columns dropped), tokenized here."""
    user = {"role": "user", "content": words(0, 4)}
    good, bad = {"role": "assistant", "content": PREFERRED}, {"role": "assistant", "content": "sea"}
    rows = [
        {"prompt": [user], "chosen": [good], "rejected": [bad], "score": 1},
        {"prompt": [{**user, "name": "ann"}], "chosen": [good], "rejected": [bad], "score": 2},
    ]
    loaded = ft.data.load_training_dataset(str(write_jsonl(tmp_path / "pairs.jsonl", rows)))
    dataset, fmt = ft.data.format_dataset(loaded)
    assert fmt == "preference" and dataset.column_names == ["prompt", "chosen", "rejected"]
    pairs = ft.dpo.pairs_from_dataset(dataset)
    assert pairs[0].prompt == [user] and pairs[1].prompt == [{**user, "name": "ann"}]
    tokens = ft.dpo.preference_dataset(pairs, tiny_tokenizer, max_length=64)
    assert tiny_tokenizer.decode(tokens[0]["chosen_ids"]) == f"{PREFERRED} </s>"
    assert tiny_tokenizer.decode(tokens[1]["rejected_ids"]) == "sea </s>"


# ----------------------------------------------------------------------- config, resume, summary


def config_of(**raw: Any) -> Any:
    body = {**EXAMPLE_RUNTIME_CONFIG, **raw}
    return ft.config_io.load_runtime_config({"RUNTIME_CONFIG": json.dumps(body)})


def test_dpo_beta_defaults_to_a_tenth_for_dpo_and_stays_null_for_supervised() -> None:
    hp = {**EXAMPLE_RUNTIME_CONFIG["hyperparameters"], "dpo_beta": None}
    assert config_of(method="dpo", hyperparameters=hp).hyperparameters.dpo_beta == 0.1
    assert config_of(method="dpo", hyperparameters={**hp, "dpo_beta": 0.5}).method == "dpo"
    old_job = {k: v for k, v in hp.items() if k != "dpo_beta"}  # no method, no dpo_beta
    config = config_of(hyperparameters=old_job)
    assert (config.method, config.hyperparameters.dpo_beta) == ("supervised", None)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"hyperparameters": {"dpo_beta": 0.2}},
            "RUNTIME_CONFIG: hyperparameter dpo_beta applies only to dpo",
        ),
        ({"method": "dpo", "hyperparameters": {"dpo_beta": 0}}, "dpo_beta must be in (0, 10]"),
        ({"method": "dpo", "hyperparameters": {"dpo_beta": 10.5}}, "dpo_beta must be in (0, 10]"),
        ({"method": "dpo", "hyperparameters": {"dpo_beta": "hot"}}, "dpo_beta must be a number"),
        ({"method": "ppo"}, "'method' must be one of supervised, dpo, not 'ppo'"),
    ],
)
def test_a_bad_method_or_beta_is_refused(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ft.errors.TemplateError) as caught:
        config_of(**raw)
    assert message in str(caught.value)


def test_a_checkpoint_resumes_only_with_its_own_method(tmp_path: Path) -> None:
    """A supervised checkpoint's optimizer and step mean nothing to a DPO run (and back)."""
    folder = tmp_path / "checkpoint-2"
    folder.mkdir()
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8}))
    hp = ft.config_io.Hyperparameters(lora_rank=4, lora_alpha=8)
    for marker, method, trained in (
        ({"model_id": "m"}, "dpo", "supervised"),  # an older job's marker: no method
        ({"model_id": "m", "method": "dpo"}, "supervised", "dpo"),
    ):
        (folder / "ft_checkpoint.json").write_text(json.dumps(marker))
        with pytest.raises(ft.errors.TemplateError) as caught:
            ft.checkpoints.check_checkpoint(folder, "m", hp, method)
        assert str(caught.value).startswith(
            f"checkpoint 'checkpoint-2' cannot be resumed: it was trained with method "
            f"{trained!r}, and this job's method is {method!r}"
        )


def test_the_summary_line_repeats_the_last_steps_rewards() -> None:
    from types import SimpleNamespace

    last = {"loss": 0.61, **dict.fromkeys(REWARDS, 0.25), "step": 4}
    state = SimpleNamespace(global_step=4, max_steps=4, epoch=1.0, log_history=[last])
    trainer = SimpleNamespace(state=state)
    record = ft.metrics.summary_record(trainer, {"loss": 0.61, **last}, 2.0, REWARDS)
    assert {key: record[key] for key in ("final_loss", *REWARDS)} == {
        "final_loss": 0.61,
        **dict.fromkeys(REWARDS, 0.25),
    }
    # A resumed run with no step left to print repeats the restored history's last step.
    assert ft.metrics.summary_record(trainer, None, 2.0, REWARDS) == record | {
        "runtime_seconds": 2.0
    }
    assert "rewards/chosen" not in ft.metrics.summary_record(trainer, None, 2.0)


# ----------------------------------------------------------------------- CPU proof


def preference_entry(path: Path) -> dict[str, Any]:
    """runtime_config.json's training_file for ``path``, as the service's check records it."""
    data = path.read_bytes()
    return {
        "source": "file-pref01",
        "url": path.as_uri(),
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "format": "preference",
        "examples": N_PAIRS,
    }


def dpo_config(model: Path, training_file: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        **EXAMPLE_RUNTIME_CONFIG,
        "dataset_id": None,
        "model_id": str(model),
        "method": "dpo",
        "training_file": training_file,
        "hyperparameters": HP,
        **extra,
    }


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [openai_pair(i) for i in range(N_PAIRS)]
    return write_jsonl(tmp_path_factory.mktemp("dpo-data") / "pairs.jsonl", rows)


@pytest.fixture(scope="module")
def dpo_run(
    run_train: RunTrain, tiny_model: Path, pairs_file: Path, training_stack: None
) -> TrainRun:
    run = run_train(
        MODEL_ID=str(tiny_model),
        RUNTIME_CONFIG=dpo_config(tiny_model, preference_entry(pairs_file)),
    )
    assert run.returncode == 0, run.describe()
    return run


def test_a_dpo_job_trains_to_the_end_and_every_step_carries_the_rewards(dpo_run: TrainRun) -> None:
    steps = dpo_run.progress
    assert [r["step"] for r in steps] == list(range(1, TOTAL_STEPS + 1))
    for record in steps:
        for key in ("loss", *REWARDS, "learning_rate", "tokens_seen"):
            assert isinstance(record[key], int | float) and not isinstance(record[key], bool), key
        assert 0.0 <= record["rewards/accuracies"] <= 1.0
        assert record["rewards/margins"] == pytest.approx(
            record["rewards/chosen"] - record["rewards/rejected"], abs=1e-6
        )
    # Step 1: the adapter is still zero, so the policy is exactly the reference
    # (the base model with the adapter off): every reward is 0 and the loss is ln 2.
    first = steps[0]
    assert first["rewards/chosen"] == first["rewards/rejected"] == first["rewards/margins"] == 0
    assert first["loss"] == pytest.approx(0.6931, abs=1e-4)
    # Training on the pairs moves the policy toward the preferred answers.
    assert steps[-1]["rewards/margins"] > 0 and steps[-1]["loss"] < first["loss"]
    line = dpo_run.summary_line
    assert line["step"] == line["total_steps"] == TOTAL_STEPS
    assert line["final_loss"] == steps[-1]["loss"]
    assert {key: line[key] for key in REWARDS} == {key: steps[-1][key] for key in REWARDS}


def test_a_dpo_job_writes_its_adapter_summary_and_checkpoints(
    dpo_run: TrainRun, tiny_model: Path
) -> None:
    final = dpo_run.final_dir
    assert (final / "adapter_model.safetensors").is_file()
    adapter = json.loads((final / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"]) == (HP["lora_rank"], HP["lora_alpha"])
    assert adapter["base_model_name_or_path"] == str(tiny_model)
    summary = dpo_run.summary
    assert summary["method"] == "dpo" and summary["hyperparameters"]["dpo_beta"] == 0.1
    assert summary["dataset_format"] == "preference" and summary["num_examples"] == N_PAIRS
    assert summary["first_example"].endswith(f"<|assistant|> {PREFERRED} </s>")
    names = {p.name for p in dpo_run.checkpoint_dir.glob("checkpoint-*")}
    assert names == {f"checkpoint-{n}" for n in range(1, TOTAL_STEPS + 1)}
    marker = json.loads(
        (dpo_run.checkpoint_dir / "checkpoint-2" / "ft_checkpoint.json").read_text()
    )
    assert marker["method"] == "dpo" and marker["global_step"] == 2


def test_a_dpo_job_resumes_from_its_checkpoint(
    run_train: RunTrain,
    tmp_path: Path,
    tiny_model: Path,
    pairs_file: Path,
    dpo_run: TrainRun,
) -> None:
    shutil.copytree(dpo_run.checkpoint_dir / "checkpoint-2", tmp_path / "rank-0" / "checkpoint-2")
    run = run_train(
        MODEL_ID=str(tiny_model),
        RUNTIME_CONFIG=dpo_config(
            tiny_model, preference_entry(pairs_file), resume_from=RESUME_FROM
        ),
        BT_LOAD_CHECKPOINT_DIR=str(tmp_path),
    )
    assert run.returncode == 0, run.describe()
    assert "continuing at step 3 of 4" in run.stdout
    reference = {r["step"]: r for r in dpo_run.progress}
    assert [r["step"] for r in run.progress] == [3, 4]
    for record in run.progress:
        for key in ("loss", *REWARDS):
            assert record[key] == pytest.approx(reference[record["step"]][key], rel=1e-5, abs=1e-7)
        assert record["tokens_seen"] == reference[record["step"]]["tokens_seen"]
    assert run.summary["resumed_from"]["global_step"] == 2
    assert run.summary["losses"] == pytest.approx(dpo_run.summary["losses"], rel=1e-5)


# ----------------------------------------------------------------------- refusals


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    ]
    return write_jsonl(tmp_path_factory.mktemp("chat-data") / "chat.jsonl", rows)


def _refused(run: TrainRun) -> str:
    assert run.returncode == 2, run.describe()
    assert "Traceback" not in run.stderr
    assert not run.checkpoint_dir.exists()
    return run.error_line


def test_a_chat_file_given_to_a_dpo_job_stops_it_at_once(
    run_train: RunTrain, tiny_model: Path, chat_file: Path
) -> None:
    entry = {**preference_entry(chat_file), "format": "chat", "examples": 1}
    run = run_train(
        MODEL_ID=str(tiny_model), RUNTIME_CONFIG=dpo_config(tiny_model, entry), timeout=60
    )
    assert _refused(run) == (
        "train.py: error: RUNTIME_CONFIG: method 'dpo' trains on preference pairs, but "
        "training_file file-pref01 is a 'chat' file; a dpo job needs a 'preference' file"
    )


def test_a_preference_file_given_to_a_supervised_job_stops_it_at_once(
    run_train: RunTrain, tiny_model: Path, pairs_file: Path
) -> None:
    config = dpo_config(
        tiny_model,
        preference_entry(pairs_file),
        method="supervised",
        hyperparameters={k: v for k, v in HP.items() if k != "dpo_beta"},
    )
    run = run_train(MODEL_ID=str(tiny_model), RUNTIME_CONFIG=config, timeout=60)
    assert _refused(run) == (
        "train.py: error: RUNTIME_CONFIG: training_file file-pref01 is a 'preference' file "
        "(preference pairs), which only method 'dpo' trains on; this job's method is 'supervised'"
    )
