"""resume_job, the Python API's resume, in-process against the sandbox."""

from __future__ import annotations

import json

import pytest

import finetune_api
from sandbox import Sandbox
from tests.test_python_api import DATASET, MODEL, configured  # noqa: F401 - fixture


def test_resume_job_returns_the_new_job_and_raises_the_contract_errors(
    configured: Sandbox,  # noqa: F811
) -> None:
    job = finetune_api.handle_training_request(
        DATASET, MODEL, "api-project", job_name="api-run", retry={"max_attempts": 3}
    )
    project_id, job_id = job["training_project_id"], job["training_job_id"]
    with pytest.raises(finetune_api.ConflictError):  # still created, not ended
        finetune_api.resume_job(project_id, job_id)
    configured.add_checkpoint(job_id)
    configured.set_status(job_id, "TRAINING_JOB_FAILED", "boom")
    with pytest.raises(finetune_api.NotFoundError):
        finetune_api.resume_job(project_id, job_id, checkpoint_id="checkpoint-7")
    with pytest.raises(finetune_api.InvalidRequestError):
        finetune_api.resume_job(project_id, job_id, hyperparameters={"num_epochs": 101})
    assert len(configured.jobs()) == 1

    new = finetune_api.resume_job(
        project_id, job_id, hyperparameters={"num_epochs": 2}, idempotency_key="k1"
    )
    json.dumps(new)
    assert new["resumed_from"] == {
        "training_project_id": project_id,
        "training_job_id": job_id,
        "checkpoint_id": "checkpoint-1",
    }
    again = finetune_api.resume_job(project_id, job_id, idempotency_key="k1")
    assert again["training_job_id"] == new["training_job_id"] and again["idempotent_replay"]
    [_, entry] = configured.jobs()
    config = json.loads(entry["request"]["runtime"]["environment_variables"]["RUNTIME_CONFIG"])
    assert config["retry"] == {"max_attempts": 3} and config["attempt"] is None
    assert config["hyperparameters"]["num_epochs"] == 2
