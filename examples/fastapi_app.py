"""The recipe's FastAPI integration, made true: one call, the CONTRACT's errors.

Run it against the local sandbox or real Baseten (settings come from the
environment, exactly as for the Cloud Functions):

    BASETEN_API_KEY=... uvicorn examples.fastapi_app:app
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from finetune_api import ServiceError, handle_training_request

app = FastAPI(title="Fine-tuning via Baseten")


class TrainingRequest(BaseModel):
    dataset_id: str
    model_id: str
    project_name: str | None = None
    hyperparameters: dict[str, Any] | None = None


@app.exception_handler(ServiceError)
async def service_error(request: Request, error: ServiceError) -> JSONResponse:
    # Each exception carries its CONTRACT status, JSON body and Retry-After.
    return JSONResponse(error.body, status_code=error.status, headers=error.headers)


# A plain `def`: FastAPI runs it in a worker thread, since submitting blocks.
@app.post("/train", status_code=201)
def create_training_job(
    request: TrainingRequest, idempotency_key: str | None = Header(default=None)
) -> dict[str, Any]:
    job = handle_training_request(
        dataset_id=request.dataset_id,
        model_id=request.model_id,
        project_name=request.project_name,
        hyperparameters=request.hyperparameters,
        idempotency_key=idempotency_key,
    )
    return {
        "training_project_id": job["training_project_id"],
        "training_job_id": job["training_job_id"],
        "status": job["status"],
        "dashboard_url": job["dashboard_url"],
    }
