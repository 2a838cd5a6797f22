"""The Baseten training job for one request; truss executes this file on push.

The service copies this folder per request and writes ``runtime_config.json``
beside this file. The request is only ever read here as data (JSON) and handed to
the job as environment variables: no request value is pasted into Python source.

truss loads this file with ``importlib`` (its folder is not on ``sys.path``), so it
imports nothing but the standard library, truss and truss_train.

Customize here: the base image, the default GPU type/count and node count, the
start command. Hyperparameters live in the request and are applied by train.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from truss.base.truss_config import AcceleratorSpec
from truss_train.definitions import (
    BasetenCheckpoint,
    CheckpointingConfig,
    Compute,
    Image,
    LoadCheckpointConfig,
    Runtime,
    SecretReference,
    TrainingJob,
    TrainingProject,
)

# The job's container image: PyTorch with CUDA. train.py's libraries are installed
# on top of it by START_COMMAND (torch itself comes from the image).
BASE_IMAGE = "pytorch/pytorch:2.14.0-cuda12.6-cudnn9-devel"

# Compute used when the request leaves a field out (null in runtime_config.json).
DEFAULT_ACCELERATOR = "H100"
DEFAULT_GPU_COUNT = 1
DEFAULT_NODE_COUNT = 1

# Baseten workspace secret exposed to the job as HF_TOKEN, unless the request's
# runtime_config.json names another one.
DEFAULT_HF_TOKEN_SECRET_NAME = "hf_access_token"  # noqa: S105 (a name, not a secret)

# Baseten workspace secret exposed to the job as WANDB_API_KEY when the request has a
# wandb integration (runtime_config.json's wandb_api_key_secret_name names another one).
DEFAULT_WANDB_API_KEY_SECRET_NAME = "wandb_api_key"  # noqa: S105 (a name, not a secret)

RUNTIME_CONFIG_FILE = "runtime_config.json"

# Runs in the uploaded copy of this folder: installs train.py's pinned libraries
# (requirements.txt beside this file) into the image's Python, then trains.
START_COMMAND = (
    "/bin/sh -c 'python -m pip install --no-cache-dir --disable-pip-version-check "
    "-r requirements.txt && exec python train.py'"
)


def _load_runtime_config() -> dict[str, Any]:
    path = Path(__file__).with_name(RUNTIME_CONFIG_FILE)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} is missing: the service writes it beside config.py before pushing"
        ) from None
    config = json.loads(text)
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a JSON object, not {type(config).__name__}")
    return config


def _required_str(config: dict[str, Any], key: str) -> str:
    value = config.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{RUNTIME_CONFIG_FILE}: {key!r} must be a non-empty string")
    return value


def _count(compute: dict[str, Any], key: str, default: int) -> int:
    value = compute.get(key)
    if value is None:
        return default
    # bool is an int in Python; a count of True is a bug upstream, not a 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{RUNTIME_CONFIG_FILE}: compute.{key} must be a positive integer")
    return value


def _resolve_compute(config: dict[str, Any]) -> dict[str, Any]:
    """The request's compute with every null or missing field set to its default."""
    compute = config.get("compute") or {}
    if not isinstance(compute, dict):
        raise ValueError(f"{RUNTIME_CONFIG_FILE}: 'compute' must be an object")
    accelerator = compute.get("accelerator")
    if accelerator is None:
        accelerator = DEFAULT_ACCELERATOR
    if not isinstance(accelerator, str) or not accelerator:
        raise ValueError(f"{RUNTIME_CONFIG_FILE}: compute.accelerator must be a string")
    return {
        "accelerator": accelerator,
        "gpu_count": _count(compute, "gpu_count", DEFAULT_GPU_COUNT),
        "node_count": _count(compute, "node_count", DEFAULT_NODE_COUNT),
    }


def _data_environment(config: dict[str, Any]) -> dict[str, str]:
    """DATASET_ID when the request names a dataset; nothing for the user's own file.

    Exactly one of ``dataset_id`` and ``training_file`` is set. train.py reads the
    file objects (``training_file``, ``validation_file``) from RUNTIME_CONFIG.
    """
    dataset_id = config.get("dataset_id")
    training_file = config.get("training_file")
    if (dataset_id is None) == (training_file is None):
        raise ValueError(
            f"{RUNTIME_CONFIG_FILE}: exactly one of 'dataset_id' and 'training_file' must be "
            f"set ({'both are' if dataset_id is not None else 'neither is'})"
        )
    if dataset_id is not None:
        return {"DATASET_ID": _required_str(config, "dataset_id")}
    for key in ("training_file", "validation_file"):
        value = config.get(key)
        if value is None and key == "validation_file":
            continue
        if (
            not isinstance(value, dict)
            or not isinstance(value.get("url"), str)
            or not isinstance(value.get("sha256"), str)
        ):
            raise ValueError(
                f"{RUNTIME_CONFIG_FILE}: {key!r} must be an object with string 'url' and 'sha256'"
            )
    return {}


def _secret_name(config: dict[str, Any]) -> str:
    name = config.get("hf_token_secret_name")
    if name is None:
        return DEFAULT_HF_TOKEN_SECRET_NAME
    if not isinstance(name, str) or not name:
        raise ValueError(f"{RUNTIME_CONFIG_FILE}: 'hf_token_secret_name' must be a string")
    return name


def _integration_environment(config: dict[str, Any]) -> dict[str, SecretReference]:
    """``WANDB_API_KEY`` as a reference to a Baseten secret when W&B is asked for, else nothing.

    ``integrations`` is OpenAI's list (``[{"type": "wandb", "wandb": {...}}]``); the key
    itself never appears in the request, the runtime config or the job's environment.
    """
    integrations = config.get("integrations") or []
    if not isinstance(integrations, list):
        raise ValueError(f"{RUNTIME_CONFIG_FILE}: 'integrations' must be a list")
    if not any(isinstance(item, dict) and item.get("type") == "wandb" for item in integrations):
        return {}
    name = config.get("wandb_api_key_secret_name")
    if name is None:
        name = DEFAULT_WANDB_API_KEY_SECRET_NAME
    if not isinstance(name, str) or not name:
        raise ValueError(f"{RUNTIME_CONFIG_FILE}: 'wandb_api_key_secret_name' must be a string")
    return {"WANDB_API_KEY": SecretReference(name=name)}


def _load_checkpoint(config: dict[str, Any]) -> LoadCheckpointConfig | None:
    """Baseten's ``load_checkpoint_config`` for ``resume_from`` (null: start fresh).

    ``resume_from`` = ``{"training_project_id", "training_job_id", "checkpoint_id"}``,
    written by the service's resume; a null ``checkpoint_id`` (a retry of a job that
    made no checkpoint) loads nothing. Baseten downloads the named checkpoint
    before train.py starts, to ``$BT_LOAD_CHECKPOINT_DIR/rank-0/``.
    """
    resume = config.get("resume_from")
    if resume is None:
        return None
    if not isinstance(resume, dict):
        raise ValueError(f"{RUNTIME_CONFIG_FILE}: 'resume_from' must be an object or null")
    checkpoint_id = resume.get("checkpoint_id")
    if checkpoint_id is None:
        return None
    job_id = resume.get("training_job_id")
    for key, value in (("checkpoint_id", checkpoint_id), ("training_job_id", job_id)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{RUNTIME_CONFIG_FILE}: resume_from.{key} must be a string")
    return LoadCheckpointConfig(
        enabled=True,
        checkpoints=[
            BasetenCheckpoint.from_named_checkpoint(checkpoint_name=checkpoint_id, job_id=job_id)
        ],
    )


def _build_project(config: dict[str, Any]) -> TrainingProject:
    compute = _resolve_compute(config)
    resolved = {**config, "compute": compute}
    runtime = Runtime(
        start_commands=[START_COMMAND],
        environment_variables={
            **_data_environment(config),
            "MODEL_ID": _required_str(config, "model_id"),
            "RUNTIME_CONFIG": json.dumps(resolved),
            "HF_TOKEN": SecretReference(name=_secret_name(config)),
            **_integration_environment(config),
        },
        checkpointing_config=CheckpointingConfig(enabled=True),
        load_checkpoint_config=_load_checkpoint(config),
    )
    job = TrainingJob(
        name=_required_str(config, "job_name"),
        image=Image(base_image=BASE_IMAGE),
        compute=Compute(
            node_count=compute["node_count"],
            accelerator=AcceleratorSpec(
                accelerator=compute["accelerator"], count=compute["gpu_count"]
            ),
        ),
        runtime=runtime,
    )
    return TrainingProject(name=_required_str(config, "project_name"), job=job)


training_project = _build_project(_load_runtime_config())
