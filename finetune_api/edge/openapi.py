"""OpenAPI 3.1 document of ``train_http`` and ``poll_jobs``, generated from the schemas."""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

from finetune_api.core.schemas import (
    CheckpointList,
    Deployment,
    DeploymentRequest,
    ErrorBody,
    Job,
    JobList,
    JobWithCheckpoints,
    PollReport,
    PollRequest,
    ResumedJob,
    ResumeRequest,
    TrainingRequest,
)
from finetune_api.edge.openapi_evaluation import MODELS as EVALUATION_MODELS
from finetune_api.edge.openapi_evaluation import evaluation_paths
from finetune_api.files.schemas import DryRun, File, FileDeleted, FileList, LargeFileRequest
from finetune_api.insights.schemas import LogPage, MetricsAnswer


class RetryState(BaseModel):
    """``data.retry`` of ``training_job.failed`` for a job submitted with ``retry``."""

    attempts_used: int = Field(description="retries that led to this job (0: the submitted one)")
    max_attempts: int
    attempts_left: int = Field(description="0: this was the last attempt; nothing starts again")
    will_retry: bool


class FailedEventData(Job):
    retry: RetryState | None = Field(
        default=None, description="present when the job was submitted with retry"
    )


class FailedEvent(BaseModel):
    """``training_job.failed`` (the other ``training_job.<status>`` events carry the Job)."""

    id: str = Field(description="evt_<job>_failed")
    type: str = Field(json_schema_extra={"const": "training_job.failed"})
    timestamp: str
    data: FailedEventData


class RetriedEventData(BaseModel):
    failed_job: Job
    job: ResumedJob = Field(description="the new job; its resumed_from names the failed one")
    attempt: int = Field(ge=1, le=5, description="1 for the first retry")
    max_attempts: int = Field(ge=1, le=5)


class RetriedEvent(BaseModel):
    """``training_job.retried``: poll_jobs started a failed job again (once per failure)."""

    id: str = Field(description="evt_<failed job>_retried")
    type: str = Field(json_schema_extra={"const": "training_job.retried"})
    timestamp: str
    data: RetriedEventData


_MODELS: tuple[type[BaseModel], ...] = (
    TrainingRequest,
    Job,
    JobWithCheckpoints,
    JobList,
    CheckpointList,
    PollRequest,
    PollReport,
    ErrorBody,
    DeploymentRequest,
    Deployment,
    LogPage,
    MetricsAnswer,
    File,
    FileList,
    FileDeleted,
    LargeFileRequest,
    DryRun,
    ResumeRequest,
    ResumedJob,
    FailedEvent,
    RetriedEvent,
    *EVALUATION_MODELS,
)


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(status): _json(ErrorBody, "error") for status in statuses}


_PATH_IDS = [
    {"name": "project_id", "in": "path", "required": True, "schema": {"type": "string"}},
    {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}},
]
_API_KEY: list[dict[str, list[str]]] = [{"ApiKey": []}]
_TIME = {"type": "string", "format": "date-time"}
_LOG_PARAMETERS = [
    {"name": "since", "in": "query", "schema": _TIME, "description": "default: job creation"},
    {"name": "until", "in": "query", "schema": _TIME, "description": "default: now"},
    {
        "name": "limit",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
    },
    {"name": "order", "in": "query", "schema": {"enum": ["asc", "desc"], "default": "asc"}},
    {
        "name": "level",
        "in": "query",
        "schema": {"enum": ["DEBUG", "INFO", "WARNING", "ERROR"]},
        "description": "minimum level; lines without a level are then left out",
    },
    {
        "name": "cursor",
        "in": "query",
        "schema": {"type": "string"},
        "description": "next_cursor of the previous page (only limit may be sent with it)",
    },
]
_METRICS_PARAMETERS = [
    {"name": "since", "in": "query", "schema": _TIME},
    {"name": "until", "in": "query", "schema": _TIME},
    {
        "name": "points",
        "in": "query",
        "schema": {"type": "integer", "minimum": 2, "maximum": 10000, "default": 500},
        "description": "most points per series (shape-keeping min/max buckets)",
    },
    {"name": "format", "in": "query", "schema": {"enum": ["json", "svg"]}},
]


_DEPLOYMENT_IDS = [
    {"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}},
    {"name": "deployment_id", "in": "path", "required": True, "schema": {"type": "string"}},
]


def _deployment_paths(common: dict[str, Any]) -> dict[str, Any]:
    return {
        "/jobs/{project_id}/{job_id}/deployments": {
            "post": {
                "summary": "Deploy a checkpoint of a completed job as a Baseten model",
                "description": "Defaults: the job's newest LoRA checkpoint, a model name derived "
                "from the job name, one GPU of the first allowed accelerator. The same "
                "checkpoint under the same model name again answers the existing deployment "
                "(200, idempotent_replay: true). dry_run validates with Baseten and creates "
                "nothing (200, status dry_run). The deployment costs money while it has "
                "replicas; deactivate it to stop paying.",
                "operationId": "deployCheckpoint",
                "security": _API_KEY,
                "parameters": [
                    *_PATH_IDS,
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                        "description": "a retry with the same key answers the same deployment",
                    },
                ],
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": _ref(DeploymentRequest)}},
                },
                "responses": {
                    "202": _json(Deployment, "deployment created; it builds, then goes active"),
                    "200": _json(Deployment, "idempotent replay, or the dry_run result"),
                    **_errors(400, 404, 409, 413, 415, 422),
                    **common,
                },
            }
        },
        "/deployments/{model_id}/{deployment_id}": {
            "get": {
                "summary": "Read a deployment",
                "operationId": "getDeployment",
                "security": _API_KEY,
                "parameters": _DEPLOYMENT_IDS,
                "responses": {"200": _json(Deployment, "deployment"), **_errors(404), **common},
            }
        },
        "/deployments/{model_id}/{deployment_id}/deactivate": {
            "post": {
                "summary": "Deactivate a deployment (stop paying for it)",
                "operationId": "deactivateDeployment",
                "security": _API_KEY,
                "parameters": _DEPLOYMENT_IDS,
                "responses": {
                    "200": _json(Deployment, "deployment after deactivating"),
                    **_errors(404, 422),
                    **common,
                },
            }
        },
    }


_FILE_ID = [{"name": "file_id", "in": "path", "required": True, "schema": {"type": "string"}}]


def _file_paths(common: dict[str, Any]) -> dict[str, Any]:
    return {
        "/files": {
            "post": {
                "summary": "Upload a JSONL file (multipart), or open the large-file path (JSON)",
                "description": "multipart/form-data with `file` and `purpose=fine-tune`, up to "
                "MAX_UPLOAD_BYTES: the answer is the File, already checked (processed or "
                "error). JSON {filename, bytes, purpose}: a File pending_upload with an "
                "upload_url (a Cloud Storage resumable session): PUT the bytes there, then "
                "POST /files/{file_id}/complete. The upload_url is in this answer only (it "
                "accepts writes): never in a GET. bytes over MAX_FILE_BYTES: 413.",
                "operationId": "createFile",
                "security": _API_KEY,
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "required": ["file", "purpose"],
                                "properties": {
                                    "file": {"type": "string", "format": "binary"},
                                    "purpose": {"const": "fine-tune"},
                                },
                            }
                        },
                        "application/json": {"schema": _ref(LargeFileRequest)},
                    },
                },
                "responses": {
                    "201": _json(File, "the File"),
                    **_errors(400, 413, 415),
                    **common,
                },
            },
            "get": {
                "summary": "List files, newest first",
                "operationId": "listFiles",
                "security": _API_KEY,
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                    },
                    {
                        "name": "after",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "the last id of the previous page",
                    },
                ],
                "responses": {"200": _json(FileList, "files"), **_errors(400), **common},
            },
        },
        "/files/{file_id}": {
            "get": {
                "summary": "Read a File",
                "operationId": "getFile",
                "security": _API_KEY,
                "parameters": _FILE_ID,
                "responses": {"200": _json(File, "the File"), **_errors(404), **common},
            },
            "delete": {
                "summary": "Delete a File and its bytes",
                "description": "409 conflict naming the job while a job that has not ended "
                "was created on the File.",
                "operationId": "deleteFile",
                "security": _API_KEY,
                "parameters": _FILE_ID,
                "responses": {
                    "200": _json(FileDeleted, "deleted"),
                    **_errors(404, 409),
                    **common,
                },
            },
        },
        "/files/{file_id}/complete": {
            "post": {
                "summary": "Check what was uploaded to upload_url",
                "description": "409 (the File stays pending_upload) while nothing or not all "
                "of it arrived; 413 (and the File is deleted) when more than MAX_FILE_BYTES "
                "arrived; 503 when storage fails during the check (retry). 202 with the File "
                "validating when the check would outlast FILE_CHECK_WAIT_SECONDS: it goes on "
                "without the caller; poll GET /files/{file_id}.",
                "operationId": "completeFile",
                "security": _API_KEY,
                "parameters": _FILE_ID,
                "responses": {
                    "200": _json(File, "the checked File"),
                    "202": _json(File, "the File validating: the check goes on"),
                    **_errors(404, 409, 413),
                    **common,
                },
            }
        },
        "/files/{file_id}/content": {
            "put": {
                "summary": "Upload session of the local store (no FILES_BUCKET): the bytes",
                "description": "Only the upload_url of a service without FILES_BUCKET points "
                "here; with a bucket, bytes go to Cloud Storage, never through the function. "
                "Needs the session's token (404 without it) and takes the bytes once (409 "
                "after).",
                "operationId": "putFileContent",
                "security": _API_KEY,
                "parameters": [
                    *_FILE_ID,
                    {
                        "name": "token",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string"},
                        "description": "the session's token, from the upload_url",
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/octet-stream": {"schema": {"type": "string"}}},
                },
                "responses": {"200": {"description": "stored"}, **_errors(400, 404, 409), **common},
            }
        },
    }


def _resume_paths(common: dict[str, Any]) -> dict[str, Any]:
    return {
        "/jobs/{project_id}/{job_id}/resume": {
            "post": {
                "summary": "Start a new job that continues an ended one from a checkpoint",
                "description": "The newest checkpoint unless checkpoint_id. The new job runs "
                "the job's own request (read back from the job), with the fields of "
                "hyperparameters and compute given here replaced, in the same project; "
                "Baseten loads the checkpoint before the training code starts "
                "(runtime.load_checkpoint_config). 409 while the job runs or when it has no "
                "checkpoint; 404 for an unknown job or checkpoint (or a job outside "
                "PROJECT_NAME_PREFIX).",
                "operationId": "resumeJob",
                "security": _API_KEY,
                "parameters": [
                    *_PATH_IDS,
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                        "description": "same key → same new job (200, idempotent_replay: true)",
                    },
                ],
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": _ref(ResumeRequest)}},
                },
                "responses": {
                    "201": _json(ResumedJob, "the new job, with resumed_from"),
                    "200": _json(ResumedJob, "idempotent replay: the job created with this key"),
                    **_errors(400, 404, 409, 413, 415, 422, 429),
                    **common,
                },
            }
        }
    }


def _event(model: type[BaseModel], summary: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "description": "POSTed to WEBHOOK_URL, signed per Standard Webhooks "
            "(webhook-id = the event id), and logged as one structured line.",
            "requestBody": {"content": {"application/json": {"schema": _ref(model)}}},
            "responses": {"2XX": {"description": "received"}},
        }
    }


@functools.cache
def openapi_document() -> dict[str, Any]:
    _, definitions = models_json_schema(
        [(model, "serialization") for model in _MODELS], ref_template="#/components/schemas/{model}"
    )
    common = _errors(401, 500, 502, 503)
    # Teams: the Job object names its team once team:key entries exist (no field before).
    team = {
        "type": "string",
        "description": "the team whose job this is (only once API_KEYS has team:key entries)",
    }
    for name in ("Job", "JobWithCheckpoints", "ResumedJob"):
        if name in definitions.get("$defs", {}):
            definitions["$defs"][name].setdefault("properties", {})["team"] = team
    paths: dict[str, Any] = {
        "/jobs": {
            "post": {
                "summary": "Submit a training job",
                "operationId": "submitJob",
                "security": _API_KEY,
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                        "description": "same key → same job (200, idempotent_replay: true)",
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref(TrainingRequest)}},
                },
                "responses": {
                    "201": _json(Job, "job created"),
                    "200": {
                        "description": "idempotent replay (the original job), or a dry run",
                        "content": {
                            "application/json": {"schema": {"oneOf": [_ref(Job), _ref(DryRun)]}}
                        },
                    },
                    **_errors(400, 413, 415, 422),
                    # quota_exceeded: the team's TEAM_LIMITS would be passed; nothing created.
                    **_errors(429),
                    **common,
                },
            },
            "get": {
                "summary": "List jobs (one project or all), newest first",
                "operationId": "listJobs",
                "security": _API_KEY,
                "parameters": [
                    {
                        "name": "project_id",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                        "description": "one project's jobs; every project's when absent",
                    },
                    {
                        "name": "status",
                        "in": "query",
                        "required": False,
                        "explode": True,
                        "schema": {"type": "array", "items": {"type": "string"}},
                        "description": "running or TRAINING_JOB_RUNNING; repeatable",
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                    },
                ],
                "responses": {"200": _json(JobList, "jobs"), **_errors(400, 404), **common},
            },
        },
        "/jobs/{project_id}/{job_id}": {
            "get": {
                "summary": "Read a job with its checkpoints",
                "operationId": "getJob",
                "security": _API_KEY,
                "parameters": _PATH_IDS,
                "responses": {"200": _json(JobWithCheckpoints, "job"), **_errors(404), **common},
            }
        },
        "/jobs/{project_id}/{job_id}/checkpoints": {
            "get": {
                "summary": "List a job's checkpoints",
                "operationId": "listCheckpoints",
                "security": _API_KEY,
                "parameters": _PATH_IDS,
                "responses": {
                    "200": _json(CheckpointList, "checkpoints"),
                    **_errors(404),
                    **common,
                },
            }
        },
        "/jobs/{project_id}/{job_id}/stop": {
            "post": {
                "summary": "Stop a job",
                "operationId": "stopJob",
                "security": _API_KEY,
                "parameters": _PATH_IDS,
                "responses": {
                    "200": _json(Job, "job after stopping"),
                    **_errors(404, 422),
                    **common,
                },
            }
        },
        "/jobs/{project_id}/{job_id}/logs": {
            "get": {
                "summary": "One page of a job's log (Baseten's GET logs, paged exactly)",
                "operationId": "getJobLogs",
                "security": _API_KEY,
                "parameters": [*_PATH_IDS, *_LOG_PARAMETERS],
                "responses": {
                    "200": _json(LogPage, "log lines"),
                    **_errors(400, 404),
                    **common,
                },
            }
        },
        "/jobs/{project_id}/{job_id}/metrics": {
            "get": {
                "summary": "Training series (from the job's FT_METRICS lines) and system series",
                "description": "Answers image/svg+xml (a loss chart) with Accept: image/svg+xml "
                "or ?format=svg.",
                "operationId": "getJobMetrics",
                "security": _API_KEY,
                "parameters": [*_PATH_IDS, *_METRICS_PARAMETERS],
                "responses": {
                    "200": {
                        "description": "metrics",
                        "content": {
                            "application/json": {"schema": _ref(MetricsAnswer)},
                            "image/svg+xml": {"schema": {"type": "string"}},
                        },
                    },
                    **_errors(400, 404),
                    **common,
                },
            }
        },
        **_deployment_paths(common),
        **_resume_paths(common),
        **evaluation_paths(_errors(400, 404), common),
        "/healthz": {
            "get": {
                "summary": "Liveness; contacts nothing",
                "operationId": "healthz",
                "security": [],
                "responses": {
                    "200": {
                        "description": "ok",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"status": {"type": "string", "const": "ok"}},
                                }
                            }
                        },
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "security": _API_KEY,
                "responses": {"200": {"description": "OpenAPI 3.1 document"}},
            }
        },
    }
    poll = {
        "summary": "poll_jobs function: report status changes and new checkpoints",
        "description": "Served by the separate poll_jobs function at its root URL.",
        "operationId": "pollJobs",
        "security": _API_KEY,
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": _ref(PollRequest)}},
        },
        "responses": {"200": _json(PollReport, "poll report"), **_errors(400), **common},
    }
    paths.update(_file_paths(common))
    paths["/poll"] = {
        "post": poll,
        "get": {**poll, "operationId": "pollJobsGet", "requestBody": None},
    }
    del paths["/poll"]["get"]["requestBody"]
    from finetune_api.edge.openapi_v1 import SCHEMAS, v1_paths

    paths.update(v1_paths())
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Baseten fine-tuning functions",
            "version": "1.0.0",
            "description": "Start, read, list, stop and resume Baseten training jobs; read "
            "their logs, metrics and progress; deploy their checkpoints as Baseten models. Under "
            "/v1/, the same through OpenAI's fine-tuning, files, uploads, models and chat API.",
        },
        "paths": paths,
        "webhooks": {
            "training_job.failed": _event(
                FailedEvent, "A job failed; with retry, whether attempts are left"
            ),
            "training_job.retried": _event(
                RetriedEvent, "poll_jobs started a failed job again (submit's retry)"
            ),
        },
        "components": {
            "schemas": {**definitions["$defs"], **SCHEMAS},
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
                "Bearer": {"type": "http", "scheme": "bearer", "description": "same API_KEYS"},
            },
        },
    }
