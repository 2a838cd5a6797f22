"""Start Baseten training jobs from Cloud Run functions or any Python program.

from finetune_api import handle_training_request
job = handle_training_request("HuggingFaceH4/Multilingual-Thinking", "openai/gpt-oss-20b")
job["training_job_id"], job["status"], job["dashboard_url"]
"""

from finetune_api.api import (
    checkpoint_files,
    deactivate_deployment,
    deploy_checkpoint,
    get_deployment,
    handle_training_request,
    job_evaluation,
    job_logs,
    job_metrics,
    job_metrics_svg,
    resume_job,
)
from finetune_api.core.errors import (
    ConfigurationError,
    ConflictError,
    InternalError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    SecretUnavailableError,
    ServiceError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
    UpstreamError,
    UpstreamRejectedError,
    UpstreamUnavailableError,
)

__all__ = [
    "ConfigurationError",
    "ConflictError",
    "InternalError",
    "InvalidRequestError",
    "MethodNotAllowedError",
    "NotFoundError",
    "PayloadTooLargeError",
    "SecretUnavailableError",
    "ServiceError",
    "UnauthorizedError",
    "UnsupportedMediaTypeError",
    "UpstreamError",
    "UpstreamRejectedError",
    "UpstreamUnavailableError",
    "checkpoint_files",
    "deactivate_deployment",
    "deploy_checkpoint",
    "get_deployment",
    "handle_training_request",
    "job_evaluation",
    "job_logs",
    "job_metrics",
    "job_metrics_svg",
    "resume_job",
]
