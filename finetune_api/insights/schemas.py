"""Response schemas of the logs and metrics routes (documentation: they feed /openapi.json).

The answers themselves are built as plain dicts by :mod:`.job_insights` (a
100,000-step series is not worth a pydantic object per point); these models
describe exactly those dicts, and a test holds the two together.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Exact(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LogLine(_Exact):
    timestamp: str = Field(description="RFC 3339, UTC, nanoseconds kept")
    message: str = Field(description="the line as printed; known secrets replaced by [REDACTED]")
    replica: str | None = Field(description="the replica (node) that printed it")
    level: str | None = Field(description="DEBUG, INFO, WARNING or ERROR when Baseten detected one")


class LogPage(_Exact):
    data: list[LogLine]
    next_cursor: str | None = Field(
        description="pass as ?cursor= for the next page; also set when nothing more is there "
        "yet but a running job may still print (oldest-first without until)"
    )
    has_more: bool = Field(description="more lines exist now beyond this page")


class _Rewards(_Exact):
    """TRL's DPO metrics: present only on a DPO job's answers (exact TRL key names)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    rewards_chosen: float | None = Field(
        default=None, alias="rewards/chosen", description="DPO only: mean reward of the chosen"
    )
    rewards_rejected: float | None = Field(
        default=None, alias="rewards/rejected", description="DPO only: of the rejected"
    )
    rewards_margins: float | None = Field(
        default=None, alias="rewards/margins", description="DPO only: chosen minus rejected"
    )
    rewards_accuracies: float | None = Field(
        default=None,
        alias="rewards/accuracies",
        description="DPO only: share of pairs whose chosen reward is higher",
    )


class StepPoint(_Rewards):
    step: int
    timestamp: str
    epoch: float | None
    loss: float | None
    learning_rate: float | None
    grad_norm: float | None
    tokens_per_second: float | None
    mean_token_accuracy: float | None = Field(
        description="share of the loss-carrying tokens predicted right (0..1)"
    )


class EvalPoint(_Exact):
    step: int
    timestamp: str
    epoch: float | None
    eval_loss: float | None
    eval_mean_token_accuracy: float | None


class TrainingSummary(_Rewards):
    step: int
    total_steps: int | None
    percent: float | None
    epoch: float | None
    latest_loss: float | None
    best_eval_loss: float | None
    eta_seconds: float | None = Field(description="0 once completed; null when unknown or ended")
    tokens_per_second: float | None = Field(description="mean over the last 50 steps")


class SeriesCounts(_Exact):
    steps: int = Field(description="step lines before downsampling")
    evaluations: int
    skipped_lines: int = Field(
        description="FT_METRICS lines that could not be read (bad JSON, out-of-range step): skipped"
    )


class TrainingMetrics(_Exact):
    steps: list[StepPoint] = Field(description="at most `points`, min/max per bucket kept")
    evaluations: list[EvalPoint]
    points: SeriesCounts
    summary: TrainingSummary | None


class SystemPoint(_Exact):
    timestamp: str
    value: float


class NodeMetrics(_Exact):
    node_id: str
    gpu_utilization: dict[str, list[SystemPoint]] = Field(description="GPU rank -> 0..1 series")
    gpu_memory_usage_bytes: dict[str, list[SystemPoint]]
    cpu_usage: list[SystemPoint] = Field(description="cores")
    cpu_memory_usage_bytes: list[SystemPoint]
    ephemeral_storage_usage_bytes: list[SystemPoint]


class SystemMetrics(_Exact):
    nodes: list[NodeMetrics]


class MetricsAnswer(_Exact):
    training_project_id: str
    training_job_id: str
    job_name: str | None
    status: str
    training: TrainingMetrics | None = Field(
        description="from the job's FT_METRICS lines; null when its script printed none"
    )
    system: SystemMetrics = Field(description="Baseten's system metrics, per node")


class BaseEvaluation(_Exact):
    step: int | None = Field(description="0, or the step a resumed job started from")
    eval_loss: float | None = Field(
        description="mean loss over the validation set's trained tokens"
    )
    eval_mean_token_accuracy: float | None = Field(
        description="share of those tokens the model predicted exactly (0..1)"
    )


class TunedEvaluation(_Exact):
    step: int | None = Field(description="the step of the tuned model's newest evaluation")
    epoch: float | None
    eval_loss: float | None
    eval_mean_token_accuracy: float | None


class EvaluationChange(_Exact):
    eval_loss: float | None = Field(description="tuned - base: below 0 is better")
    eval_mean_token_accuracy: float | None = Field(description="tuned - base: above 0 is better")


class EvaluationSample(_Exact):
    index: int
    prompt: str | None = Field(description="the held-out example up to its last trained turn")
    reference: str | None = Field(description="the answer the validation data gives")
    base: str | None = Field(description="the base model's greedy answer (≤ 256 new tokens)")
    tuned: str | None = Field(description="the tuned model's greedy answer")


class EvaluationSkipped(_Exact):
    lines: int = Field(description="FT_METRICS lines that could not be read, of any type")
    eval_lines: int = Field(description="of them, eval lines (bad JSON, bad model or numbers)")
    sample_lines: int = Field(description="of them, sample lines (bad JSON, index, texts)")


class EvaluationAnswer(_Exact):
    training_project_id: str
    training_job_id: str
    job_name: str | None
    status: str
    base: BaseEvaluation | None = Field(
        description="null without a validation set, or before the base model was evaluated"
    )
    tuned: TunedEvaluation | None = Field(description="null until the first tuned evaluation")
    change: EvaluationChange | None = Field(description="tuned - base; null unless both exist")
    samples: list[EvaluationSample] | None = Field(
        description="held-out prompts answered by both models; texts cut at 2,000 characters; "
        "null until printed (after training) or with eval_samples 0"
    )
    evaluations: int = Field(description="tuned evaluations read (one per epoch and the last)")
    skipped: EvaluationSkipped


__all__ = ["EvaluationAnswer", "LogLine", "LogPage", "MetricsAnswer"]
