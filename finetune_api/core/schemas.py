"""Request and response schemas (pydantic), and the Baseten → Job conversion.

Every rule of ../shared/CONTRACT.md's ``POST /jobs`` table lives here, so the
HTTP route, the Pub/Sub trigger and the Python API validate identically.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from finetune_api.core.errors import InvalidRequestError
from finetune_api.core.logs import scrub_text

_ID_PART = r"(?![.-])(?!.*(?:\.\.|--))[A-Za-z0-9._-]{1,96}(?<![.-])"
HF_REPO_ID = re.compile(rf"{_ID_PART}(?:/{_ID_PART})?")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")

# The suffix the idempotency key adds to the Baseten job name; a user's own
# job_name may not end in it, so names always round-trip.
IDEMPOTENCY_SUFFIX = re.compile(r"^(?P<name>.*)-ik-(?P<digest>[0-9a-f]{20})$")
IDEMPOTENCY_SUFFIX_LENGTH = len("-ik-") + 20
# The marker a DPO job's Baseten name carries before that suffix
# (``<job_name>--dpo[-ik-<digest>]``): every Job answer reads its ``method`` from the
# name Baseten already returns, so no read costs an extra call. A user's own job_name
# may not end in it either; a name without it (every job made before) is supervised.
DPO_MARKER = "--dpo"
METHODS = ("supervised", "dpo")
Method = Literal["supervised", "dpo"]
#: What the template trains with when the request leaves them out (CONTRACT "Method").
DEFAULT_DPO_BETA = 0.1
DEFAULT_TRAIN_ON_INPUTS = False


def _repo_id(value: str) -> str:
    if not HF_REPO_ID.fullmatch(value):
        raise ValueError(
            "must be a Hugging Face repo id 'name' or 'owner/name': each part 1-96 of "
            "A-Z a-z 0-9 . _ -, not starting or ending with . or -, no .. or --"
        )
    return value


def _name(value: str) -> str:
    if not NAME.fullmatch(value):
        raise ValueError("must be 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit")
    return value


def _unreserved_job_name(value: str | None) -> str | None:
    """A user's job name may not end in what the service adds to the Baseten name."""
    if value is not None and IDEMPOTENCY_SUFFIX.match(value):
        raise ValueError("may not end in -ik-<20 hex digits> (reserved for idempotency keys)")
    if value is not None and value.endswith(DPO_MARKER):
        raise ValueError(f"may not end in {DPO_MARKER} (reserved: it marks a DPO job)")
    return value


RepoId = Annotated[
    str,
    AfterValidator(_repo_id),
    WithJsonSchema({"type": "string", "pattern": "^[A-Za-z0-9._-]{1,96}(/[A-Za-z0-9._-]{1,96})?$"}),
]
Name = Annotated[
    str, AfterValidator(_name), WithJsonSchema({"type": "string", "pattern": NAME.pattern})
]

_STRICT = ConfigDict(extra="forbid", strict=True)

# A File id or gs://bucket/object; checked against the store by the file service.
DataRef = Annotated[str, Field(min_length=1, max_length=1100)]
MAX_SEED = 2**32 - 1
#: ``hyperparameters.eval_samples``: at most this many held-out prompts answered twice.
MAX_EVAL_SAMPLES = 50
DEFAULT_EVAL_SAMPLES = 5


class Hyperparameters(BaseModel):
    """LoRA supervised fine-tuning knobs; every one reaches train.py."""

    model_config = _STRICT

    learning_rate: float = Field(default=2e-4, gt=0, le=1)
    num_epochs: int = Field(default=1, ge=1, le=100)
    batch_size: int = Field(default=4, ge=1, le=1024)
    gradient_accumulation_steps: int = Field(default=4, ge=1, le=1024)
    max_seq_length: int = Field(default=2048, ge=16, le=131072)
    lora_rank: int = Field(default=16, ge=1, le=512)
    lora_alpha: int = Field(default=32, ge=1, le=4096)
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    # NumPy's seeding (transformers.set_seed) takes 0 to 2**32 - 1 and nothing more.
    seed: int = Field(default=42, ge=0, le=MAX_SEED)
    validation_split: float = Field(
        default=0.0,
        ge=0,
        lt=0.5,
        description="fraction held out and evaluated at each epoch's end (0: no evaluation)",
    )
    train_on_inputs: bool | None = Field(
        default=None,
        description="supervised only: true trains on every token; default false: only the "
        "assistant's weight-1 turns (chat) or the completion (prompt_completion) carry loss",
    )
    dpo_beta: float | None = Field(
        default=None,
        gt=0,
        le=10,
        description="dpo only: how far the tuned model may move from the base model "
        "(TRL's beta); default 0.1",
    )
    eval_samples: int | None = Field(
        default=None,
        ge=0,
        le=MAX_EVAL_SAMPLES,
        description="held-out prompts answered by the base and the tuned model after training "
        "(default 5 with a validation set, else 0; more than 0 needs a validation set)",
    )


def _tag(value: str) -> str:
    if not 1 <= len(value) <= 64:
        raise ValueError("each tag must be 1 to 64 characters")
    return value


class WandbSettings(BaseModel):
    """OpenAI's ``wandb`` integration: where the job reports its steps and evaluations."""

    model_config = _STRICT

    project: Annotated[str, Field(min_length=1, max_length=128)] = Field(
        description="the W&B project the run is logged under"
    )
    entity: Annotated[str, Field(min_length=1, max_length=128)] | None = Field(
        default=None, description="W&B team or user; default: the key's own"
    )
    name: Annotated[str, Field(min_length=1, max_length=128)] | None = Field(
        default=None, description="the run's name; default: the job's name"
    )
    tags: list[Annotated[str, AfterValidator(_tag)]] | None = Field(
        default=None, max_length=50, description="at most 50 tags of 1-64 characters"
    )


class Integration(BaseModel):
    """One entry of ``integrations`` (OpenAI's shape); ``wandb`` is the one type known."""

    model_config = _STRICT

    type: Literal["wandb"]
    wandb: WandbSettings


def _one_wandb(value: list[Integration] | None) -> list[Integration] | None:
    if value is not None and sum(item.type == "wandb" for item in value) > 1:
        raise ValueError("at most one wandb integration")
    return value


class Compute(BaseModel):
    """Overrides of the template's compute; limits come from the settings."""

    model_config = _STRICT

    accelerator: str | None = None
    gpu_count: int | None = Field(default=None, ge=1)
    node_count: int | None = Field(default=None, ge=1)

    @field_validator("accelerator")
    @classmethod
    def _allowed(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _check_accelerator(value, info)

    @field_validator("gpu_count")
    @classmethod
    def _gpus(cls, value: int | None, info: ValidationInfo) -> int | None:
        return _check_gpus(value, info)

    @field_validator("node_count")
    @classmethod
    def _nodes(cls, value: int | None, info: ValidationInfo) -> int | None:
        limit = _limit(info, "max_nodes", None)
        if value is not None and limit is not None and value > limit:
            raise ValueError(f"must be at most {limit} (MAX_NODES)")
        return value


def _check_accelerator(value: str | None, info: ValidationInfo) -> str | None:
    allowed = _limit(info, "allowed_accelerators", None)
    if value is not None and allowed is not None and value not in allowed:
        raise ValueError(f"must be one of {', '.join(allowed)}")
    return value


def _check_gpus(value: int | None, info: ValidationInfo) -> int | None:
    limit = _limit(info, "max_gpus_per_node", None)
    if value is not None and limit is not None and value > limit:
        raise ValueError(f"must be at most {limit} (MAX_GPUS_PER_NODE)")
    return value


def _limit(info: ValidationInfo, name: str, default: Any) -> Any:
    settings = (info.context or {}).get("settings")
    return getattr(settings, name, default) if settings is not None else default


class DeployCompute(BaseModel):
    """What a deployment runs on: one node; the spend guards apply."""

    model_config = _STRICT

    accelerator: str | None = Field(default=None, description="default: the first allowed one")
    gpu_count: int = Field(default=1, ge=1)

    @field_validator("accelerator")
    @classmethod
    def _allowed(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _check_accelerator(value, info)

    @field_validator("gpu_count")
    @classmethod
    def _gpus(cls, value: int, info: ValidationInfo) -> int:
        checked = _check_gpus(value, info)
        assert checked is not None
        return checked


class DeployOnCompletion(BaseModel):
    """``deploy`` of a submit request: serve the final checkpoint when the job completes."""

    model_config = _STRICT

    on_completion: bool
    model_name: Name | None = Field(default=None, description="default: from the job name")
    compute: DeployCompute = Field(default_factory=DeployCompute)


class DeploymentRequest(BaseModel):
    """The optional body of ``POST /jobs/{project_id}/{job_id}/deployments``."""

    model_config = _STRICT

    checkpoint_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="default: the job's newest LoRA checkpoint (its final one)",
    )
    model_name: Name | None = Field(
        default=None, description="Baseten model name; default: derived from the job name"
    )
    compute: DeployCompute = Field(default_factory=DeployCompute)
    dry_run: bool = Field(default=False, description="validate with Baseten, create nothing")


class Deployment(BaseModel):
    """What every deployment route answers (CONTRACT "Deployment")."""

    model_id: str | None
    deployment_id: str | None
    model_name: str | None = None
    status: str
    training_project_id: str | None = None
    training_job_id: str | None = None
    checkpoint_id: str | None = None
    predict_url: str | None = None
    dashboard_url: str | None = None
    created_at: str | None = None
    idempotent_replay: bool = False


class RetryPolicy(BaseModel):
    """``retry`` of a submit request: resume the job by itself when it fails."""

    model_config = _STRICT

    max_attempts: int = Field(
        ge=1,
        le=5,
        description="how many times the poll may start the job again after a failure "
        "(from its newest checkpoint, or from the start when it has none)",
    )


class TrainingRequest(BaseModel):
    """The body of ``POST /jobs`` and of a Pub/Sub message."""

    model_config = _STRICT

    dataset_id: RepoId | None = Field(
        default=None,
        description="Hugging Face dataset repo id: name or owner/name (or give training_file)",
    )
    model_id: RepoId = Field(description="Hugging Face model repo id: name or owner/name")
    project_name: Name | None = Field(
        default=None, description="Baseten training project; default ft-<model_id with / as ->"
    )
    job_name: Name | None = Field(
        default=None, description="Baseten job name; default <model name>-<UTC timestamp>"
    )
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    compute: Compute = Field(default_factory=Compute)
    deploy: DeployOnCompletion | None = Field(
        default=None, description="deploy the final checkpoint when the job completes"
    )
    training_file: DataRef | None = Field(
        default=None, description="a File id (file-…) or gs://bucket/object: JSONL to train on"
    )
    validation_file: DataRef | None = Field(
        default=None, description="same forms; eval_loss is computed on it (no validation_split)"
    )
    dry_run: bool = Field(
        default=False, description="check everything (the data included), create nothing"
    )
    method: Method = Field(
        default="supervised",
        description="supervised (default): learn the examples; dpo: preference tuning on a "
        "preference file (input, preferred_output, non_preferred_output)",
    )
    integrations: Annotated[list[Integration] | None, AfterValidator(_one_wandb)] = Field(
        default=None,
        max_length=8,
        description='OpenAI\'s shape: [{"type": "wandb", "wandb": {"project", "entity"?, '
        '"name"?, "tags"?}}]: the job reports every step and evaluation to W&B, with '
        "WANDB_API_KEY from the Baseten secret WANDB_API_KEY_SECRET_NAME",
    )

    @model_validator(mode="after")
    def _one_source(self) -> TrainingRequest:
        if self.validation_file is not None and self.hyperparameters.validation_split:
            raise ValueError("give validation_file or hyperparameters.validation_split, not both")
        return self

    @property
    def has_validation(self) -> bool:
        return self.validation_file is not None or self.hyperparameters.validation_split > 0

    def resolved_eval_samples(self) -> int:
        """``eval_samples`` as the job runs it: 5 by default with a validation set, else 0."""
        samples = self.hyperparameters.eval_samples
        if samples is not None:
            return samples
        return DEFAULT_EVAL_SAMPLES if self.has_validation else 0

    retry: RetryPolicy | None = Field(
        default=None, description="resume the job by itself when it fails (not when stopped)"
    )

    @field_validator("job_name")
    @classmethod
    def _not_reserved(cls, value: str | None) -> str | None:
        return _unreserved_job_name(value)


class ResumeRequest(BaseModel):
    """The optional body of ``POST /jobs/{project_id}/{job_id}/resume``.

    Everything else (data, model, the other hyperparameters, compute, deploy,
    retry) is the resumed job's own request, read back from the job itself.
    """

    model_config = _STRICT

    checkpoint_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="default: the job's newest checkpoint",
    )
    hyperparameters: Hyperparameters | None = Field(
        default=None,
        description="only the fields given replace the job's own (e.g. num_epochs)",
    )
    compute: Compute | None = Field(
        default=None, description="only the fields given replace the job's own"
    )
    job_name: Name | None = Field(default=None, description="default: the resumed job's name")

    @field_validator("job_name")
    @classmethod
    def _not_reserved(cls, value: str | None) -> str | None:
        return _unreserved_job_name(value)


class ResumedFrom(BaseModel):
    """Which job (and checkpoint) a job continues; checkpoint_id null: started over."""

    training_project_id: str
    training_job_id: str
    checkpoint_id: str | None = None


class Checkpoint(BaseModel):
    checkpoint_id: str
    checkpoint_type: str | None = None
    base_model: str | None = None
    size_bytes: int | None = None
    created_at: str | None = None
    lora_adapter_config: dict[str, Any] | None = None


class Job(BaseModel):
    """What every job route answers (CONTRACT "Job object")."""

    training_project_id: str
    training_project_name: str | None = None
    training_job_id: str
    job_name: str | None = None
    status: str
    baseten_status: str
    error_message: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    dashboard_url: str
    idempotent_replay: bool = False
    method: Method = Field(
        default="supervised",
        description="what the job trains with: supervised or dpo (jobs made before: supervised)",
    )


class ResumedJob(Job):
    """The Job a resume (or the poll's retry) started: it names what it continues."""

    resumed_from: ResumedFrom = Field(
        description="the job (and checkpoint; null when started over) this one continues"
    )


class Progress(BaseModel):
    """How far a running or finished job got, from the newest lines of its log."""

    step: int
    total_steps: int | None = None
    percent: float | None = None
    epoch: float | None = None
    latest_loss: float | None = None
    eta_seconds: float | None = None


class JobWithCheckpoints(Job):
    checkpoints: list[Checkpoint] = Field(default_factory=list)
    progress: Progress | None = Field(
        default=None, description="null before the job runs or when its script prints no steps"
    )


class JobList(BaseModel):
    data: list[Job]


class CheckpointList(BaseModel):
    data: list[Checkpoint]


class PollRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: str | None = Field(default=None, description="RFC 3339 start of the window")


class PollReport(BaseModel):
    since: str
    until: str
    jobs_checked: int
    events: int
    webhooks_delivered: int
    webhooks_failed: int
    duration_ms: int
    # Jobs whose checkpoints could not be read (each logged at ERROR); the others
    # are still reported, and the next overlapping window retries these.
    jobs_failed: int = 0
    # Deployments this service created, watched in this poll; and serving work
    # that failed (a deploy on completion, or reading the deployments).
    deployments_checked: int = 0
    deployments_failed: int = 0
    # Added by the poll state (all optional for older readers):
    events_already_delivered: int = Field(
        default=0, description="events found again but not re-sent: delivered by an earlier poll"
    )
    full_sweep: bool = Field(default=False, description="this poll read every job")
    sweep_reason: str | None = Field(default=None, description="why it read every job")
    state_saved: bool = Field(
        default=False, description="the poll state was saved for the next poll"
    )
    state_problem: str | None = Field(
        default=None, description="why the state was not saved (the next poll reads every job)"
    )


class ErrorDetail(BaseModel):
    location: str
    reason: str


class ErrorInfo(BaseModel):
    type: str
    message: str
    details: list[ErrorDetail] | None = None


class ErrorBody(BaseModel):
    error: ErrorInfo


def validation_details(error: ValidationError, prefix: str = "") -> list[dict[str, Any]]:
    """One ``{"location", "reason"}`` entry per offending field; input values are never echoed."""
    details = []
    for item in error.errors(include_input=False, include_url=False):
        location = ".".join(str(part) for part in item["loc"])
        if prefix:
            location = f"{prefix}.{location}" if location else prefix
        reason = item["msg"].removeprefix("Value error, ")
        if item["type"] == "string_pattern_mismatch":
            reason = "has characters or a shape that is not allowed"
        details.append({"location": location or "body", "reason": reason})
    return details


_Body = TypeVar("_Body", bound=BaseModel)


def _parse_optional_body(model: type[_Body], data: Any, settings: Any, what: str) -> _Body:
    """Validate an optional request body (``None`` means all defaults) against ``model``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidRequestError("request body must be a JSON object")
    try:
        return model.model_validate(data, context={"settings": settings})
    except ValidationError as error:
        details = validation_details(error)
        fields = ", ".join(sorted({d["location"] for d in details}))
        raise InvalidRequestError(f"invalid {what} request: {fields}", details=details) from None


def parse_deployment_request(data: Any, settings: Any) -> DeploymentRequest:
    """Validate the (optional) body of a deploy request; ``None`` means all defaults."""
    return _parse_optional_body(DeploymentRequest, data, settings, "deployment")


def parse_resume_request(data: Any, settings: Any) -> ResumeRequest:
    """Validate the (optional) body of a resume request; ``None`` means all defaults."""
    return _parse_optional_body(ResumeRequest, data, settings, "resume")


def parse_training_request(data: Any, settings: Any) -> TrainingRequest:
    """Validate ``data`` (already decoded JSON) against every CONTRACT rule."""
    if not isinstance(data, dict):
        raise InvalidRequestError("request body must be a JSON object")
    # Checked beside the schema so it is reported with every other missing field.
    sources = [data.get(name) is not None for name in ("dataset_id", "training_file")]
    details = (
        []
        if sum(sources) == 1
        else [
            {
                "location": "training_file" if all(sources) else "dataset_id",
                "reason": "give exactly one of dataset_id and training_file",
            }
        ]
    )
    try:
        request = TrainingRequest.model_validate(data, context={"settings": settings})
    except ValidationError as error:
        details = validation_details(error) + details
    else:
        details = method_details(request) + details
        if request.hyperparameters.eval_samples and not request.has_validation:
            details.append(
                {
                    "location": "hyperparameters.eval_samples",
                    "reason": "needs a validation set (validation_file or "
                    "hyperparameters.validation_split); 0 or leave it out",
                }
            )
    if details:
        fields = ", ".join(sorted({d["location"] for d in details}))
        raise InvalidRequestError(f"invalid training request: {fields}", details=details) from None
    return request


def method_details(request: TrainingRequest) -> list[dict[str, Any]]:
    """Hyperparameters given for the other method: one detail each (CONTRACT "Method")."""
    hp = request.hyperparameters
    details = []
    if hp.dpo_beta is not None and request.method != "dpo":
        details.append({"location": "hyperparameters.dpo_beta", "reason": 'only with method "dpo"'})
    if hp.train_on_inputs is not None and request.method != "supervised":
        details.append(
            {
                "location": "hyperparameters.train_on_inputs",
                "reason": 'only with method "supervised" (DPO trains on the outputs)',
            }
        )
    return details


def method_hyperparameters(request: TrainingRequest) -> dict[str, Any]:
    """The request's hyperparameters as the job gets them, every default filled in.

    ``train_on_inputs``: false by default for supervised, null for dpo; ``dpo_beta``:
    0.1 by default for dpo, null for supervised; ``eval_samples``: resolved (5 with a
    validation set, else 0).
    """
    values = request.hyperparameters.model_dump()
    values["eval_samples"] = request.resolved_eval_samples()
    if request.method == "dpo":
        values["train_on_inputs"] = None
        if values["dpo_beta"] is None:
            values["dpo_beta"] = DEFAULT_DPO_BETA
    else:
        values["dpo_beta"] = None
        if values["train_on_inputs"] is None:
            values["train_on_inputs"] = DEFAULT_TRAIN_ON_INPUTS
    return values


# Baseten statuses after which a job never changes again; any other (including
# one we do not know yet, e.g. a preemption) is treated as still moving.
TERMINAL_STATUSES = frozenset(
    {
        "TRAINING_JOB_COMPLETED",
        "TRAINING_JOB_FAILED",
        "TRAINING_JOB_STOPPED",
        "TRAINING_JOB_DEPLOY_FAILED",
    }
)

NOT_STARTED_STATUSES = frozenset(
    {
        "TRAINING_JOB_PENDING",
        "TRAINING_JOB_CREATED",
        "TRAINING_JOB_QUEUED",
        "TRAINING_JOB_DEPLOYING",
    }
)
#: Every known status that is not final: what a status search for live jobs asks for.
ACTIVE_STATUSES = (*sorted(NOT_STARTED_STATUSES), "TRAINING_JOB_RUNNING")


def short_status(baseten_status: str) -> str:
    """``TRAINING_JOB_RUNNING`` → ``running``; unknown statuses pass through the same way."""
    return baseten_status.removeprefix("TRAINING_JOB_").lower()


def parse_job_name(name: str | None) -> tuple[str | None, str | None, Method]:
    """Baseten job name → (the user's job name, idempotency key digest or None, method)."""
    if not name:
        return name, None, "supervised"
    digest = None
    match = IDEMPOTENCY_SUFFIX.match(name)
    if match:
        name, digest = match["name"], match["digest"]
    method: Method = "supervised"
    if name.endswith(DPO_MARKER):
        name, method = name[: -len(DPO_MARKER)], "dpo"
    return name or None, digest, method


def split_job_name(name: str | None) -> tuple[str | None, str | None]:
    """Baseten job name → (the user's job name, idempotency key digest or None)."""
    user_name, digest, _ = parse_job_name(name)
    return user_name, digest


def baseten_job_name(job_name: str, method: str, digest: str | None = None) -> str:
    """What :func:`parse_job_name` reads back: ``<job_name>[--dpo][-ik-<digest>]``."""
    name = f"{job_name}{DPO_MARKER}" if method == "dpo" else job_name
    return f"{name}-ik-{digest}" if digest is not None else name


def _scrubbed(text: Any) -> str | None:
    """Baseten's ``error_message`` as it may leave the service: scrubbed like a log line.

    A job's error text is the job's own output (a traceback, an exception quoting
    an environment variable), so it may hold the Baseten key or an ``hf_…`` token.
    Every Job (``GET``, list, events, their log lines) is made here, so none
    carries it unscrubbed.
    """
    if text is None:
        return None
    return scrub_text(str(text))


def job_from_baseten(
    job: dict[str, Any], app_url: str, *, project: dict[str, Any] | None = None
) -> Job:
    """Convert Baseten's ``training_job`` dict into our Job."""
    project = project or job.get("training_project") or {}
    project_id = str(job.get("training_project_id") or project.get("id") or "")
    job_id = str(job["id"])
    baseten_status = str(job.get("current_status") or "TRAINING_JOB_UNKNOWN")
    name, _, method = parse_job_name(job.get("name"))
    return Job(
        training_project_id=project_id,
        training_project_name=project.get("name"),
        training_job_id=job_id,
        job_name=name,
        status=short_status(baseten_status),
        baseten_status=baseten_status,
        error_message=_scrubbed(job.get("error_message")),
        created_at=job.get("created_at"),
        updated_at=job.get("updated_at"),
        dashboard_url=f"{app_url.rstrip('/')}/training/{project_id}/logs/{job_id}",
        method=method,
    )


def checkpoint_from_baseten(checkpoint: dict[str, Any]) -> Checkpoint:
    return Checkpoint(
        checkpoint_id=str(checkpoint.get("checkpoint_id") or checkpoint.get("id")),
        checkpoint_type=checkpoint.get("checkpoint_type"),
        base_model=checkpoint.get("base_model"),
        size_bytes=checkpoint.get("size_bytes"),
        created_at=checkpoint.get("created_at"),
        lora_adapter_config=checkpoint.get("lora_adapter_config"),
    )
