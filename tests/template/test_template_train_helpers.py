"""train.py's pure pieces: config parsing, dataset shapes, launching; no training here."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import ft.config_io
import ft.data
import ft.errors
import ft.labels
import ft.launch
import pytest
from template_helpers import (
    CHAT_TEMPLATE,
    EXAMPLE_RUNTIME_CONFIG,
    TEMPLATE_DIR,
    RunTrain,
    write_jsonl,
)

needs_datasets = pytest.mark.skipif(
    importlib.util.find_spec("datasets") is None,
    reason="needs datasets: pip install -r requirements-train.txt",
)


def env_with(config: Any = EXAMPLE_RUNTIME_CONFIG, **extra: str) -> dict[str, str]:
    return {"RUNTIME_CONFIG": json.dumps(config), **extra}


# ----------------------------------------------------------------------- config


def test_importing_train_py_and_every_ft_module_loads_no_heavy_library() -> None:
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('t', {str(TEMPLATE_DIR / 'train.py')!r})\n"
        "module = sys.modules['t'] = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "import importlib, pkgutil, ft\n"
        "for info in pkgutil.iter_modules(ft.__path__):\n"
        "    importlib.import_module('ft.' + info.name)\n"
        "heavy = {'torch', 'transformers', 'datasets', 'trl', 'peft'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_runtime_config_is_read_with_every_hyperparameter() -> None:
    config = ft.config_io.load_runtime_config(env_with())
    assert config.model_id == "openai/gpt-oss-20b"
    assert config.dataset_id == "HuggingFaceH4/Multilingual-Thinking"
    # eval_samples is absent (an older job's config): null, resolved once the job knows
    # whether it has a validation set.
    assert dataclasses.asdict(config.hyperparameters) == {
        **EXAMPLE_RUNTIME_CONFIG["hyperparameters"],
        "eval_samples": None,
    }


def test_model_and_dataset_env_vars_win_over_runtime_config() -> None:
    config = ft.config_io.load_runtime_config(
        env_with(MODEL_ID="/models/tiny", DATASET_ID="d.jsonl")
    )
    assert (config.model_id, config.dataset_id) == ("/models/tiny", "d.jsonl")


def test_missing_hyperparameters_take_the_documented_defaults() -> None:
    hp = ft.config_io.parse_hyperparameters({"learning_rate": 1, "batch_size": 8.0})
    assert hp.learning_rate == 1.0 and isinstance(hp.learning_rate, float)
    assert hp.batch_size == 8 and isinstance(hp.batch_size, int)
    defaults = ft.config_io.Hyperparameters()
    assert (hp.num_epochs, hp.lora_rank, hp.seed) == (
        defaults.num_epochs,
        defaults.lora_rank,
        defaults.seed,
    )
    # The defaults, resolved for supervised, match the service's example request.
    resolved = dataclasses.asdict(
        ft.config_io.resolve_method_hyperparameters(defaults, "supervised")
    )
    # eval_samples: null until the job knows whether it has a validation set.
    assert resolved.pop("eval_samples") is None
    assert resolved == EXAMPLE_RUNTIME_CONFIG["hyperparameters"]


def test_train_py_honours_exactly_the_hyperparameters_the_service_accepts() -> None:
    """Same names, same defaults: a parameter added to the request schema but not to
    train.py (or the other way round) fails here, not silently in a paid job. The
    method-dependent ones (train_on_inputs, dpo_beta) default to null in both."""
    schemas = pytest.importorskip("finetune_api.core.schemas")
    service_defaults = schemas.Hyperparameters().model_dump()
    template_defaults = dataclasses.asdict(ft.config_io.Hyperparameters())
    for name in ft.config_io.METHOD_HYPERPARAMETERS:
        assert template_defaults[name] is None
        # null until the service's schema gains the field (HELPERS decision 2)
        assert service_defaults.setdefault(name, None) is None
    # eval_samples: null (the default: 5 with a validation set) in both, once the
    # service's schema has it (issue 28).
    assert template_defaults["eval_samples"] is None
    assert service_defaults.setdefault("eval_samples", None) is None
    assert service_defaults == template_defaults


@pytest.mark.parametrize(
    ("method", "given", "resolved"),
    [
        (None, {}, {"train_on_inputs": False, "dpo_beta": None}),  # an older job
        ("supervised", {"train_on_inputs": None}, {"train_on_inputs": False, "dpo_beta": None}),
        ("supervised", {"train_on_inputs": True}, {"train_on_inputs": True, "dpo_beta": None}),
        ("dpo", {}, {"train_on_inputs": None, "dpo_beta": 0.1}),
        (
            "dpo",
            {"dpo_beta": 0.5, "train_on_inputs": None},
            {"train_on_inputs": None, "dpo_beta": 0.5},
        ),
        ("dpo", {"train_on_inputs": False}, {"train_on_inputs": None, "dpo_beta": 0.1}),
    ],
)
def test_method_and_its_hyperparameters_take_the_method_defaults(
    method: str | None, given: dict[str, Any], resolved: dict[str, Any]
) -> None:
    config = {**EXAMPLE_RUNTIME_CONFIG, "hyperparameters": given}
    if method is None:
        config.pop("method")
    else:
        config["method"] = method
    loaded = ft.config_io.load_runtime_config(env_with(config))
    assert loaded.method == (method or "supervised")
    hp = dataclasses.asdict(loaded.hyperparameters)
    assert {name: hp[name] for name in resolved} == resolved


@pytest.mark.parametrize(
    ("method", "given", "message"),
    [
        ("reinforcement", {}, "'method' must be one of supervised, dpo, not 'reinforcement'"),
        ("supervised", {"dpo_beta": 0.1}, "dpo_beta applies only to dpo"),
        ("dpo", {"train_on_inputs": True}, "train_on_inputs applies only to method supervised"),
        ("dpo", {"dpo_beta": 0}, "dpo_beta must be in (0, 10]"),
        ("dpo", {"dpo_beta": 10.5}, "dpo_beta must be in (0, 10]"),
        ("supervised", {"train_on_inputs": 1}, "train_on_inputs must be true, false or null"),
    ],
)
def test_a_method_hyperparameter_out_of_place_stops_the_job(
    method: str, given: dict[str, Any], message: str
) -> None:
    config = {**EXAMPLE_RUNTIME_CONFIG, "method": method, "hyperparameters": given}
    with pytest.raises(ft.errors.TemplateError) as caught:
        ft.config_io.load_runtime_config(env_with(config))
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("hyperparameters", "message"),
    [
        ({"warmup": 10}, "unknown hyperparameter(s) warmup"),
        ({"batch_size": True}, "batch_size must be an integer"),
        ({"batch_size": 2.5}, "batch_size must be an integer"),
        ({"lora_rank": "16"}, "lora_rank must be an integer"),
        ({"learning_rate": "fast"}, "learning_rate must be a number"),
        ({"learning_rate": 0}, "learning_rate must be > 0"),
        ({"lora_dropout": 1.0}, "lora_dropout must be in [0, 1)"),
        ({"num_epochs": 0}, "num_epochs must be >= 1"),
        ({"seed": -1}, "seed must be in [0, 4294967295]"),
        ({"seed": 2**32}, "seed must be in [0, 4294967295]"),
        ({"validation_split": 0.5}, "validation_split must be in [0, 0.5)"),
        ({"validation_split": -0.1}, "validation_split must be in [0, 0.5)"),
        ([], "'hyperparameters' must be an object"),
    ],
)
def test_bad_hyperparameters_are_rejected(hyperparameters: Any, message: str) -> None:
    with pytest.raises(ft.errors.TemplateError) as caught:
        ft.config_io.parse_hyperparameters(hyperparameters)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, "RUNTIME_CONFIG is not set"),
        ({"RUNTIME_CONFIG": ""}, "RUNTIME_CONFIG is not set"),
        ({"RUNTIME_CONFIG": "{oops"}, "RUNTIME_CONFIG is not valid JSON"),
        ({"RUNTIME_CONFIG": "[1]"}, "RUNTIME_CONFIG must be a JSON object"),
        ({"RUNTIME_CONFIG": "{}"}, "MODEL_ID is not set and RUNTIME_CONFIG has no 'model_id'"),
    ],
)
def test_unusable_runtime_config_is_a_clear_error(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ft.errors.TemplateError, match="^" + message.replace("(", r"\(")):
        ft.config_io.load_runtime_config(environ)


def test_checkpoint_dir_is_bt_checkpoint_dir() -> None:
    assert ft.config_io.checkpoint_dir({"BT_CHECKPOINT_DIR": "/mnt/ckpt"}) == Path("/mnt/ckpt")
    assert ft.config_io.checkpoint_dir({}) == Path("checkpoints")


def test_empty_hf_token_counts_as_none() -> None:
    assert ft.config_io.hf_token({"HF_TOKEN": ""}) is None
    assert ft.config_io.hf_token({"HF_TOKEN": "hf_x"}) == "hf_x"


# ----------------------------------------------------------------------- runs that stop early


def test_missing_runtime_config_stops_the_job_with_one_line(run_train: RunTrain) -> None:
    run = run_train(MODEL_ID="m", DATASET_ID="d", RUNTIME_CONFIG=None)
    assert run.returncode == 2, run.describe()
    assert run.stderr.strip().splitlines() == [
        "train.py: error: RUNTIME_CONFIG is not set: it must hold the request as JSON "
        "(config.py sets it for Baseten jobs)"
    ]


def test_unknown_hyperparameter_stops_the_job_before_training(run_train: RunTrain) -> None:
    config = {**EXAMPLE_RUNTIME_CONFIG, "hyperparameters": {"weight_decay": 0.1}}
    run = run_train(RUNTIME_CONFIG=config)
    assert run.returncode == 2, run.describe()
    assert "unknown hyperparameter(s) weight_decay" in run.stderr.strip().splitlines()[-1]


# ----------------------------------------------------------------------- launching


def test_one_gpu_or_cpu_runs_in_this_process() -> None:
    assert ft.launch.distributed_launch_command(0, {}, "train.py") is None
    assert ft.launch.distributed_launch_command(1, {}, "train.py") is None


def test_several_gpus_relaunch_under_torchrun() -> None:
    command = ft.launch.distributed_launch_command(4, {}, "/app/train.py", python="/py")
    assert command == ["/py", "-m", "torch.distributed.run", "--nproc_per_node=4", "/app/train.py"]
    # Already under torchrun: no second launch.
    assert ft.launch.distributed_launch_command(4, {"LOCAL_RANK": "0"}, "train.py") is None


def test_multi_node_jobs_use_baseten_variables() -> None:
    environ = {"BT_GROUP_SIZE": "2", "BT_NODE_RANK": "1", "BT_LEADER_ADDR": "10.0.0.5"}
    command = ft.launch.distributed_launch_command(8, environ, "train.py", python="py")
    assert command == [
        "py",
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=8",
        "--nnodes=2",
        "--node_rank=1",
        "--master_addr=10.0.0.5",
        "--master_port=29500",
        "train.py",
    ]
    with pytest.raises(ft.errors.TemplateError, match="BT_LEADER_ADDR"):
        ft.launch.distributed_launch_command(8, {"BT_GROUP_SIZE": "2"}, "train.py")


def test_expected_optimizer_steps() -> None:
    hp = ft.config_io.Hyperparameters(batch_size=2, gradient_accumulation_steps=3, num_epochs=2)
    assert ft.launch.expected_optimizer_steps(24, hp) == 8
    assert ft.launch.expected_optimizer_steps(25, hp) == 10  # 13 batches -> 5 steps per epoch
    assert ft.launch.expected_optimizer_steps(24, hp, world_size=2) == 4
    assert ft.launch.expected_optimizer_steps(1, hp) == 2


# ----------------------------------------------------------------------- dataset shapes


def test_messages_win_over_text_and_text_is_accepted() -> None:
    assert ft.data.detect_format(["text", "messages"]) == "messages"
    assert ft.data.detect_format(["id", "text"]) == "text"
    assert ft.data.detect_format(["completion", "prompt", "id"]) == "prompt_completion"
    assert ft.data.detect_format(["text", "prompt", "completion"]) == "text"


def test_other_shapes_are_rejected_naming_the_columns() -> None:
    with pytest.raises(ft.errors.TemplateError) as caught:
        ft.data.detect_format(["prompt", "answer"])
    assert str(caught.value) == (
        "unsupported dataset shape: expected a 'messages' column (chat), a 'text' column, "
        "'prompt' and 'completion' columns, or preference pairs ('input', 'preferred_output', "
        "'non_preferred_output', or 'chosen' and 'rejected'), found columns: 'prompt', 'answer'"
    )
    with pytest.raises(ft.errors.TemplateError, match="found columns: none"):
        ft.data.detect_format([])


@needs_datasets
def test_format_dataset_keeps_one_column_and_drops_empty_rows() -> None:
    from datasets import Dataset

    dataset = Dataset.from_list(
        [{"text": "a fox", "id": 1}, {"text": "  ", "id": 2}, {"text": "a dog", "id": 3}]
    )
    formatted, fmt = ft.data.format_dataset(dataset)
    assert fmt == "text"
    assert formatted.column_names == ["text"]
    assert formatted["text"] == ["a fox", "a dog"]


@needs_datasets
def test_format_dataset_checks_chat_messages() -> None:
    from datasets import Dataset

    good = Dataset.from_list([{"messages": [{"role": "user", "content": "hi"}], "lang": "en"}])
    formatted, fmt = ft.data.format_dataset(good)
    assert (fmt, formatted.column_names) == ("messages", ["messages"])

    bad = Dataset.from_list([{"messages": [{"speaker": "user", "text": "hi"}]}])
    with pytest.raises(ft.errors.TemplateError, match="'role'"):
        ft.data.format_dataset(bad)

    empty = Dataset.from_list([{"text": ""}])
    with pytest.raises(ft.errors.TemplateError, match="no non-empty 'text' rows"):
        ft.data.format_dataset(empty)


@needs_datasets
def test_format_dataset_keeps_prompt_and_completion() -> None:
    from datasets import Dataset

    dataset = Dataset.from_list(
        [
            {"prompt": "the quick", "completion": " fox", "id": 1},
            {"prompt": "a lazy", "completion": "  ", "id": 2},  # nothing to learn: dropped
            {"prompt": "", "completion": "dog", "id": 3},  # an empty prompt is fine
        ]
    )
    formatted, fmt = ft.data.format_dataset(dataset)
    assert fmt == "prompt_completion"
    assert formatted.column_names == ["prompt", "completion"]
    assert formatted["completion"] == [" fox", "dog"]

    numbers = Dataset.from_list([{"prompt": "a", "completion": 1}])
    with pytest.raises(ft.errors.TemplateError, match="column 'completion' must hold strings"):
        ft.data.format_dataset(numbers)


def test_chat_examples_render_through_the_tokenizer_chat_template(tiny_tokenizer: Any) -> None:
    messages = [
        {"role": "user", "content": "the quick fox"},
        {"role": "assistant", "content": "jumps over"},
    ]
    rendered = ft.labels.render_chat(messages, tiny_tokenizer)
    assert rendered == "<|user|> the quick fox </s> <|assistant|> jumps over </s> "
    assert tiny_tokenizer.chat_template == CHAT_TEMPLATE

    class NoTemplate:
        chat_template = None

    with pytest.raises(ft.errors.TemplateError, match="has no chat template"):
        ft.labels.render_chat(messages, NoTemplate())


@needs_datasets
def test_local_dataset_paths_and_files(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    jsonl = write_jsonl(tmp_path / "rows.jsonl", [{"text": "a"}, {"text": "b"}])
    assert ft.data.load_training_dataset(str(jsonl))["text"] == ["a", "b"]

    saved = tmp_path / "saved"
    Dataset.from_list([{"text": "c"}]).save_to_disk(str(saved))
    assert ft.data.load_training_dataset(str(saved))["text"] == ["c"]

    splits = tmp_path / "splits"
    DatasetDict({"validation": Dataset.from_list([{"text": "v"}])}).save_to_disk(str(splits))
    assert ft.data.load_training_dataset(str(splits))["text"] == ["v"]

    folder = tmp_path / "folder"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"text": "f"}])
    assert ft.data.load_training_dataset(str(folder))["text"] == ["f"]

    odd = tmp_path / "rows.xml"
    odd.write_text("<rows/>")
    with pytest.raises(ft.errors.TemplateError, match="unsupported type"):
        ft.data.load_training_dataset(str(odd))
