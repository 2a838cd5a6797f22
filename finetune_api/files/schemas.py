"""The File, the dry-run answer and the estimate, as pydantic models for /openapi.json.

The service builds these answers as plain dicts (files/service.py, jobs/estimate.py);
these models describe them, and a test holds the two together.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class LineError(BaseModel):
    line: int | None = Field(description="1-based line number; null for a file-wide error")
    reason: str


class Validation(BaseModel):
    format: Literal["chat", "text", "prompt_completion", "preference"] | None
    examples: int = Field(description="valid lines (exact)")
    invalid_examples: int = Field(description="invalid lines (exact)")
    errors: list[LineError] = Field(description="the first 100 errors")


class File(BaseModel):
    id: str = Field(description="file-<24 hex>; ids sort newest first")
    object: Literal["file"] = "file"
    filename: str
    bytes: int | None
    sha256: str | None = Field(description="of the stored bytes; null while pending_upload")
    created_at: int = Field(description="Unix seconds")
    purpose: Literal["fine-tune"] = "fine-tune"
    status: Literal["pending_upload", "validating", "processed", "error"]
    upload_url: str | None = Field(
        default=None,
        description="only in the POST /files answer that opened the upload: PUT the bytes here",
    )
    validation: Validation | None
    team: str | None = Field(
        default=None, description="the team it belongs to (only once teams are configured)"
    )


class FileList(BaseModel):
    data: list[File]
    has_more: bool


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: Literal[True] = True


class LargeFileRequest(BaseModel):
    """JSON body of ``POST /files``: open an upload session for a file of ``bytes`` bytes."""

    model_config = ConfigDict(extra="forbid")

    filename: str = Field(min_length=1, max_length=255)
    bytes: int = Field(ge=1)
    purpose: Literal["fine-tune"]


class Estimate(BaseModel):
    examples: int | None
    tokens: int | None
    tokens_method: Literal["tokenizer", "estimate"] | None
    examples_over_max_seq_length: int | None
    trained_tokens: int | None = Field(description="tokens times num_epochs")
    gpu_hours: float | None = Field(description="null unless grounded in measured throughput")
    cost_usd: float | None = Field(description="null unless grounded in throughput and a price")
    cost_basis: str = Field(description="where gpu_hours and cost_usd came from, or why null")
    chat_template_problem: str | None = Field(
        default=None,
        description="set when the model's tokenizer was loaded and its chat template cannot "
        "render the tools, tool calls or tool messages the data holds (the job would fail at "
        "once); null otherwise",
    )


class DryRun(BaseModel):
    dry_run: Literal[True] = True
    request: dict[str, object] = Field(description="the resolved request, defaults filled in")
    estimate: Estimate
