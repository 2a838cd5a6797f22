"""Strict validation of the create-job body, as truss 0.18.36 sends it.

The sandbox is stricter than it strictly needs to be on purpose: unknown keys,
wrong types and missing required parts are rejected with a message that names
the offending path (``training_job.runtime.start_commands[0]: ...``), so a
client that builds the body by hand, or a truss upgrade that changes it, fails
loudly in tests instead of in production.
"""

from __future__ import annotations

import re
from typing import Any

from sandbox import checkpoint_loading
from sandbox.errors import SandboxApiError

ACCELERATORS = frozenset(
    {
        "B10",
        "T4",
        "L4",
        "A10G",
        "V100",
        "A100",
        "A100_40GB",
        "H100",
        "H200",
        "H100_40GB",
        "B200",
        "L40S",
        "RTX_PRO_6000",
        "B300",
        "GB300",
    }
)
AVAILABILITY_MODELS = frozenset({"dedicated", "spot"})

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MEMORY = re.compile(r"[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|K|M|G|T)?")

_JOB_REQUIRED = frozenset({"image", "compute", "runtime"})
_JOB_OPTIONAL = frozenset(
    {
        "interactive_session",
        "name",
        "priority",
        "workspace",
        "weights",
        "enable_baseten_workdir",
        "truss_user_env",
    }
)
_IMAGE_KEYS = frozenset({"base_image", "docker_auth"})
_COMPUTE_KEYS = frozenset(
    {"node_count", "cpu_count", "memory", "accelerator", "availability_model"}
)
_RUNTIME_REQUIRED = frozenset({"start_commands", "artifacts"})
_RUNTIME_OPTIONAL = frozenset(
    {
        "environment_variables",
        "enable_cache",
        "checkpointing_config",
        "load_checkpoint_config",
        "cache_config",
    }
)
_CHECKPOINTING_KEYS = frozenset({"enabled", "checkpoint_path", "volume_size_gib"})


def _fail(path: str, reason: str) -> SandboxApiError:
    return SandboxApiError(400, "VALIDATION_ERROR", f"{path}: {reason}")


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _obj(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(path, f"expected an object, got {_type_name(value)}")
    return value


def _keys(
    value: dict[str, Any], path: str, required: frozenset[str], optional: frozenset[str]
) -> None:
    missing = sorted(required - value.keys())
    if missing:
        raise _fail(f"{path}.{missing[0]}", "field required")
    unknown = sorted(value.keys() - required - optional)
    if unknown:
        raise _fail(f"{path}.{unknown[0]}", "unknown field")


def _str(value: Any, path: str, *, nullable: bool = False, non_empty: bool = True) -> None:
    if value is None and nullable:
        return
    if not isinstance(value, str):
        raise _fail(path, f"expected a string, got {_type_name(value)}")
    if non_empty and not value.strip():
        raise _fail(path, "must not be empty")


def _int(value: Any, path: str, *, minimum: int | None = None, nullable: bool = False) -> None:
    if value is None and nullable:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(path, f"expected an integer, got {_type_name(value)}")
    if minimum is not None and value < minimum:
        raise _fail(path, f"must be >= {minimum}")


def _bool(value: Any, path: str, *, nullable: bool = False) -> None:
    if value is None and nullable:
        return
    if not isinstance(value, bool):
        raise _fail(path, f"expected a boolean, got {_type_name(value)}")


def _nullable_obj(value: Any, path: str) -> None:
    if value is not None:
        _obj(value, path)


def _image(value: Any, path: str) -> None:
    image = _obj(value, path)
    _keys(image, path, frozenset({"base_image"}), _IMAGE_KEYS)
    _str(image["base_image"], f"{path}.base_image")
    _nullable_obj(image.get("docker_auth"), f"{path}.docker_auth")


def _compute(value: Any, path: str) -> None:
    compute = _obj(value, path)
    _keys(compute, path, frozenset(), _COMPUTE_KEYS)
    if "node_count" in compute:
        _int(compute["node_count"], f"{path}.node_count", minimum=1)
    if "cpu_count" in compute:
        _int(compute["cpu_count"], f"{path}.cpu_count", minimum=1)
    if "memory" in compute:
        _str(compute["memory"], f"{path}.memory")
        if not _MEMORY.fullmatch(compute["memory"]):
            raise _fail(f"{path}.memory", "expected a quantity such as '2Gi'")
    accelerator = compute.get("accelerator")
    if accelerator is not None:
        acc = _obj(accelerator, f"{path}.accelerator")
        _keys(acc, f"{path}.accelerator", frozenset({"accelerator", "count"}), frozenset())
        _str(acc["accelerator"], f"{path}.accelerator.accelerator")
        if acc["accelerator"] not in ACCELERATORS:
            raise _fail(
                f"{path}.accelerator.accelerator",
                f"unknown accelerator {acc['accelerator']!r}",
            )
        _int(acc["count"], f"{path}.accelerator.count", minimum=1)
    if "availability_model" in compute:
        _str(compute["availability_model"], f"{path}.availability_model")
        if compute["availability_model"] not in AVAILABILITY_MODELS:
            raise _fail(
                f"{path}.availability_model",
                f"expected one of {sorted(AVAILABILITY_MODELS)}",
            )


def _environment(value: Any, path: str) -> None:
    env = _obj(value, path)
    for name, item in env.items():
        item_path = f"{path}.{name}"
        if not _ENV_NAME.fullmatch(name):
            raise _fail(item_path, "not a valid environment variable name")
        if isinstance(item, str):
            continue
        if isinstance(item, dict):
            _keys(item, item_path, frozenset({"name"}), frozenset())
            _str(item["name"], f"{item_path}.name")
            continue
        raise _fail(
            item_path,
            f'expected a string or a secret reference {{"name": ...}}, got {_type_name(item)}',
        )


def _artifacts(value: Any, path: str) -> None:
    if not isinstance(value, list):
        raise _fail(path, f"expected an array, got {_type_name(value)}")
    if not value:
        raise _fail(path, "at least one artifact is required")
    for index, item in enumerate(value):
        item_path = f"{path}[{index}]"
        artifact = _obj(item, item_path)
        _keys(artifact, item_path, frozenset({"s3_bucket", "s3_key"}), frozenset())
        _str(artifact["s3_bucket"], f"{item_path}.s3_bucket")
        _str(artifact["s3_key"], f"{item_path}.s3_key")


def _runtime(value: Any, path: str) -> None:
    runtime = _obj(value, path)
    _keys(runtime, path, _RUNTIME_REQUIRED, _RUNTIME_OPTIONAL)
    commands = runtime["start_commands"]
    if not isinstance(commands, list):
        raise _fail(f"{path}.start_commands", f"expected an array, got {_type_name(commands)}")
    if not commands:
        raise _fail(f"{path}.start_commands", "at least one start command is required")
    for index, command in enumerate(commands):
        _str(command, f"{path}.start_commands[{index}]")
    if "environment_variables" in runtime:
        _environment(runtime["environment_variables"], f"{path}.environment_variables")
    _bool(runtime.get("enable_cache"), f"{path}.enable_cache", nullable=True)
    checkpointing = runtime.get("checkpointing_config")
    if checkpointing is not None:
        cp_path = f"{path}.checkpointing_config"
        cp = _obj(checkpointing, cp_path)
        _keys(cp, cp_path, frozenset(), _CHECKPOINTING_KEYS)
        if "enabled" in cp:
            _bool(cp["enabled"], f"{cp_path}.enabled")
        _str(cp.get("checkpoint_path"), f"{cp_path}.checkpoint_path", nullable=True)
        _int(cp.get("volume_size_gib"), f"{cp_path}.volume_size_gib", minimum=1, nullable=True)
    checkpoint_loading.check_shape(
        runtime.get("load_checkpoint_config"), f"{path}.load_checkpoint_config"
    )
    _nullable_obj(runtime.get("cache_config"), f"{path}.cache_config")
    _artifacts(runtime["artifacts"], f"{path}.artifacts")


def validate_create_job_body(body: Any) -> dict[str, Any]:
    """Check a create-job request body; return its ``training_job`` object.

    Raises :class:`SandboxApiError` (400, ``VALIDATION_ERROR``) on the first
    problem found.
    """
    root = _obj(body, "body")
    _keys(root, "body", frozenset({"training_job"}), frozenset())
    path = "training_job"
    job = _obj(root["training_job"], path)
    _keys(job, path, _JOB_REQUIRED, _JOB_OPTIONAL)
    _image(job["image"], f"{path}.image")
    _compute(job["compute"], f"{path}.compute")
    _runtime(job["runtime"], f"{path}.runtime")
    _nullable_obj(job.get("interactive_session"), f"{path}.interactive_session")
    _str(job.get("name"), f"{path}.name", nullable=True)
    _int(job.get("priority"), f"{path}.priority", nullable=True)
    _nullable_obj(job.get("workspace"), f"{path}.workspace")
    if "weights" in job and not isinstance(job["weights"], list):
        raise _fail(f"{path}.weights", f"expected an array, got {_type_name(job['weights'])}")
    if "enable_baseten_workdir" in job:
        _bool(job["enable_baseten_workdir"], f"{path}.enable_baseten_workdir")
    _nullable_obj(job.get("truss_user_env"), f"{path}.truss_user_env")
    return job


def artifacts_of(job: dict[str, Any]) -> list[tuple[str, str]]:
    """The ``(bucket, key)`` pairs of a validated ``training_job`` object."""
    return [(a["s3_bucket"], a["s3_key"]) for a in job["runtime"]["artifacts"]]
