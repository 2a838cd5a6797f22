"""``runtime.load_checkpoint_config``: accepted per Baseten's spec, checked, recorded."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from sandbox import Sandbox
from tests.sandbox.support import API_KEY, Http, job_body

LCC = "load_checkpoint_config"


def _with_load(artifact: dict[str, str], load: Any) -> dict[str, Any]:
    body = job_body(artifact)
    body["training_job"]["runtime"][LCC] = load
    return body


def _project(http: Http, name: str = "resume-proj") -> str:
    reply = http.api("POST", "v1/training_projects", {"training_project": {"name": name}})
    project_id: str = reply.json()["training_project"]["id"]
    return project_id


def _create(http: Http, project_id: str, body: dict[str, Any]) -> requests.Response:
    return http.api("POST", f"v1/training_projects/{project_id}/jobs", body)


@pytest.fixture
def source(
    sandbox: Sandbox, http: Http, upload: Callable[[bytes], dict[str, str]]
) -> dict[str, Any]:
    """A failed job with two checkpoints."""
    project_id = _project(http)
    created = _create(http, project_id, job_body(upload(b"x")))
    job: dict[str, Any] = created.json()["training_job"]
    sandbox.add_checkpoint(job["id"])
    sandbox.add_checkpoint(job["id"])
    sandbox.set_status(job["id"], "TRAINING_JOB_FAILED", "CUDA out of memory")
    return {"project_id": project_id, "job_id": job["id"]}


def test_named_and_latest_checkpoints_are_recorded_with_where_they_load(
    sandbox: Sandbox, http: Http, upload: Callable[[bytes], dict[str, str]], source: dict[str, Any]
) -> None:
    named = {
        "enabled": True,
        "checkpoints": [
            {
                "typ": "baseten_named_checkpoint",
                "checkpoint_name": "checkpoint-1",
                "job_id": source["job_id"],
            }
        ],
        "download_folder": "/tmp/loaded_checkpoints",
    }
    reply = _create(http, source["project_id"], _with_load(upload(b"x"), named))
    assert reply.status_code == 200, reply.text
    latest = {
        "enabled": True,
        "checkpoints": [{"typ": "baseten_latest_checkpoint", "project_name": "resume-proj"}],
    }
    # The project's most recent job is the one just created (no checkpoint yet): refused.
    refused = _create(http, source["project_id"], _with_load(upload(b"x"), latest))
    assert refused.status_code == 400
    assert "has no checkpoint" in refused.json()["message"]
    latest["checkpoints"] = [{"typ": "baseten_latest_checkpoint", "job_id": source["job_id"]}]
    assert _create(http, source["project_id"], _with_load(upload(b"x"), latest)).status_code == 200

    entries = sandbox.jobs()
    assert len(entries) == 3
    assert entries[0]["load_checkpoints"] is None
    assert entries[1]["load_checkpoints"] == {
        "enabled": True,
        "download_folder": "/tmp/loaded_checkpoints",
        "checkpoints": [
            {
                "typ": "baseten_named_checkpoint",
                "training_project_id": source["project_id"],
                "training_job_id": source["job_id"],
                "checkpoint_id": "checkpoint-1",
                "path": "/tmp/loaded_checkpoints/rank-0/checkpoint-1",
                "resolved": True,
            }
        ],
    }
    assert entries[1]["request"]["runtime"][LCC] == named  # recorded as sent
    assert entries[2]["load_checkpoints"]["checkpoints"][0]["checkpoint_id"] == "checkpoint-2"
    # Also on the control API.
    listed = http.control("GET", "jobs").json()["jobs"]
    assert listed[1]["load_checkpoints"]["checkpoints"][0]["checkpoint_id"] == "checkpoint-1"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"typ": "baseten_named_checkpoint", "checkpoint_name": "checkpoint-9"},
            "checkpoint 'checkpoint-9' not found in training job",
        ),
        (
            {"typ": "baseten_named_checkpoint", "checkpoint_name": "cp", "job_id": "nope"},
            "training job 'nope' not found",
        ),
        ({"typ": "baseten_latest_checkpoint", "job_id": "nope"}, "training job 'nope' not found"),
        (
            {"typ": "baseten_latest_checkpoint", "project_name": "no-such-project", "job_id": None},
            "training project 'no-such-project' has no training job",
        ),
    ],
)
def test_a_checkpoint_that_does_not_exist_is_refused_and_nothing_is_created(
    sandbox: Sandbox,
    http: Http,
    upload: Callable[[bytes], dict[str, str]],
    source: dict[str, Any],
    entry: dict[str, Any],
    message: str,
) -> None:
    entry = {"job_id": source["job_id"], **entry}
    load = {"enabled": True, "checkpoints": [entry]}
    reply = _create(http, source["project_id"], _with_load(upload(b"x"), load))
    assert reply.status_code == 400
    body = reply.json()
    assert body["code"] == "VALIDATION_ERROR"
    assert body["message"].startswith(f"training_job.runtime.{LCC}.checkpoints[0]: ")
    assert message in body["message"]
    assert len(sandbox.jobs()) == 1  # only the source


def test_disabled_loading_is_accepted_and_loads_nothing(
    sandbox: Sandbox, http: Http, upload: Callable[[bytes], dict[str, str]], source: dict[str, Any]
) -> None:
    load = {
        "enabled": False,
        "checkpoints": [{"typ": "baseten_named_checkpoint", "checkpoint_name": "x", "job_id": "y"}],
    }
    assert _create(http, source["project_id"], _with_load(upload(b"x"), load)).status_code == 200
    assert sandbox.jobs()[-1]["load_checkpoints"] is None


@pytest.mark.parametrize(
    ("load", "where"),
    [
        ({"enabled": True, "checkpoints": [{"typ": "nope"}]}, "checkpoints[0]"),
        ({"enabled": "yes"}, "enabled"),
        ({"enabled": True, "checkpoints": "all"}, "checkpoints"),
        (
            {"enabled": True, "checkpoints": [{"typ": "baseten_named_checkpoint", "job_id": "j"}]},
            "checkpoints[0]",
        ),
    ],
)
def test_a_config_outside_the_spec_is_refused(
    sandbox: Sandbox,
    http: Http,
    upload: Callable[[bytes], dict[str, str]],
    source: dict[str, Any],
    load: dict[str, Any],
    where: str,
) -> None:
    reply = http.api(
        "POST",
        f"v1/training_projects/{source['project_id']}/jobs",
        _with_load(upload(b"x"), load),
        probe=True,
    )
    assert reply.status_code == 400
    assert reply.json()["code"] == "VALIDATION_ERROR"
    assert LCC in reply.json()["message"] and where in reply.json()["message"]
    assert len(sandbox.jobs()) == 1


def test_truss_push_sends_load_checkpoint_config_as_the_sandbox_records_it(
    sandbox: Sandbox,
    truss_app_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    http: Http,
    upload: Callable[[bytes], dict[str, str]],
    source: dict[str, Any],
) -> None:
    from truss.remote.remote_factory import API_KEY_ENV, ENV_REMOTE_NAME, REMOTE_URL_ENV
    from truss_train import public_api

    (tmp_path / "config.py").write_text(
        textwrap.dedent(
            f"""
            from truss_train import definitions

            project = definitions.TrainingProject(
                name="resume-proj",
                job=definitions.TrainingJob(
                    image=definitions.Image(base_image="pytorch/pytorch:2.7.0"),
                    runtime=definitions.Runtime(
                        start_commands=["python train.py"],
                        load_checkpoint_config=definitions.LoadCheckpointConfig(
                            enabled=True,
                            checkpoints=[
                                definitions.BasetenCheckpoint.from_named_checkpoint(
                                    checkpoint_name="checkpoint-2", job_id={source["job_id"]!r}
                                )
                            ],
                        ),
                    ),
                ),
            )
            """
        )
    )
    monkeypatch.setenv(REMOTE_URL_ENV, truss_app_url)
    monkeypatch.setenv(API_KEY_ENV, API_KEY)
    public_api.push(tmp_path / "config.py", remote=str(ENV_REMOTE_NAME))
    recorded = sandbox.jobs()[-1]
    assert recorded["request"]["runtime"][LCC] == {
        "enabled": True,
        "checkpoints": [
            {
                "typ": "baseten_named_checkpoint",
                "checkpoint_name": "checkpoint-2",
                "job_id": source["job_id"],
            }
        ],
        "download_folder": "/tmp/loaded_checkpoints",
    }
    assert recorded["load_checkpoints"]["checkpoints"][0]["checkpoint_id"] == "checkpoint-2"
