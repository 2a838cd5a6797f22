"""The ``/v1/`` part of the OpenAPI document: OpenAI's shapes as this service answers them."""

from __future__ import annotations

from typing import Any

_SECURITY: list[dict[str, list[str]]] = [{"Bearer": []}, {"ApiKey": []}]
_STR = {"type": "string"}
_INT = {"type": "integer"}
_NULL_STR = {"type": ["string", "null"]}
_NULL_INT = {"type": ["integer", "null"]}


def _obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def _list_of(name: str) -> dict[str, Any]:
    return _obj(
        {
            "object": {"const": "list"},
            "data": {"type": "array", "items": {"$ref": f"#/components/schemas/{name}"}},
            "has_more": {"type": "boolean"},
            "first_id": _NULL_STR,
            "last_id": _NULL_STR,
        },
        ["object", "data", "has_more"],
    )


_INTEGRATIONS = {
    "type": "array",
    "description": "OpenAI's shape; one wandb entry at most: the job reports to W&B with "
    "WANDB_API_KEY from the Baseten secret WANDB_API_KEY_SECRET_NAME",
    "items": _obj(
        {
            "type": {"const": "wandb"},
            "wandb": _obj(
                {
                    "project": {"type": "string", "minLength": 1, "maxLength": 128},
                    "entity": {"type": ["string", "null"]},
                    "name": {"type": ["string", "null"]},
                    "tags": {"type": ["array", "null"], "items": {"type": "string"}},
                },
                ["project"],
            ),
        },
        ["type", "wandb"],
    ),
}
_HYPERPARAMETERS = _obj(
    {
        "n_epochs": {
            "oneOf": [{"const": "auto"}, {"type": "integer", "minimum": 1, "maximum": 100}]
        },
        "batch_size": {
            "oneOf": [{"const": "auto"}, {"type": "integer", "minimum": 1, "maximum": 1024}]
        },
        "learning_rate_multiplier": {
            "oneOf": [{"const": "auto"}, {"type": "number", "exclusiveMinimum": 0}],
            "description": "multiplies the base learning rate 2e-4 (LoRA)",
        },
    }
)
_DPO_HYPERPARAMETERS: dict[str, Any] = {
    **_HYPERPARAMETERS,
    "properties": {
        **_HYPERPARAMETERS["properties"],
        "beta": {
            "oneOf": [{"const": "auto"}, {"type": "number", "exclusiveMinimum": 0, "maximum": 10}],
            "description": "DPO's beta (auto: 0.1)",
        },
    },
}
# The create body's method: OpenAI's shape; "reinforcement" is a 400 (code unsupported_method).
_METHOD = {
    "oneOf": [
        _obj(
            {
                "type": {"const": "supervised"},
                "supervised": _obj({"hyperparameters": _HYPERPARAMETERS}),
            },
            ["type"],
        ),
        _obj(
            {
                "type": {"const": "dpo"},
                "dpo": _obj({"hyperparameters": _DPO_HYPERPARAMETERS}),
            },
            ["type"],
        ),
    ],
    "description": "supervised (default) or dpo (a preference file); reinforcement is a 400 "
    "with code unsupported_method. Each value a number or auto (our default)",
}


# A job's hyperparameters as it echoes them: the numbers used, never "auto".
_USED = {
    "n_epochs": {"type": "integer"},
    "batch_size": {"type": "integer"},
    "learning_rate_multiplier": {"type": "number"},
}


# The job's method: the values it runs with.
_METHOD_USED = {
    "oneOf": [
        _obj(
            {
                "type": {"const": "supervised"},
                "supervised": _obj({"hyperparameters": _obj(_USED)}),
            },
            ["type", "supervised"],
        ),
        _obj(
            {
                "type": {"const": "dpo"},
                "dpo": _obj({"hyperparameters": _obj({**_USED, "beta": {"type": "number"}})}),
            },
            ["type", "dpo"],
        ),
    ],
    "description": "the method the job runs, with the values used (numbers, never auto)",
}

SCHEMAS: dict[str, Any] = {
    "OpenAIError": _obj(
        {
            "error": _obj(
                {
                    "message": _STR,
                    "type": _STR,
                    "param": _NULL_STR,
                    "code": _NULL_STR,
                },
                ["message", "type", "param", "code"],
            )
        },
        ["error"],
    ),
    "OpenAIFile": _obj(
        {
            "id": _STR,
            "object": {"const": "file"},
            "bytes": _NULL_INT,
            "created_at": _INT,
            "filename": _STR,
            "purpose": {"const": "fine-tune"},
            "status": {"enum": ["pending_upload", "validating", "processed", "error"]},
            "sha256": _NULL_STR,
            "validation": {"type": ["object", "null"]},
        },
        ["id", "object", "created_at", "filename", "purpose", "status"],
    ),
    "OpenAIUpload": _obj(
        {
            "id": _STR,
            "object": {"const": "upload"},
            "bytes": _INT,
            "created_at": _INT,
            "expires_at": _INT,
            "filename": _STR,
            "purpose": _STR,
            "status": {"enum": ["pending", "completed", "cancelled"]},
            "file": {"oneOf": [{"$ref": "#/components/schemas/OpenAIFile"}, {"type": "null"}]},
        }
    ),
    "OpenAIUploadPart": _obj(
        {"id": _STR, "object": {"const": "upload.part"}, "created_at": _INT, "upload_id": _STR}
    ),
    "OpenAIFineTuningJobCreate": _obj(
        {
            "model": {"type": "string", "description": "a Hugging Face model id"},
            "training_file": {
                "type": "string",
                "description": "a File id, gs://bucket/object, or hf://<dataset id>",
            },
            "validation_file": _NULL_STR,
            "hyperparameters": _HYPERPARAMETERS,
            "method": _METHOD,
            "suffix": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
            "metadata": {
                "type": "object",
                "maxProperties": 16,
                "additionalProperties": {"type": "string", "maxLength": 512},
            },
            "seed": {"type": "integer", "minimum": 0, "maximum": 4294967295},
            "compute": {"type": "object", "description": "ours: as POST /jobs compute"},
            "lora": _obj(
                {"rank": _INT, "alpha": _INT, "dropout": {"type": "number"}},
            ),
            "max_seq_length": _INT,
            "gradient_accumulation_steps": _INT,
            "deploy": {"type": "object", "description": "ours: as POST /jobs deploy"},
            "project_name": _STR,
            "job_name": _STR,
            "integrations": _INTEGRATIONS,
            "eval_samples": {
                "type": "integer",
                "minimum": 0,
                "maximum": 50,
                "description": "ours: held-out prompts answered by the base and the tuned "
                "model (default 5 with a validation_file, else 0)",
            },
        },
        ["model", "training_file"],
    ),
    "OpenAIFineTuningJob": _obj(
        {
            "id": _STR,
            "object": {"const": "fine_tuning.job"},
            "created_at": _INT,
            "finished_at": _NULL_INT,
            "model": _STR,
            "fine_tuned_model": _NULL_STR,
            "status": {
                "enum": [
                    "validating_files",
                    "queued",
                    "running",
                    "succeeded",
                    "failed",
                    "cancelled",
                ]
            },
            "training_file": _STR,
            "validation_file": _NULL_STR,
            "hyperparameters": _HYPERPARAMETERS,
            "method": _METHOD_USED,
            "trained_tokens": _NULL_INT,
            "estimated_finish": _NULL_INT,
            "error": {"type": ["object", "null"]},
            "result_files": {
                "type": "array",
                "items": _STR,
                "description": "once succeeded: one File (purpose fine-tune-results) whose "
                "content is OpenAI's results CSV",
            },
            "integrations": _INTEGRATIONS,
            "seed": _INT,
            "metadata": {"type": ["object", "null"]},
            "suffix": _NULL_STR,
            "training_project_id": _STR,
            "training_job_id": _STR,
            "baseten_status": _STR,
            "dashboard_url": _STR,
            "team": {
                "type": "string",
                "description": "whose job (only once API_KEYS has team:key entries)",
            },
        },
        ["id", "object", "created_at", "model", "status", "training_project_id"],
    ),
    "OpenAIFineTuningJobEvent": _obj(
        {
            "id": _STR,
            "object": {"const": "fine_tuning.job.event"},
            "created_at": _INT,
            "level": {"enum": ["info", "warn", "error"]},
            "message": _STR,
            "type": {"enum": ["message", "metrics"]},
            "data": {
                "type": "object",
                "description": "metrics events: step, total_steps, train_loss, "
                "train_mean_token_accuracy, valid_loss, valid_mean_token_accuracy (and "
                "full_valid_loss, full_valid_mean_token_accuracy on an evaluated step)",
            },
        }
    ),
    "OpenAIFineTuningJobCheckpoint": _obj(
        {
            "id": _STR,
            "object": {"const": "fine_tuning.job.checkpoint"},
            "created_at": _INT,
            "fine_tuned_model_checkpoint": _STR,
            "fine_tuning_job_id": _STR,
            "step_number": _INT,
            "metrics": _obj(
                {
                    "step": _INT,
                    "train_loss": {"type": ["number", "null"]},
                    "train_mean_token_accuracy": {"type": ["number", "null"]},
                    "valid_loss": {"type": ["number", "null"]},
                    "valid_mean_token_accuracy": {"type": ["number", "null"]},
                    "full_valid_loss": {"type": ["number", "null"]},
                    "full_valid_mean_token_accuracy": {"type": ["number", "null"]},
                }
            ),
        }
    ),
    "OpenAIModel": _obj(
        {
            "id": {"type": "string", "description": "ft:<model name>:<model id>:<deployment id>"},
            "object": {"const": "model"},
            "created": _INT,
            "owned_by": _STR,
        }
    ),
}
for _name in (
    "OpenAIFile",
    "OpenAIFineTuningJob",
    "OpenAIFineTuningJobEvent",
    "OpenAIFineTuningJobCheckpoint",
    "OpenAIModel",
):
    SCHEMAS[f"{_name}List"] = _list_of(_name)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _answer(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {
        str(s): _answer("OpenAIError", "error (OpenAI's shape)")
        for s in (*statuses, 401, 500, 502, 503)
    }


def _op(summary: str, operation: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "summary": summary,
        "operationId": operation,
        "tags": ["OpenAI-compatible"],
        "security": _SECURITY,
        "responses": responses,
        **extra,
    }


def _path(name: str) -> list[dict[str, Any]]:
    return [{"name": name, "in": "path", "required": True, "schema": _STR}]


_PAGING = [
    {"name": "after", "in": "query", "required": False, "schema": _STR},
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": 100},
    },
]


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _multipart(field: str) -> dict[str, Any]:
    properties = {field: {"type": "string", "format": "binary"}}
    if field == "file":
        properties["purpose"] = {"const": "fine-tune"}
    return {
        "required": True,
        "content": {"multipart/form-data": {"schema": _obj(properties, [field])}},
    }


def v1_paths() -> dict[str, Any]:
    job = _path("fine_tuning_job_id")
    return {
        "/v1/files": {
            "post": _op(
                "Upload a JSONL file (checked at once)",
                "v1CreateFile",
                {"200": _answer("OpenAIFile", "file"), **_errors(400, 413)},
                requestBody=_multipart("file"),
            ),
            "get": _op(
                "List files, newest first",
                "v1ListFiles",
                {"200": _answer("OpenAIFileList", "files"), **_errors(400)},
                parameters=_PAGING,
            ),
        },
        "/v1/files/{file_id}": {
            "get": _op(
                "Retrieve a file",
                "v1GetFile",
                {"200": _answer("OpenAIFile", "file"), **_errors(404)},
                parameters=_path("file_id"),
            ),
            "delete": _op(
                "Delete a file (409 while a job that has not ended needs it)",
                "v1DeleteFile",
                {"200": {"description": "deleted"}, **_errors(404, 409)},
                parameters=_path("file_id"),
            ),
        },
        "/v1/files/{file_id}/content": {
            "get": _op(
                "The file's bytes (409 while pending_upload or validating)",
                "v1FileContent",
                {
                    "200": {"description": "bytes", "content": {"application/octet-stream": {}}},
                    **_errors(404, 409),
                },
                parameters=_path("file_id"),
            ),
        },
        "/v1/uploads": {
            "post": _op(
                "Start an upload in parts (bytes at most MAX_FILE_BYTES, else 413)",
                "v1CreateUpload",
                {"200": _answer("OpenAIUpload", "upload"), **_errors(400, 413)},
                requestBody=_json_body(
                    _obj(
                        {
                            "filename": _STR,
                            "bytes": _INT,
                            "purpose": {"const": "fine-tune"},
                            "mime_type": _STR,
                        },
                        ["filename", "bytes", "purpose"],
                    )
                ),
            ),
        },
        "/v1/uploads/{upload_id}/parts": {
            "post": _op(
                "Add a part (at most MAX_UPLOAD_BYTES, 32 MiB)",
                "v1AddUploadPart",
                {"200": _answer("OpenAIUploadPart", "part"), **_errors(400, 404, 409, 413)},
                parameters=_path("upload_id"),
                requestBody=_multipart("data"),
            ),
        },
        "/v1/uploads/{upload_id}/complete": {
            "post": _op(
                "Join the parts in order (compose) and check the File (at most MAX_PARTS "
                "parts; the File may come back validating: files.wait_for_processing)",
                "v1CompleteUpload",
                {"200": _answer("OpenAIUpload", "upload"), **_errors(400, 404, 409)},
                parameters=_path("upload_id"),
                requestBody=_json_body(
                    _obj({"part_ids": {"type": "array", "items": _STR}, "md5": _STR}, ["part_ids"])
                ),
            ),
        },
        "/v1/uploads/{upload_id}/cancel": {
            "post": _op(
                "Cancel an upload",
                "v1CancelUpload",
                {"200": _answer("OpenAIUpload", "upload"), **_errors(404, 409)},
                parameters=_path("upload_id"),
            ),
        },
        "/v1/fine_tuning/jobs": {
            "post": _op(
                "Create a fine-tuning job",
                "v1CreateFineTuningJob",
                {"200": _answer("OpenAIFineTuningJob", "job"), **_errors(400, 429)},
                requestBody=_json_body(_ref("OpenAIFineTuningJobCreate")),
            ),
            "get": _op(
                "List fine-tuning jobs, newest first (metadata[key]=value filters)",
                "v1ListFineTuningJobs",
                {"200": _answer("OpenAIFineTuningJobList", "jobs"), **_errors(400, 404, 429)},
                parameters=[
                    *_PAGING,
                    {
                        "name": "metadata",
                        "in": "query",
                        "required": False,
                        "style": "deepObject",
                        "explode": True,
                        "schema": {"type": "object", "additionalProperties": _STR},
                    },
                ],
            ),
        },
        "/v1/fine_tuning/jobs/{fine_tuning_job_id}": {
            "get": _op(
                "Retrieve a fine-tuning job",
                "v1GetFineTuningJob",
                {"200": _answer("OpenAIFineTuningJob", "job"), **_errors(404, 429)},
                parameters=job,
            ),
        },
        "/v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel": {
            "post": _op(
                "Cancel (stop) a fine-tuning job",
                "v1CancelFineTuningJob",
                {"200": _answer("OpenAIFineTuningJob", "job"), **_errors(404, 429)},
                parameters=job,
            ),
        },
        "/v1/fine_tuning/jobs/{fine_tuning_job_id}/events": {
            "get": _op(
                "A job's events, newest first",
                "v1ListFineTuningEvents",
                {"200": _answer("OpenAIFineTuningJobEventList", "events"), **_errors(404, 429)},
                parameters=[*job, *_PAGING],
            ),
        },
        "/v1/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints": {
            "get": _op(
                "A job's checkpoints with step_number and metrics",
                "v1ListFineTuningCheckpoints",
                {
                    "200": _answer("OpenAIFineTuningJobCheckpointList", "checkpoints"),
                    **_errors(404, 429),
                },
                parameters=[*job, *_PAGING],
            ),
        },
        "/v1/models": {
            "get": _op(
                "The fine-tuned models this service deployed (serving)",
                "v1ListModels",
                {"200": _answer("OpenAIModelList", "models"), **_errors()},
            ),
        },
        "/v1/models/{model}": {
            "get": _op(
                "Retrieve a fine-tuned model",
                "v1GetModel",
                {"200": _answer("OpenAIModel", "model"), **_errors(404)},
                parameters=_path("model"),
            ),
        },
        "/v1/chat/completions": {
            "post": _op(
                "Chat with a fine-tuned model (forwarded to its Baseten deployment)",
                "v1ChatCompletions",
                {
                    "200": {
                        "description": "chat.completion; with stream: true, server-sent "
                        "chat.completion.chunk events",
                        "content": {
                            "application/json": {"schema": {"type": "object"}},
                            "text/event-stream": {"schema": _STR},
                        },
                    },
                    **_errors(400, 404, 429),
                },
                requestBody=_json_body(
                    _obj(
                        {
                            "model": _STR,
                            "messages": {"type": "array"},
                            "stream": {"type": "boolean"},
                        },
                        ["model", "messages"],
                    )
                ),
            ),
        },
    }
