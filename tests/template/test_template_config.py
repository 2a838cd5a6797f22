"""training_template/config.py, staged and loaded the way truss loads it on push."""

from __future__ import annotations

import ast
import copy
import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from template_helpers import EXAMPLE_RUNTIME_CONFIG, REPO, TEMPLATE_DIR
from truss_train.definitions import SecretReference, TrainingProject
from truss_train.loader import import_training_project

Stage = Callable[..., Path]

EXPECTED_ENV = {"DATASET_ID", "MODEL_ID", "RUNTIME_CONFIG", "HF_TOKEN"}


def example(**changes: Any) -> dict[str, Any]:
    config = copy.deepcopy(EXAMPLE_RUNTIME_CONFIG)
    config.update(changes)
    return config


@contextmanager
def loaded(stage: Stage, config: dict[str, Any], name: str = "staged") -> Iterator[Any]:
    """Stage the template with `config` and load its TrainingProject as truss does."""
    staged = stage(config, name)
    with import_training_project(staged / "config.py") as project:
        yield project


def template_constant(name: str) -> Any:
    """A module-level constant of config.py, read from its source."""
    tree = ast.parse((TEMPLATE_DIR / "config.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise AssertionError(f"config.py defines no {name}")


def test_project_and_job_names_come_from_the_request(stage: Stage) -> None:
    with loaded(stage, example()) as project:
        assert isinstance(project, TrainingProject)
        assert project.name == "ft-openai-gpt-oss-20b"
        assert project.job.name == "gpt-oss-20b-20261127-060000-ik-0123456789abcdef0123"


def test_base_image_is_a_pytorch_cuda_image_named_once(stage: Stage) -> None:
    base_image = template_constant("BASE_IMAGE")
    assert re.fullmatch(
        r"pytorch/pytorch:2\.\d+\.\d+-cuda1\d\.\d+-cudnn9-(devel|runtime)", base_image
    )
    source = (TEMPLATE_DIR / "config.py").read_text()
    assert source.count("pytorch/pytorch:") == 1
    with loaded(stage, example()) as project:
        assert project.job.image.base_image == base_image


def test_compute_defaults_when_the_request_leaves_it_null(stage: Stage) -> None:
    with loaded(stage, example()) as project:
        compute = project.job.compute
        assert compute.accelerator.accelerator.value == "H100"
        assert compute.accelerator.count == 1
        assert compute.node_count == 1
    assert template_constant("DEFAULT_ACCELERATOR") == "H100"
    assert template_constant("DEFAULT_GPU_COUNT") == 1
    assert template_constant("DEFAULT_NODE_COUNT") == 1


def test_compute_defaults_when_the_request_has_no_compute_at_all(stage: Stage) -> None:
    config = example()
    del config["compute"]
    with loaded(stage, config) as project:
        assert project.job.compute.accelerator.accelerator.value == "H100"
        assert project.job.compute.accelerator.count == 1
        assert project.job.compute.node_count == 1


def test_request_compute_overrides_the_defaults(stage: Stage) -> None:
    config = example(compute={"accelerator": "A100", "gpu_count": 4, "node_count": 2})
    with loaded(stage, config) as project:
        compute = project.job.compute
        assert compute.accelerator.accelerator.value == "A100"
        assert compute.accelerator.count == 4
        assert compute.node_count == 2
        # As it is sent to Baseten.
        dumped = project.job.model_dump()["compute"]
        assert dumped["accelerator"] == {"accelerator": "A100", "count": 4}
        assert dumped["node_count"] == 2


def test_one_compute_field_overrides_only_itself(stage: Stage) -> None:
    config = example(compute={"accelerator": None, "gpu_count": 8, "node_count": None})
    with loaded(stage, config) as project:
        assert project.job.compute.accelerator.accelerator.value == "H100"
        assert project.job.compute.accelerator.count == 8
        assert project.job.compute.node_count == 1


def test_environment_variables_carry_the_request(stage: Stage) -> None:
    config = example(compute={"accelerator": "H200", "gpu_count": None, "node_count": None})
    with loaded(stage, config) as project:
        env = project.job.runtime.environment_variables
    assert set(env) == EXPECTED_ENV
    assert env["DATASET_ID"] == "HuggingFaceH4/Multilingual-Thinking"
    assert env["MODEL_ID"] == "openai/gpt-oss-20b"
    resolved = json.loads(env["RUNTIME_CONFIG"])
    assert resolved == {
        **config,
        "compute": {"accelerator": "H200", "gpu_count": 1, "node_count": 1},
    }
    assert all(isinstance(env[key], str) for key in EXPECTED_ENV - {"HF_TOKEN"})


def test_hf_token_is_a_reference_to_the_configured_secret(stage: Stage) -> None:
    with loaded(stage, example()) as project:
        token = project.job.runtime.environment_variables["HF_TOKEN"]
        assert isinstance(token, SecretReference)
        assert token.name == "hf_access_token"
    with loaded(stage, example(hf_token_secret_name="team_hf_read"), "other") as project:
        assert project.job.runtime.environment_variables["HF_TOKEN"].name == "team_hf_read"
        dumped = project.job.model_dump()["runtime"]["environment_variables"]["HF_TOKEN"]
        assert dumped == {"name": "team_hf_read"}


def test_wandb_key_is_a_secret_reference_only_when_wandb_is_asked_for(stage: Stage) -> None:
    with loaded(stage, example()) as project:
        assert "WANDB_API_KEY" not in project.job.runtime.environment_variables
    wandb = [{"type": "wandb", "wandb": {"project": "tuning", "tags": ["a"]}}]
    with loaded(stage, example(integrations=wandb), "w1") as project:
        key = project.job.runtime.environment_variables["WANDB_API_KEY"]
        assert isinstance(key, SecretReference) and key.name == "wandb_api_key"
    config = example(integrations=wandb, wandb_api_key_secret_name="team_wandb")
    with loaded(stage, config, "w2") as project:
        dumped = project.job.model_dump()["runtime"]["environment_variables"]
        assert dumped["WANDB_API_KEY"] == {"name": "team_wandb"}
        # The integration reaches train.py as data; no key is anywhere in the environment.
        assert json.loads(dumped["RUNTIME_CONFIG"])["integrations"] == wandb
    with (
        pytest.raises(ValueError, match="integrations"),
        loaded(stage, example(integrations={"type": "wandb"}), "w3"),
    ):
        pass


def test_checkpointing_is_enabled(stage: Stage) -> None:
    with loaded(stage, example()) as project:
        assert project.job.runtime.checkpointing_config.enabled is True


def test_start_command_installs_pinned_requirements_then_runs_train_py(stage: Stage) -> None:
    with loaded(stage, example()) as project:
        commands = project.job.runtime.start_commands
    assert len(commands) == 1
    command = commands[0]
    assert command.startswith("/bin/sh -c '") and command.endswith("'")
    install, _, run = command.partition(" && ")
    assert "pip install" in install and "-r requirements.txt" in install
    assert run.rstrip("'").split()[-2:] == ["python", "train.py"]
    # Both files the command names are in the upload.
    assert (TEMPLATE_DIR / "requirements.txt").is_file()
    assert (TEMPLATE_DIR / "train.py").is_file()


def test_trainer_requirements_are_pinned_like_the_local_test_requirements() -> None:
    def pins(path: Path) -> dict[str, str]:
        found = {}
        for line in path.read_text().splitlines():
            requirement = line.split("#", 1)[0].split(";", 1)[0].strip()
            if requirement:
                name, sep, version = requirement.partition("==")
                assert sep, f"{path.name}: {requirement!r} is not pinned with =="
                found[name.strip().lower()] = version.strip()
        return found

    template = pins(TEMPLATE_DIR / "requirements.txt")
    local = pins(REPO / "requirements-train.txt")
    assert {"transformers", "peft", "trl", "accelerate", "datasets"} <= set(template)
    assert "torch" not in template, "torch comes from the base image"
    for name, version in template.items():
        assert local.get(name) == version, f"{name}: template {version}, local {local.get(name)}"


def test_request_values_reach_the_job_verbatim_and_are_never_executed(
    stage: Stage, tmp_path: Path
) -> None:
    sentinel = tmp_path / "PWNED"
    nasty = (
        f"x\"'; __import__('os').system('touch {sentinel}') #\n"
        f'""" + __import__("pathlib").Path("{sentinel}").write_text("1") + """\\'
    )
    config = example(
        dataset_id=nasty,
        model_id="m" + nasty,
        project_name="p" + nasty,
        job_name="j" + nasty,
        hf_token_secret_name="s" + nasty,
    )
    config["hyperparameters"]["note"] = nasty  # passed through; train.py would reject it
    with loaded(stage, config) as project:
        env = project.job.runtime.environment_variables
        assert env["DATASET_ID"] == nasty
        assert env["MODEL_ID"] == "m" + nasty
        assert env["HF_TOKEN"].name == "s" + nasty
        assert json.loads(env["RUNTIME_CONFIG"])["hyperparameters"]["note"] == nasty
        assert project.name == "p" + nasty
        assert project.job.name == "j" + nasty
    assert not sentinel.exists()
    # The staged source is the template's, byte for byte: the request went into JSON only.
    staged = tmp_path / "staged"
    assert (staged / "config.py").read_bytes() == (TEMPLATE_DIR / "config.py").read_bytes()


def test_each_staged_copy_builds_its_own_project(stage: Stage) -> None:
    with loaded(stage, example(project_name="first"), "a") as first:
        first_name = first.name
    with loaded(stage, example(project_name="second"), "b") as second:
        assert (first_name, second.name) == ("first", "second")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"compute": {"accelerator": None, "gpu_count": "2", "node_count": None}}, "gpu_count"),
        ({"compute": {"accelerator": None, "gpu_count": True, "node_count": None}}, "gpu_count"),
        ({"compute": {"accelerator": None, "gpu_count": None, "node_count": 0}}, "node_count"),
        ({"job_name": None}, "job_name"),
        ({"dataset_id": ""}, "dataset_id"),
    ],
)
def test_malformed_runtime_config_is_rejected_by_name(
    stage: Stage, change: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message), loaded(stage, example(**change)):
        pass


def test_unknown_accelerator_is_rejected(stage: Stage) -> None:
    config = example(compute={"accelerator": "TPUv9", "gpu_count": None, "node_count": None})
    with pytest.raises(ValueError, match="TPUv9"), loaded(stage, config):
        pass


def test_missing_runtime_config_is_reported_by_path(tmp_path: Path) -> None:
    import shutil

    staged = tmp_path / "staged"
    shutil.copytree(TEMPLATE_DIR, staged, ignore=shutil.ignore_patterns("__pycache__"))
    with (
        pytest.raises(FileNotFoundError, match=r"runtime_config\.json is missing"),
        import_training_project(staged / "config.py"),
    ):
        pass


def test_config_py_imports_only_the_standard_library_and_truss() -> None:
    tree = ast.parse((TEMPLATE_DIR / "config.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "config.py's folder is not on sys.path when truss runs it"
            imported.add((node.module or "").split(".")[0])
    assert imported - sys.stdlib_module_names <= {"truss", "truss_train"}


TRAINING_FILE = {
    "source": "file-abc123",
    "url": "https://storage.googleapis.com/b/o?X-Goog-Signature=abc",
    "sha256": "0" * 64,
    "bytes": 1234,
    "format": "chat",
    "examples": 42,
}


def test_a_users_file_reaches_the_job_in_runtime_config_without_dataset_id(stage: Stage) -> None:
    config = example(dataset_id=None, training_file=TRAINING_FILE, validation_file=None)
    with loaded(stage, config) as project:
        env = project.job.runtime.environment_variables
    assert set(env) == EXPECTED_ENV - {"DATASET_ID"}
    resolved = json.loads(env["RUNTIME_CONFIG"])
    assert resolved["training_file"] == TRAINING_FILE
    assert resolved["dataset_id"] is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"training_file": TRAINING_FILE},
            "exactly one of 'dataset_id' and 'training_file' must be set (both are)",
        ),
        ({"dataset_id": None}, "exactly one of 'dataset_id' and 'training_file' must be set"),
        (
            {"dataset_id": None, "training_file": "file-abc123"},
            "'training_file' must be an object with string 'url' and 'sha256'",
        ),
        (
            {"dataset_id": None, "training_file": TRAINING_FILE, "validation_file": {"url": 1}},
            "'validation_file' must be an object with string 'url' and 'sha256'",
        ),
    ],
)
def test_the_data_source_is_exactly_one_of_dataset_id_and_training_file(
    stage: Stage, change: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)), loaded(stage, example(**change)):
        pass
