"""OpenAPI 3.1 document of ``train_http`` and ``poll_jobs``, generated from the schemas."""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel
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
    TrainingRequest,
)
from finetune_api.insights.schemas import LogPage, MetricsAnswer

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


@functools.cache
def openapi_document() -> dict[str, Any]:
    _, definitions = models_json_schema(
        [(model, "serialization") for model in _MODELS], ref_template="#/components/schemas/{model}"
    )
    common = _errors(401, 500, 502, 503)
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
                    "200": _json(Job, "idempotent replay: the original job"),
                    **_errors(400, 413, 415, 422),
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
            "description": "Start, read, list and stop Baseten training jobs; read their logs, "
            "metrics and progress; deploy their checkpoints as Baseten models. Under /v1/, the "
            "same through OpenAI's fine-tuning, files, uploads, models and chat API.",
        },
        "paths": paths,
        "components": {
            "schemas": {**definitions["$defs"], **SCHEMAS},
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
                "Bearer": {"type": "http", "scheme": "bearer", "description": "same API_KEYS"},
            },
        },
    }
