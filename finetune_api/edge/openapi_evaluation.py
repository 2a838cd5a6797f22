"""The OpenAPI paths of "Did it get better?": the evaluation and a checkpoint's files."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from finetune_api.insights.schemas import EvaluationAnswer
from finetune_api.jobs.checkpoint_files import CheckpointFilePage

MODELS: tuple[type[BaseModel], ...] = (EvaluationAnswer, CheckpointFilePage)

_IDS = [
    {"name": "project_id", "in": "path", "required": True, "schema": {"type": "string"}},
    {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}},
]


def _json(name: str, description: str) -> dict[str, Any]:
    schema = {"$ref": f"#/components/schemas/{name}"}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def evaluation_paths(errors: dict[str, Any], common: dict[str, Any]) -> dict[str, Any]:
    """``errors`` is the error responses of the given statuses (``_errors(400, 404)``)."""
    return {
        "/jobs/{project_id}/{job_id}/evaluation": {
            "get": {
                "summary": "Did it get better? The base model beside the tuned one, and samples",
                "description": "Read from the job's own FT_METRICS eval and sample lines "
                "(docs/evaluation.md). Costs 1 job read + every log page of the job's life "
                "(at most 240 Baseten log requests); a finished job's answer is kept.",
                "operationId": "getJobEvaluation",
                "security": [{"ApiKey": []}],
                "parameters": _IDS,
                "responses": {
                    "200": _json(EvaluationAnswer.__name__, "evaluation"),
                    **errors,
                    **common,
                },
            }
        },
        "/jobs/{project_id}/{job_id}/checkpoints/{checkpoint_id}/files": {
            "get": {
                "summary": "Take the adapter home: a checkpoint's files as presigned URLs",
                "description": "Baseten's checkpoint_files, that checkpoint's only, paged. "
                "404 (a fixed message) for an unknown job or checkpoint.",
                "operationId": "listCheckpointFiles",
                "security": [{"ApiKey": []}],
                "parameters": [
                    *_IDS,
                    {
                        "name": "checkpoint_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": 1000,
                            "default": 100,
                        },
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "next_cursor of the previous page",
                    },
                ],
                "responses": {
                    "200": _json(CheckpointFilePage.__name__, "files"),
                    **errors,
                    **common,
                },
            }
        },
    }


__all__ = ["MODELS", "evaluation_paths"]
