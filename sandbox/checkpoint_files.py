"""``GET /v1/training_projects/{p}/jobs/{j}/checkpoint_files``, as Baseten's document defines it.

``getTrainingJobCheckpointFiles``: presigned URLs of every checkpoint file of a
job, ``relative_file_name`` = ``<checkpoint_id>/<file>``, paged by ``page_size``
(default 1000, at least 1) and ``page_token`` (an offset, default 0);
``next_page_token`` is the next offset, null after the last page, and
``total_count`` the number of files in all.

The files really exist: the first listing of a job's checkpoints writes each
checkpoint's LoRA adapter (``adapter_config.json``, a small
``adapter_model.safetensors``, ``trainer_state.json``) into the sandbox's S3
bucket (moto) under ``checkpoints/<job_id>/``, so each presigned URL downloads
the bytes it names; sizes and times are S3's own.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any, Protocol

from sandbox.errors import SandboxApiError

ROOT = "checkpoints"
DEFAULT_PAGE_SIZE = 1000


class Side(Protocol):
    """What this module needs of the sandbox state (:class:`sandbox.state.SandboxState`)."""

    s3: Any
    _lock: Any

    def _job_or_404(self, project_id: str, job_id: str) -> Any: ...


def _offset(params: Mapping[str, Any], name: str, default: int, low: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    text = str(raw)
    if not text.isascii() or not text.isdigit() or len(text) > 12 or int(text) < low:
        raise SandboxApiError(400, "VALIDATION_ERROR", f"{name}: an integer of at least {low}")
    return int(text)


def safetensors(rank: int) -> bytes:
    """A valid safetensors file holding one zero F32 tensor ``lora_A`` of shape [rank, 8]."""
    shape = [max(1, rank), 8]
    size = shape[0] * shape[1] * 4
    header = {
        "base_model.model.lora_A.weight": {
            "dtype": "F32",
            "shape": shape,
            "data_offsets": [0, size],
        }
    }
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + bytes(size)


def adapter_files(checkpoint: Mapping[str, Any]) -> dict[str, bytes]:
    lora = dict(checkpoint.get("lora_adapter_config") or {})
    rank = lora.get("r", 16)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": checkpoint.get("base_model"),
        **lora,
    }
    state = {"checkpoint": checkpoint.get("checkpoint_id"), "created_at": checkpoint["created_at"]}
    return {
        "adapter_config.json": json.dumps(config, indent=2).encode(),
        "adapter_model.safetensors": safetensors(rank if isinstance(rank, int) else 16),
        "trainer_state.json": json.dumps(state).encode(),
    }


def checkpoint_files(
    side: Side, project_id: str, job_id: str, params: Mapping[str, Any]
) -> dict[str, Any]:
    size = _offset(params, "page_size", DEFAULT_PAGE_SIZE, 1)
    token = _offset(params, "page_token", 0, 0)
    with side._lock:
        job = side._job_or_404(project_id, job_id)
        checkpoints = [dict(item) for item in job.checkpoints]
        real_job_id = job.id
    s3 = side.s3
    prefix = f"{ROOT}/{real_job_id}/"
    stored = {item["Key"]: item for item in s3.list_objects(prefix)}
    written = False
    for checkpoint in checkpoints:
        for name, data in adapter_files(checkpoint).items():
            key = f"{prefix}{checkpoint['checkpoint_id']}/{name}"
            if key not in stored:
                s3.put_object(key, data)
                written = True
    if written:
        stored = {item["Key"]: item for item in s3.list_objects(prefix)}
    keys = sorted(stored)
    page = keys[token : token + size]
    files = [
        {
            "url": s3.presigned_get(s3.bucket, key),
            "relative_file_name": key[len(prefix) :],
            "node_rank": 0,
            "size_bytes": int(stored[key]["Size"]),
            "last_modified": stored[key]["LastModified"].isoformat(),
        }
        for key in page
    ]
    more = token + size < len(keys)
    return {
        "presigned_urls": files,
        "next_page_token": token + size if more else None,
        "total_count": len(keys),
    }


__all__ = ["adapter_files", "checkpoint_files", "safetensors"]
