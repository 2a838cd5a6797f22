"""``/v1/fine_tuning/jobs``: OpenAI's fine-tuning job API over the job service and the index.

Status mapping (Baseten → OpenAI): ``created``/``pending``/``queued`` → ``queued``,
``deploying``/``running`` (and any status we do not know yet) → ``running``,
``completed`` → ``succeeded``, ``failed``/``deploy_failed`` → ``failed``, ``stopped`` →
``cancelled``. The data check runs inside create, before the job exists, so a
caller never sees ``validating_files`` (a File in error is a 400 instead).
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

from finetune_api.compat.results import results_file_id
from finetune_api.core.errors import InvalidRequestError, NotFoundError, ServiceError
from finetune_api.core.schemas import (
    DEFAULT_DPO_BETA,
    TERMINAL_STATUSES,
    parse_job_name,
    parse_training_request,
    short_status,
)
from finetune_api.core.timestamps import parse_time
from finetune_api.jobs.index import BASE_LEARNING_RATE, JobIndex, openai_job_id, parse_job_id

STATUS = {
    "created": "queued",
    "pending": "queued",
    "queued": "queued",
    "deploying": "running",
    "running": "running",
    "completed": "succeeded",
    "failed": "failed",
    "deploy_failed": "failed",
    "stopped": "cancelled",
}
MAX_METADATA = 16
SUFFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
CREATE_FIELDS = {
    "model",
    "training_file",
    "validation_file",
    "hyperparameters",
    "method",
    "suffix",
    "metadata",
    "seed",
    "integrations",
    # Ours (send with the SDK's extra_body):
    "compute",
    "lora",
    "max_seq_length",
    "gradient_accumulation_steps",
    "deploy",
    "project_name",
    "job_name",
    "eval_samples",
}
# Our names in a validation error → the caller's names.
_PARAM = {
    "model_id": "model",
    "dataset_id": "training_file",
    "hyperparameters.num_epochs": "hyperparameters.n_epochs",
    "hyperparameters.learning_rate": "hyperparameters.learning_rate_multiplier",
    "hyperparameters.lora_rank": "lora.rank",
    "hyperparameters.lora_alpha": "lora.alpha",
    "hyperparameters.lora_dropout": "lora.dropout",
    "hyperparameters.seed": "seed",
    "hyperparameters.max_seq_length": "max_seq_length",
    "hyperparameters.gradient_accumulation_steps": "gradient_accumulation_steps",
    "hyperparameters.dpo_beta": "method.dpo.hyperparameters.beta",
    "hyperparameters.eval_samples": "eval_samples",
}
#: OpenAI's method types; ``reinforcement`` is refused with ``code: "unsupported_method"``.
METHOD_TYPES = ("supervised", "dpo")
_HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier")


class UnsupportedMethodError(InvalidRequestError):
    """A ``method.type`` this service does not train (OpenAI's ``reinforcement``)."""

    openai_code = "unsupported_method"


def openai_status(baseten_status: str) -> str:
    return STATUS.get(short_status(baseten_status), "running")


def _bad(param: str, reason: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"{param}: {reason}", details=[{"location": param, "reason": reason}]
    )


def _unix(value: Any) -> int | None:
    moment = parse_time(value)
    return int(moment.timestamp()) if moment is not None else None


def _auto(value: Any, param: str, kind: type) -> Any:
    """``"auto"`` or absent → None; else the number (bools refused)."""
    if value is None or value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(param, 'must be a number or "auto"')
    if kind is int and (not float(value).is_integer()):
        raise _bad(param, 'must be an integer or "auto"')
    return kind(value)


def _hyperparameters(value: Any, where: str, *, beta: bool = False) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(where, "must be an object")
    allowed = (*_HYPERPARAMETERS, "beta") if beta else _HYPERPARAMETERS
    unknown = set(value) - set(allowed)
    if unknown:
        raise _bad(where, f"only {', '.join(allowed)} are supported")
    ours: dict[str, Any] = {}
    if beta:
        dpo_beta = _auto(value.get("beta"), f"{where}.beta", float)
        if dpo_beta is not None:
            ours["dpo_beta"] = dpo_beta
    epochs = _auto(value.get("n_epochs"), f"{where}.n_epochs", int)
    if epochs is not None:
        ours["num_epochs"] = epochs
    batch = _auto(value.get("batch_size"), f"{where}.batch_size", int)
    if batch is not None:
        ours["batch_size"] = batch
    multiplier = _auto(
        value.get("learning_rate_multiplier"), f"{where}.learning_rate_multiplier", float
    )
    if multiplier is not None:
        if not math.isfinite(multiplier) or multiplier <= 0:
            raise _bad(f"{where}.learning_rate_multiplier", "must be greater than 0")
        ours["learning_rate"] = multiplier * BASE_LEARNING_RATE
    return ours


def _method(method: Any) -> tuple[str, dict[str, Any]]:
    """OpenAI's ``method`` object → (``supervised`` | ``dpo``, our hyperparameters)."""
    if method is None:
        return "supervised", {}
    if not isinstance(method, dict):
        raise _bad("method", "must be an object")
    kind = method.get("type")
    if kind == "reinforcement":
        reason = "reinforcement fine-tuning is not supported: use supervised or dpo"
        raise UnsupportedMethodError(
            f"method.type: {reason}", details=[{"location": "method.type", "reason": reason}]
        )
    if kind not in METHOD_TYPES:
        raise _bad("method.type", 'must be "supervised" or "dpo"')
    if set(method) - {"type", kind}:
        raise _bad("method", f"only type and {kind} are supported with type {kind}")
    section = method.get(kind) or {}
    if not isinstance(section, dict) or set(section) - {"hyperparameters"}:
        raise _bad(f"method.{kind}", "only hyperparameters is supported")
    where = f"method.{kind}.hyperparameters"
    return kind, _hyperparameters(section.get("hyperparameters"), where, beta=kind == "dpo")


def _metadata(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > MAX_METADATA:
        raise _bad("metadata", f"must be an object of at most {MAX_METADATA} string pairs")
    for key, item in value.items():
        if not isinstance(key, str) or not 1 <= len(key) <= 64:
            raise _bad("metadata", "keys must be strings of 1 to 64 characters")
        if not isinstance(item, str) or len(item) > 512:
            raise _bad("metadata", "values must be strings of at most 512 characters")
    return dict(value)


def training_request_body(body: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """OpenAI's create body → (our ``POST /jobs`` body, the labels kept in the index)."""
    if not isinstance(body, dict):
        raise InvalidRequestError("request body must be a JSON object")
    unknown = set(body) - CREATE_FIELDS
    if unknown:
        raise InvalidRequestError(
            f"{len(unknown)} unsupported field(s) in the request body",
            details=[{"location": "body", "reason": "unsupported field"} for _ in unknown],
        )
    integrations = body.get("integrations")
    if integrations is not None and not isinstance(integrations, list):
        raise _bad("integrations", "must be a list")
    hyperparameters = _hyperparameters(body.get("hyperparameters"), "hyperparameters")
    kind, from_method = _method(body.get("method"))
    if from_method and hyperparameters:
        raise _bad("hyperparameters", "give hyperparameters or method, not both")
    if kind == "dpo" and hyperparameters:
        raise _bad("hyperparameters", "with method dpo, give method.dpo.hyperparameters")
    hyperparameters = hyperparameters or from_method
    seed = body.get("seed")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise _bad("seed", "must be an integer")
        hyperparameters["seed"] = seed
    lora = body.get("lora")
    if lora is not None:
        if not isinstance(lora, dict) or set(lora) - {"rank", "alpha", "dropout"}:
            raise _bad("lora", "must be an object with rank, alpha and/or dropout")
        for key, value in lora.items():
            hyperparameters[f"lora_{key}"] = value
    for key in ("max_seq_length", "gradient_accumulation_steps", "eval_samples"):
        if body.get(key) is not None:
            hyperparameters[key] = body[key]
    suffix = body.get("suffix")
    if suffix is not None and (not isinstance(suffix, str) or not SUFFIX.match(suffix)):
        raise _bad("suffix", "must be 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit")
    model = body.get("model")
    training_file = body.get("training_file")
    if not isinstance(model, str) or not model:
        raise _bad("model", "required: a Hugging Face model id, e.g. Qwen/Qwen3-0.6B")
    if not isinstance(training_file, str) or not training_file:
        raise _bad("training_file", "required: a File id, gs://bucket/object or hf://dataset")
    ours: dict[str, Any] = {"model_id": model}
    if kind == "dpo":
        ours["method"] = "dpo"
    if training_file.startswith("hf://"):
        ours["dataset_id"] = training_file[len("hf://") :]
    else:
        ours["training_file"] = training_file
    if body.get("validation_file") is not None:
        ours["validation_file"] = body["validation_file"]
    if hyperparameters:
        ours["hyperparameters"] = hyperparameters
    for key in ("compute", "project_name", "job_name"):
        if body.get(key) is not None:
            ours[key] = body[key]
    if integrations:
        # OpenAI's shape is ours: checked by the shared schema (400 naming the entry).
        ours["integrations"] = integrations
    deploy = body.get("deploy")
    if deploy is not None:
        if isinstance(deploy, dict) and suffix and "model_name" not in deploy:
            deploy = {**deploy, "model_name": suffix}
        ours["deploy"] = deploy
    return ours, {"metadata": _metadata(body.get("metadata")), "suffix": suffix}


def _mapped(error: InvalidRequestError) -> InvalidRequestError:
    """The same 400 with OpenAI's parameter names in its details."""
    details = [
        {**item, "location": _PARAM.get(item["location"], item["location"])}
        for item in (error.details or [])
    ]
    fields = ", ".join(sorted({d["location"] for d in details})) or "body"
    return InvalidRequestError(f"invalid fine-tuning job: {fields}", details=details)


class FineTuningJobs:
    def __init__(
        self,
        settings: Any,
        jobs: Any,
        index: JobIndex,
        insights: Any,
        models: Any,
        *,
        clock: Any = time.time,
    ) -> None:
        self._settings = settings
        self._jobs = jobs
        self._index = index
        self._insights = insights
        self._models = models
        self._clock = clock

    # -- create ---------------------------------------------------------------

    def create(self, body: Any, idempotency_key: str | None = None) -> dict[str, Any]:
        ours, labels = training_request_body(body)
        try:
            request = parse_training_request(ours, self._settings)
        except InvalidRequestError as error:
            raise _mapped(error) from None
        job = self._jobs.submit(request, idempotency_key=idempotency_key, labels=labels)
        job_id = openai_job_id(job.training_project_id, job.training_job_id, job.created_at)
        if job_id is None:
            raise NotFoundError("the job was created but its ids cannot be named under /v1")
        return self.retrieve(job_id)

    # -- read -----------------------------------------------------------------

    def _ids(self, job_id: str) -> tuple[str, str]:
        parsed = parse_job_id(job_id)
        if parsed is None:
            raise NotFoundError("no such fine-tuning job")
        return parsed

    def _raw(self, project_id: str, job_id: str) -> dict[str, Any]:
        try:
            raw: dict[str, Any] = self._jobs.read_job(project_id, job_id)
        except NotFoundError:
            raise NotFoundError("no such fine-tuning job") from None
        return raw

    def retrieve(self, job_id: str) -> dict[str, Any]:
        project_id, baseten_id = self._ids(job_id)
        raw = self._raw(project_id, baseten_id)
        found = self._index.get(job_id)
        return self._object(job_id, raw, found, with_progress=True)

    def _object(
        self,
        job_id: str,
        raw: dict[str, Any],
        found: tuple[dict[str, Any], str] | None,
        *,
        with_progress: bool,
    ) -> dict[str, Any]:
        record = found[0] if found else {}
        baseten_status = str(raw.get("current_status") or "TRAINING_JOB_UNKNOWN")
        status = openai_status(baseten_status)
        terminal = baseten_status in TERMINAL_STATUSES
        finished_at = _unix(raw.get("updated_at")) if terminal else None
        trained_tokens = record.get("trained_tokens")
        if terminal and not record.get("final_status"):
            # Once per job: its last step line's token count (null while it runs, as at OpenAI).
            trained_tokens = self._trained_tokens(job_id, raw)
            if found:
                self._index.settle(record, found[1], baseten_status, finished_at, trained_tokens)
        estimated_finish = None
        if with_progress and status == "running":
            progress = self._insights.progress(raw)
            eta = (progress or {}).get("eta_seconds")
            if isinstance(eta, int | float):
                estimated_finish = int(self._clock() + eta)
        fine_tuned_model = None
        if baseten_status == "TRAINING_JOB_COMPLETED" and (
            with_progress or record.get("deploy_on_completion")
        ):
            project_id, baseten_id = self._ids(job_id)
            deployment = self._models.find_for_job(
                project_id,
                baseten_id,
                {**raw, "id": baseten_id, "name": raw.get("name") or record.get("job_name")},
                [record.get("deploy_model_name"), record.get("suffix")],
            )
            if deployment is not None:
                from finetune_api.compat.models import model_name

                fine_tuned_model = model_name(
                    deployment["model_name"], deployment["model_id"], str(deployment["id"])
                )
        error = None
        if status == "failed":
            error = {
                "code": "training_failed"
                if baseten_status != "TRAINING_JOB_DEPLOY_FAILED"
                else "deploy_failed",
                "message": str(raw.get("error_message") or "the training job failed"),
                "param": None,
            }
        hyperparameters = record.get("hyperparameters") or {
            "n_epochs": "auto",
            "batch_size": "auto",
            "learning_rate_multiplier": "auto",
        }
        project_id, baseten_id = self._ids(job_id)
        app = self._settings.baseten_remote_url.rstrip("/")
        return {
            "id": job_id,
            "object": "fine_tuning.job",
            "created_at": record.get("created_at") or _unix(raw.get("created_at")) or 0,
            "finished_at": finished_at,
            "model": record.get("model") or "unknown",
            "fine_tuned_model": fine_tuned_model,
            "organization_id": "baseten",
            "status": status,
            "training_file": record.get("training_file") or "unknown",
            "validation_file": record.get("validation_file"),
            "hyperparameters": hyperparameters,
            "method": _method_object(record, raw, hyperparameters),
            "trained_tokens": trained_tokens,
            "estimated_finish": estimated_finish,
            "error": error,
            "result_files": (
                [results_file_id(*self._ids(job_id))]
                if baseten_status == "TRAINING_JOB_COMPLETED"
                else []
            ),
            "seed": record.get("seed") if record.get("seed") is not None else 42,
            "metadata": record.get("metadata"),
            "suffix": record.get("suffix"),
            "integrations": record.get("integrations") or [],
            "training_project_id": project_id,
            "training_job_id": baseten_id,
            "baseten_status": baseten_status,
            "dashboard_url": f"{app}/training/{project_id}/logs/{baseten_id}",
            # Teams: whose job (only once teams exist: the index record carries it).
            **({"team": record["team"]} if record.get("team") else {}),
        }

    def _trained_tokens(self, job_id: str, raw: dict[str, Any]) -> int | None:
        """``tokens_seen`` of the newest step (or summary) line the template printed."""
        from finetune_api.insights.training_metrics import parse_line

        project_id, baseten_id = self._ids(job_id)
        try:
            _, lines = self._insights.newest_series(
                {**raw, "training_project_id": project_id, "id": baseten_id}, 100
            )
        except ServiceError:
            return None
        for line in reversed(lines):
            record = parse_line(line.message)
            seen = (record or {}).get("tokens_seen")
            if isinstance(seen, int) and not isinstance(seen, bool) and seen >= 0:
                return seen
        return None

    def list(self, after: str | None, limit: int, metadata: dict[str, str]) -> dict[str, Any]:
        """A page of the index, newest first; Baseten is read only for jobs still moving."""
        if after is not None and parse_job_id(after) is None:
            raise NotFoundError("no such fine-tuning job (after)")
        if len(metadata) > MAX_METADATA:
            return _page([], False)  # no job carries more pairs than that: nothing to read
        found = self._index.scan(after, limit, metadata)
        records, more = found.records, found.has_more

        def one(item: tuple[dict[str, Any], str]) -> dict[str, Any]:
            record = item[0]
            if record.get("final_status"):
                raw = {
                    "id": record["training_job_id"],
                    "training_project_id": record["training_project_id"],
                    "current_status": record["final_status"],
                    "updated_at": None,
                }
                job = self._object(record["id"], raw, item, with_progress=False)
                job["finished_at"] = record.get("finished_at")
                return job
            try:
                raw = self._jobs.read_job(record["training_project_id"], record["training_job_id"])
            except ServiceError as error:
                if isinstance(error, NotFoundError):
                    raw = {
                        "id": record["training_job_id"],
                        "current_status": "TRAINING_JOB_UNKNOWN",
                    }
                else:
                    raise
            return self._object(record["id"], raw, item, with_progress=False)

        if len(records) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=min(8, len(records))) as pool:
                data = list(pool.map(one, records))
        else:
            data = [one(item) for item in records]
        page = _page(data, more)
        if not data and more:
            # The page's listings ran out before a match: go on from what was examined.
            page["last_id"] = found.cursor
        return page

    def cancel(self, job_id: str) -> dict[str, Any]:
        project_id, baseten_id = self._ids(job_id)
        self._raw(project_id, baseten_id)
        self._jobs.stop(project_id, baseten_id)
        return self.retrieve(job_id)

    # -- events and checkpoints ---------------------------------------------------

    def _series(self, project_id: str, job_id: str) -> dict[str, Any] | None:
        from finetune_api.insights.job_insights import MetricsQuery

        answer = self._insights.metrics(project_id, job_id, MetricsQuery(None, None, 1000, False))
        training: dict[str, Any] | None = answer.get("training")
        return training

    def events(self, job_id: str, after: str | None, limit: int) -> dict[str, Any]:
        project_id, baseten_id = self._ids(job_id)
        raw = self._raw(project_id, baseten_id)
        status = openai_status(str(raw.get("current_status") or ""))
        created = _unix(raw.get("created_at")) or 0
        events = [
            _event(
                f"ftevent-{baseten_id}-created",
                created,
                "info",
                "Created fine-tuning job",
                "message",
                {},
            )
        ]
        training = None
        if status != "queued":
            training = self._series(project_id, baseten_id)
        if training:
            evaluations = training.get("evaluations") or []
            total = (training.get("summary") or {}).get("total_steps")
            first = True
            for step in training.get("steps") or []:
                at = _unix(step.get("timestamp")) or created
                if first:
                    events.append(
                        _event(
                            f"ftevent-{baseten_id}-started",
                            at,
                            "info",
                            "Fine-tuning job started",
                            "message",
                            {},
                        )
                    )
                    first = False
                data = {
                    "step": step["step"],
                    "total_steps": total,
                    **openai_metrics(step["step"], step, evaluations),
                }
                if data["full_valid_loss"] is None:
                    # As OpenAI's: the full-validation keys only on steps that ran one.
                    del data["full_valid_loss"], data["full_valid_mean_token_accuracy"]
                message = f"Step {step['step']}" + (f"/{total}" if total else "")
                if step.get("loss") is not None:
                    message += f": training loss={step['loss']:.4f}"
                events.append(
                    _event(
                        f"ftevent-{baseten_id}-step-{step['step']}",
                        at,
                        "info",
                        message,
                        "metrics",
                        data,
                    )
                )
        finished = _unix(raw.get("updated_at")) or created
        if status == "succeeded":
            events.append(
                _event(
                    f"ftevent-{baseten_id}-done",
                    finished,
                    "info",
                    "The job has successfully completed",
                    "message",
                    {},
                )
            )
        elif status == "failed":
            events.append(
                _event(
                    f"ftevent-{baseten_id}-failed",
                    finished,
                    "error",
                    "The job failed",
                    "message",
                    {"error": raw.get("error_message")},
                )
            )
        elif status == "cancelled":
            events.append(
                _event(
                    f"ftevent-{baseten_id}-cancelled",
                    finished,
                    "info",
                    "The job was cancelled",
                    "message",
                    {},
                )
            )
        events.reverse()  # newest first
        return _after(events, after, limit)

    def checkpoints(self, job_id: str, after: str | None, limit: int) -> dict[str, Any]:
        project_id, baseten_id = self._ids(job_id)
        self._raw(project_id, baseten_id)
        items = self._jobs.checkpoints(project_id, baseten_id)
        training = self._series(project_id, baseten_id) if items else None
        steps = (training or {}).get("steps") or []
        evaluations = (training or {}).get("evaluations") or []
        found = []
        for item in items:
            created = parse_time(item.created_at)
            step = _step_at(steps, created, item.checkpoint_id)
            at_step = _newest_at(steps, step)
            found.append(
                {
                    "id": f"ftckpt-{baseten_id}-{item.checkpoint_id}",
                    "object": "fine_tuning.job.checkpoint",
                    "created_at": int(created.timestamp()) if created else 0,
                    "fine_tuned_model_checkpoint": f"{job_id}:{item.checkpoint_id}",
                    "fine_tuning_job_id": job_id,
                    "step_number": step,
                    "metrics": {
                        "step": step,
                        **openai_metrics(step, at_step, evaluations),
                    },
                    "checkpoint_id": item.checkpoint_id,
                    "checkpoint_type": item.checkpoint_type,
                }
            )
        found.sort(key=lambda c: (c["created_at"], c["step_number"]), reverse=True)
        return _after(found, after, limit)


def _method_object(
    record: dict[str, Any], raw: dict[str, Any], hyperparameters: dict[str, Any]
) -> dict[str, Any]:
    """OpenAI's ``method`` with the values the job runs with (index records made
    before methods existed are supervised; without a record, the Baseten name says)."""
    kind = record.get("method") or parse_job_name(raw.get("name"))[2]
    if kind != "dpo":
        return {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}
    beta = record.get("dpo_beta")
    used = {**hyperparameters, "beta": beta if beta is not None else DEFAULT_DPO_BETA}
    return {"type": "dpo", "dpo": {"hyperparameters": used}}


def _event(
    event_id: str, created: int, level: str, message: str, kind: str, data: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": event_id,
        "object": "fine_tuning.job.event",
        "created_at": created,
        "level": level,
        "message": message,
        "type": kind,
        "data": data,
    }


def _newest_at(items: list[dict[str, Any]], step: int) -> dict[str, Any] | None:
    """The newest item (a step point, a tuned evaluation) at or before ``step``: the step's
    own when there is one (the series may be thinned)."""
    best = None
    for item in items:
        if item["step"] <= step:
            best = item
    return best


def openai_metrics(
    step: int, point: dict[str, Any] | None, evaluations: list[dict[str, Any]]
) -> dict[str, Any]:
    """OpenAI's metric keys at a step: training from its step line, validation from our
    evaluations, which run on the whole validation set (so ``full_valid_*`` is the
    evaluation made at exactly that step, ``valid_*`` the newest one at or before it)."""
    point = point or {}
    newest = _newest_at(evaluations, step)
    exact = newest if newest is not None and newest["step"] == step else None
    return {
        "train_loss": point.get("loss"),
        "train_mean_token_accuracy": point.get("mean_token_accuracy"),
        "valid_loss": (newest or {}).get("eval_loss"),
        "valid_mean_token_accuracy": (newest or {}).get("eval_mean_token_accuracy"),
        "full_valid_loss": (exact or {}).get("eval_loss"),
        "full_valid_mean_token_accuracy": (exact or {}).get("eval_mean_token_accuracy"),
    }


def _step_at(steps: list[dict[str, Any]], created: Any, checkpoint_id: str) -> int:
    """The newest step logged at or before the checkpoint; else its name's trailing number."""
    if created is not None:
        best = None
        for item in steps:
            at = parse_time(item.get("timestamp"))
            if at is not None and at <= created:
                best = item["step"]
        if best is not None:
            return int(best)
    match = re.search(r"(\d+)$", checkpoint_id)
    return int(match.group(1)) if match else 0


def _page(data: list[dict[str, Any]], more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "has_more": more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


def _after(items: list[dict[str, Any]], after: str | None, limit: int) -> dict[str, Any]:
    start = 0
    if after is not None:
        positions = [i for i, item in enumerate(items) if item["id"] == after]
        if not positions:
            raise NotFoundError("no such item (after)")
        start = positions[0] + 1
    page = items[start : start + limit]
    return _page(page, start + limit < len(items))
