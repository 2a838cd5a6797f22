"""The REST surface over raw HTTP: auth, validation, errors, shapes."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from typing import Any

import pytest

from sandbox import Sandbox
from tests.sandbox.support import API_KEY, Http, JobFactory, job_body


def _project_id(http: Http, name: str = "proj") -> str:
    reply = http.api("POST", "v1/training_projects", {"training_project": {"name": name}})
    assert reply.status_code == 200
    project_id: str = reply.json()["training_project"]["id"]
    return project_id


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Api-Key sk-wrong"},
        {"Authorization": f"Token {API_KEY}"},
        {"Authorization": "Api-Key "},
    ],
    ids=["missing", "wrong", "bad-scheme", "empty"],
)
def test_missing_or_wrong_key_is_401(http: Http, headers: dict[str, str]) -> None:
    reply = http.api("GET", "v1/training_projects", headers=headers)
    assert reply.status_code == 401
    assert reply.json()["code"] == "UNAUTHENTICATED"
    assert "sk-wrong" not in reply.text
    assert API_KEY not in reply.text


@pytest.mark.parametrize("scheme", ["Api-Key", "Bearer", "bearer"])
def test_accepted_auth_schemes(http: Http, scheme: str) -> None:
    reply = http.api(
        "GET", "v1/training_projects", headers={"Authorization": f"{scheme} {API_KEY}"}
    )
    assert reply.status_code == 200
    assert reply.json() == {"training_projects": []}


def test_api_key_can_be_rotated_through_config(http: Http) -> None:
    http.control("POST", "config", {"api_key": "sk-rotated"})
    assert http.api("GET", "v1/training_projects").status_code == 401
    rotated = http.api(
        "GET", "v1/training_projects", headers={"Authorization": "Api-Key sk-rotated"}
    )
    assert rotated.status_code == 200
    assert "api_key" not in http.control("GET", "config").json()


def test_unknown_route_is_404_and_wrong_method_405(http: Http) -> None:
    missing = http.api("GET", "v1/nothing/here", probe=True)
    assert missing.status_code == 404
    assert missing.json()["code"] == "NOT_FOUND"
    wrong_method = http.api("DELETE", "v1/training_projects", probe=True)
    assert wrong_method.status_code == 405
    assert http.control("GET", "nothing").status_code == 404


def test_unknown_project_and_job_are_404(http: Http, make_job: JobFactory) -> None:
    job = make_job()
    project_id = job["training_project_id"]
    for method, path in [
        ("GET", "v1/training_projects/nope123/jobs"),
        ("GET", f"v1/training_projects/nope123/jobs/{job['id']}"),
        ("GET", f"v1/training_projects/{project_id}/jobs/nope123"),
        ("POST", f"v1/training_projects/{project_id}/jobs/nope123/stop"),
        ("GET", f"v1/training_projects/{project_id}/jobs/nope123/checkpoints"),
    ]:
        reply = http.api(method, path, {} if method == "POST" else None)
        assert reply.status_code == 404, path
        assert reply.json()["code"] == "NOT_FOUND"
        assert "nope123" in reply.json()["message"]
    artifact = {"s3_bucket": "bucket", "s3_key": "key"}
    reply = http.api("POST", "v1/training_projects/nope123/jobs", job_body(artifact))
    assert reply.status_code == 404


def _mutations() -> list[tuple[str, Callable[[dict[str, Any]], None], str]]:
    def env(value: Any) -> Callable[[dict[str, Any]], None]:
        return lambda job: job["runtime"]["environment_variables"].update(BAD=value)

    return [
        ("no image", lambda j: j.pop("image"), "training_job.image"),
        ("no base image", lambda j: j["image"].pop("base_image"), "image.base_image"),
        ("no compute", lambda j: j.pop("compute"), "training_job.compute"),
        ("str node count", lambda j: j["compute"].update(node_count="2"), "node_count"),
        (
            "unknown accelerator",
            lambda j: j["compute"].update(accelerator={"accelerator": "Z9", "count": 1}),
            "accelerator.accelerator",
        ),
        ("no start commands", lambda j: j["runtime"].pop("start_commands"), "start_commands"),
        (
            "command not str",
            lambda j: j["runtime"].update(start_commands=["ok", 3]),
            "start_commands[1]",
        ),
        ("int env value", env(3), "environment_variables.BAD"),
        ("secret without name", env({"secret": "x"}), "environment_variables.BAD"),
        ("extra secret key", env({"name": "x", "version": 1}), "environment_variables.BAD"),
        ("no artifacts", lambda j: j["runtime"].pop("artifacts"), "runtime.artifacts"),
        (
            "artifact without key",
            lambda j: j["runtime"]["artifacts"][0].pop("s3_key"),
            "artifacts[0].s3_key",
        ),
        ("unknown field", lambda j: j.update(gpus=8), "training_job.gpus"),
    ]


@pytest.mark.parametrize(
    ("case", "mutate", "where"), _mutations(), ids=[m[0] for m in _mutations()]
)
def test_create_job_rejects_bad_shapes(
    http: Http,
    upload: Callable[[bytes], dict[str, str]],
    sandbox: Sandbox,
    case: str,
    mutate: Callable[[dict[str, Any]], None],
    where: str,
) -> None:
    project_id = _project_id(http)
    body = job_body(upload(b"x"))
    mutate(body["training_job"])
    reply = http.api("POST", f"v1/training_projects/{project_id}/jobs", body, probe=True)
    assert reply.status_code == 400, case
    assert reply.json()["code"] == "VALIDATION_ERROR"
    assert where in reply.json()["message"]
    assert sandbox.jobs() == []


def test_create_job_rejects_non_json_and_missing_wrapper(http: Http) -> None:
    project_id = _project_id(http)
    path = f"v1/training_projects/{project_id}/jobs"
    not_json = http.api(
        "POST", path, headers={**http.headers, "Content-Type": "application/json"}, probe=True
    )
    assert not_json.status_code == 400
    unwrapped = http.api("POST", path, {"image": {"base_image": "x"}}, probe=True)
    assert unwrapped.status_code == 400
    assert "training_job" in unwrapped.json()["message"]


def test_create_job_requires_the_artifact_to_exist_in_s3(http: Http, sandbox: Sandbox) -> None:
    project_id = _project_id(http)
    body = job_body({"s3_bucket": sandbox.state.s3.bucket, "s3_key": "never/uploaded.tgz"})
    reply = http.api("POST", f"v1/training_projects/{project_id}/jobs", body)
    assert reply.status_code == 400
    assert "never/uploaded.tgz does not exist" in reply.json()["message"]


def test_job_records_exact_request_and_derives_fields(
    http: Http, upload: Callable[[bytes], dict[str, str]], sandbox: Sandbox
) -> None:
    project_id = _project_id(http)
    body = job_body(upload(b"x"), name="run-1", priority=3)
    sent = copy.deepcopy(body)
    reply = http.api("POST", f"v1/training_projects/{project_id}/jobs", body)
    assert reply.status_code == 200
    job = reply.json()["training_job"]
    assert job["name"] == "run-1"
    assert job["instance_type"] == {
        "id": "H100:2x4x64Gi",
        "name": "H100:2",
        "memory_limit_mib": 64 * 1024,
        "millicpu_limit": 4000,
        "gpu_count": 2,
        "gpu_type": "H100",
        "gpu_memory_limit_mib": 80 * 1024,
    }
    assert (job["node_count"], job["priority"], job["availability_model"]) == (
        1,
        3,
        "dedicated",
    )
    assert job["user"] == {"email": "sandbox-user@example.com"}
    assert job["checkpoint_sync_status"] is None
    [recorded] = http.control("GET", "jobs").json()["jobs"]
    assert recorded["request"] == sent["training_job"]
    assert recorded["project"]["id"] == project_id


def test_team_route_and_project_validation(http: Http) -> None:
    team = http.api(
        "POST",
        "v1/teams/t-1/training_projects",
        {"training_project": {"name": "tp", "team_name": "Research"}},
    )
    assert team.status_code == 200
    assert team.json()["training_project"]["team_id"] == "t-1"
    for bad in [{}, {"training_project": {}}, {"training_project": {"name": "x", "job": {}}}]:
        assert http.api("POST", "v1/training_projects", bad, probe=True).status_code == 400


def test_blob_credentials_only_for_train(http: Http) -> None:
    # Baseten's spec has only .../train: any other kind is an unknown route.
    assert http.api("GET", "v1/blobs/credentials/model", probe=True).status_code == 404
    blob = http.api("GET", "v1/blobs/credentials/train").json()
    assert blob["creds"]["region_name"] == "us-east-1"


def test_concurrent_creates_are_all_recorded(
    http: Http, upload: Callable[[bytes], dict[str, str]], sandbox: Sandbox
) -> None:
    project_id = _project_id(http)
    bodies = [job_body(upload(b"x")) for _ in range(12)]
    ids: list[str] = []
    lock = threading.Lock()

    def create(body: dict[str, Any]) -> None:
        reply = http.api("POST", f"v1/training_projects/{project_id}/jobs", body)
        with lock:
            ids.append(reply.json()["training_job"]["id"])

    threads = [threading.Thread(target=create, args=(b,)) for b in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 12
    assert {j["job"]["id"] for j in sandbox.jobs()} == set(ids)
    created = [j["job"]["created_at"] for j in sandbox.jobs()]
    assert created == sorted(created)
    assert len(set(created)) == 12
