"""The sandbox against Baseten's vendored OpenAPI document (sandbox/spec/).

Every operation the sandbox implements is walked through truss's own
``BasetenApi`` and through our client (``finetune_api.baseten.client``), in
each mode and fault mode, and every answer is validated against the
operation's response schema by the sandbox itself (``sandbox.conformance``);
the ledger says how many were validated and that none broke the spec.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from finetune_api.baseten.client import BasetenClient, RateLimiter
from finetune_api.core.errors import ServiceError
from sandbox import CREATED, PENDING, Sandbox
from sandbox.conformance import LEDGER, Ledger, Rejection, vendored_spec
from sandbox.refresh_spec import _shape, sandbox_operations
from sandbox.server import UNKNOWN_FIELD
from tests.poll_fixtures import make_settings
from tests.sandbox.support import API_KEY, Http
from tests.sandbox.test_sandbox_truss_client import _project, _submit


@pytest.fixture
def client(sandbox: Sandbox) -> Iterator[BasetenClient]:
    settings = make_settings(sandbox, baseten_max_retries=0)
    with BasetenClient(settings, lambda: API_KEY, limiter=RateLimiter(1000.0)) as ours:
        yield ours


def _spec_labels_served() -> dict[str, str]:
    """Sandbox route (``GET /v1/a/{}``) -> the spec operation it plays."""
    spec = vendored_spec()
    by_shape = {_shape(op.label): op.label for op in spec.operations}
    out = {}
    for label in sandbox_operations():
        if label == "GET /v1/blobs/credentials/{}":
            out[label] = "GET /v1/blobs/credentials/train"
        else:
            out[label] = by_shape[_shape(label)]
    return out


def test_every_sandbox_route_is_an_operation_of_the_spec() -> None:
    served = _spec_labels_served()
    assert len(served) >= 10
    assert all(" /v1/" in label for label in served.values())


def _walk_with_truss(truss_api: Any, sandbox: Sandbox, tmp_path: Path) -> str:
    """Every operation truss uses, as truss calls it; returns the final status."""
    project, job = _submit(truss_api, tmp_path)
    truss_api.upsert_training_project(_project("fidelity"), team_id="team-1")
    truss_api.list_training_projects()
    truss_api.list_training_jobs(project["id"])
    truss_api.search_training_jobs(project_id=project["id"])
    truss_api.list_training_job_checkpoints(project["id"], job["id"])
    sandbox.advance(job["id"], steps=3)
    sandbox.add_checkpoint(job["id"])
    checkpoints = truss_api.list_training_job_checkpoints(project["id"], job["id"])
    # truss's own pager over checkpoint_files (page_size and page_token as text).
    files = truss_api.get_training_job_checkpoint_presigned_url(
        project["id"], job["id"], page_size=2
    )
    names = {c["checkpoint_id"] for c in checkpoints["checkpoints"]}
    assert names, "the advanced job has written checkpoints"
    assert (
        len(files) == 3 * len(names)
        and {f["relative_file_name"].split("/")[0] for f in files} == names
    )
    # truss still reads logs and metrics through the deprecated POST forms.
    truss_api.get_training_job_logs(project["id"], job["id"])
    truss_api.get_training_job_metrics(project["id"], job["id"])
    truss_api.stop_training_job(project["id"], job["id"])
    status: str = truss_api.get_training_job(project["id"], job["id"])["training_job"][
        "current_status"
    ]
    return status


def _walk_with_client(client: BasetenClient, sandbox: Sandbox) -> list[dict[str, Any]]:
    """Every public method of our client."""
    [job_id] = sandbox.seed(checkpoints_per_job=1)["job_ids"]
    project = client.upsert_project("seed-0")
    client.upsert_project("team-project", team_id="team-1")
    client.list_projects()
    jobs = client.list_project_jobs(project["id"])
    client.search_jobs(project_id=project["id"], statuses=["TRAINING_JOB_CREATED"])
    client.search_jobs(newest_first=False)
    client.get_job(project["id"], job_id)
    [checkpoint] = client.list_checkpoints(project["id"], job_id)
    files, token = client.checkpoint_files(project["id"], job_id, page_size=2)
    assert len(files) == 2 and token == 2
    rest, token = client.checkpoint_files(project["id"], job_id, page_size=2, page_token=2)
    assert len(rest) == 1 and token is None
    now_ms = sandbox.state.now_us() // 1000
    client.get_logs(project["id"], job_id, start_ms=now_ms - 60_000, end_ms=now_ms + 1000)
    client.get_logs(
        project["id"],
        job_id,
        start_ms=now_ms - 3_600_000,
        end_ms=now_ms,
        direction="desc",
        min_level="INFO",
    )
    client.get_metrics(project["id"], job_id, start_ms=None, end_ms=None)
    client.stop_job(project["id"], job_id)
    _walk_serving(client, sandbox, project["id"], job_id, checkpoint["checkpoint_id"])
    return jobs


def _walk_serving(
    client: BasetenClient, sandbox: Sandbox, project_id: str, job_id: str, checkpoint: str
) -> None:
    """The /v1/models operations our client uses to deploy (the deployment itself is GraphQL)."""
    created = sandbox.state.deployments.graphql(
        {
            "query": "mutation ($request: CreateModelVersionFromInferenceTemplateRequest!) {"
            " create_model_version_from_inference_template(request: $request) {"
            " model_version { id name model_id } truss_config } }",
            "variables": {
                "request": {
                    "metadata": {"oracle_name": "walk-bot"},
                    "weights_sources": [
                        {
                            "weight_source_type": "B10_CHECKPOINTING",
                            "b10_training_checkpoint_weights_source": {
                                "checkpoint": {
                                    "training_job_id": job_id,
                                    "checkpoint_name": checkpoint,
                                }
                            },
                        }
                    ],
                    "inference_stack": {"stack_type": "VLLM", "environment_variables": []},
                    "instance_type_id": "L4:1",
                    "dry_run": False,
                }
            },
        }
    )
    version = created["data"]["create_model_version_from_inference_template"]["model_version"]
    model_id, deployment_id = version["model_id"], version["id"]
    client.list_models()
    client.list_models("walk-bot")
    client.get_model(model_id)
    client.list_deployments(model_id)
    client.list_deployments(model_id, "ft.p.j.c")
    client.get_deployment(model_id, deployment_id)
    client.rename_deployment(model_id, deployment_id, "ft.p.j.c")
    client.deactivate_deployment(model_id, deployment_id)
    client.activate_deployment(model_id, deployment_id)
    client.delete_deployment(model_id, deployment_id)
    client.job_artifact_urls(project_id, job_id)


@pytest.mark.parametrize("mode", ["plain", "capacity_short", "forward_compat"])
def test_truss_and_our_client_get_only_answers_the_spec_allows(
    truss_api: Any, client: BasetenClient, sandbox: Sandbox, tmp_path: Path, mode: str
) -> None:
    if mode != "plain":
        sandbox.configure(**{mode: True})
    before = LEDGER.snapshot()
    validated_before = Counter(LEDGER.validated_operations)
    status = _walk_with_truss(truss_api, sandbox, tmp_path)
    jobs = _walk_with_client(client, sandbox)
    after = LEDGER.snapshot()
    assert after["bad_answers"] == before["bad_answers"]
    assert after["unexpected_rejections"] == before["unexpected_rejections"]
    validated = Counter(LEDGER.validated_operations)
    validated.subtract(validated_before)
    # Every operation the sandbox implements answered, and each answer was validated.
    assert {op for op, n in validated.items() if n > 0} == set(_spec_labels_served().values())
    assert after["answers_validated"] - before["answers_validated"] >= 20
    assert status == "TRAINING_JOB_STOPPED"
    if mode == "forward_compat":
        assert UNKNOWN_FIELD in jobs[0] and UNKNOWN_FIELD in jobs[0]["instance_type"]
    else:
        assert all(UNKNOWN_FIELD not in job for job in jobs)


def _fault_modes() -> list[tuple[str, dict[str, Any]]]:
    return [
        ("429 fault", {"status": 429, "retry_after": 1.5}),
        ("429 fault without retry_after", {"status": 429}),
        ("503 fault", {"status": 503, "retry_after": 1}),
        ("500 fault", {"status": 500}),
        ("504 after handling", {"status": 504, "after_handling": True}),
    ]


@pytest.mark.parametrize(("case", "fault"), _fault_modes(), ids=[c for c, _ in _fault_modes()])
def test_fault_answers_conform_through_truss_and_our_client(
    truss_api: Any, client: BasetenClient, sandbox: Sandbox, case: str, fault: dict[str, Any]
) -> None:
    [job_id] = sandbox.seed()["job_ids"]
    project_id = sandbox.jobs()[0]["project"]["id"]
    before = LEDGER.snapshot()
    sandbox.add_fault(path=r"^v1/", count=2, **fault)
    with pytest.raises(ServiceError):
        client.get_job(project_id, job_id)
    with pytest.raises(Exception):
        truss_api.list_training_projects()
    after = LEDGER.snapshot()
    assert after["bad_answers"] == before["bad_answers"], LEDGER.bad_answers[-1:]
    if fault["status"] == 429:
        # Baseten's 429 body has a schema: both answers were checked against it.
        assert after["answers_validated"] - before["answers_validated"] == 2


def test_rate_limit_429_body_is_baseten_s(sandbox: Sandbox, client: BasetenClient) -> None:
    sandbox.configure(rate_limit_per_second=1)
    http = Http(sandbox.url, API_KEY)
    assert http.api("GET", "v1/training_projects").status_code == 200
    limited = http.api("GET", "v1/training_projects")
    assert limited.status_code == 429
    assert set(limited.json()) == {"error", "retry_after"}
    assert isinstance(limited.json()["retry_after"], int)


def test_capacity_short_keeps_new_jobs_pending_before_created(
    sandbox: Sandbox, client: BasetenClient
) -> None:
    sandbox.configure(capacity_short=True)
    [job_id] = sandbox.seed()["job_ids"]
    project_id = sandbox.jobs()[0]["project"]["id"]
    assert client.get_job(project_id, job_id)["current_status"] == PENDING
    sandbox.advance(job_id, steps=3)
    assert client.get_job(project_id, job_id)["current_status"] == PENDING  # still no capacity
    sandbox.configure(capacity_short=False)
    sandbox.advance(job_id)
    assert client.get_job(project_id, job_id)["current_status"] == CREATED
    sandbox.advance(job_id)
    assert client.get_job(project_id, job_id)["current_status"] == "TRAINING_JOB_DEPLOYING"


def test_forward_compat_clock_passes_an_unknown_status(
    sandbox: Sandbox, client: BasetenClient
) -> None:
    sandbox.configure(forward_compat=True)
    [job_id] = sandbox.seed()["job_ids"]
    project_id = sandbox.jobs()[0]["project"]["id"]
    seen = []
    for _ in range(5):
        seen.append(client.get_job(project_id, job_id)["current_status"])
        sandbox.advance(job_id)
    assert seen == [
        "TRAINING_JOB_CREATED",
        "TRAINING_JOB_DEPLOYING",
        "TRAINING_JOB_PREEMPTED",
        "TRAINING_JOB_RUNNING",
        "TRAINING_JOB_RUNNING",
    ]
    # creds are splatted into boto3.resource() by truss: never an unknown field there.
    creds = Http(sandbox.url, API_KEY).api("GET", "v1/blobs/credentials/train").json()
    assert UNKNOWN_FIELD in creds and UNKNOWN_FIELD not in creds["creds"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "named"),
    [
        ("POST", "v1/training_projects", {"training_project": {"name": 7}}, 400, "name"),
        ("POST", "v1/training_projects", {"training_project": {}}, 400, "training_project.name"),
        ("POST", "v1/training_jobs/search", {"statuses": "RUNNING"}, 400, "statuses"),
        ("POST", "v1/training_jobs/search", {"order_by": [{"field": "x"}]}, 400, "order"),
        ("GET", "v1/training_projects?page=2", None, 400, "page"),
        ("PUT", "v1/training_projects", {}, 405, "PUT"),
        ("GET", "v1/training_things", None, 404, "training_things"),
    ],
)
def test_spec_violations_are_refused_naming_the_field(
    sandbox: Sandbox, method: str, path: str, body: Any, status: int, named: str
) -> None:
    before = len(LEDGER.rejections)
    reply = Http(sandbox.url, API_KEY).api(method, path, body, probe=True)
    assert reply.status_code == status
    assert named in reply.json()["message"]
    assert sandbox.jobs() == [] and sandbox.state.list_projects()["training_projects"] == []
    [recorded] = LEDGER.rejections[before:]
    assert recorded.probe and recorded.status == status


def test_the_ledger_tells_probes_from_unexpected_rejections() -> None:
    ledger = Ledger()
    ledger.rejected(Rejection("GET", "/v1/x", 404, "no route", probe=True))
    assert ledger.unexpected_rejections() == []
    ledger.rejected(Rejection("GET", "/v1/y", 404, "no route", probe=False))
    assert [r.path for r in ledger.unexpected_rejections()] == ["/v1/y"]


def test_our_client_never_calls_a_deprecated_operation(
    sandbox: Sandbox, client: BasetenClient
) -> None:
    deprecated = {op.label for op in vendored_spec().operations if op.deprecated}
    assert "POST /v1/training_projects/{training_project_id}/jobs/{training_job_id}/logs" in (
        deprecated
    )
    before = Counter(LEDGER.requested_operations)
    _walk_with_client(client, sandbox)
    used = Counter(LEDGER.requested_operations)
    used.subtract(before)
    called = {op for op, n in used.items() if n > 0}
    assert len(called) >= 8
    assert called.isdisjoint(deprecated)


def test_answers_keep_validating_when_a_handler_drifts(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check can fail: an answer missing a required field is recorded as bad."""
    before = len(LEDGER.bad_answers)
    original: Callable[[], dict[str, Any]] = sandbox.state.list_projects
    monkeypatch.setattr(sandbox.state, "list_projects", lambda: {"projects": original()})
    Http(sandbox.url, API_KEY).api("GET", "v1/training_projects")
    [bad] = LEDGER.bad_answers[before:]
    assert bad.operation == "GET /v1/training_projects"
    assert "training_projects" in bad.message
    del LEDGER.bad_answers[before:]  # expected here; keep the suite-wide check clean


def test_the_deployed_functions_never_import_the_validator() -> None:
    """jsonschema, referencing and the sandbox are test/sandbox dependencies only."""
    import ast

    root = Path(__file__).resolve().parents[2]
    imported: set[str] = set()
    for source in [root / "main.py", *sorted((root / "finetune_api").rglob("*.py"))]:
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
    assert "finetune_api" in imported  # the scan sees imports
    assert imported.isdisjoint({"jsonschema", "referencing", "sandbox"})
    runtime = (root / "requirements.txt").read_text().lower()
    assert "jsonschema" not in runtime and "referencing" not in runtime


def test_a_spec_operation_the_sandbox_lacks_is_501_not_a_fake_404(sandbox: Sandbox) -> None:
    http = Http(sandbox.url, API_KEY)
    for method, path in [("GET", "v1/training/capacity"), ("DELETE", "v1/training_projects/p1")]:
        reply = http.api(method, path)
        assert reply.status_code == 501, path
        assert reply.json()["code"] == "NOT_IMPLEMENTED"
        assert "does not implement" in reply.json()["message"]


def test_the_ledger_is_readable_over_the_control_api(sandbox: Sandbox) -> None:
    http = Http(sandbox.url, API_KEY)
    http.api("GET", "v1/training_projects")
    report = http.control("GET", "conformance").json()
    assert report["answers_validated"] >= 1
    assert report["unexpected_rejections"] == 0 and report["bad_answers"] == []


def test_only_v1_paths_are_held_to_the_spec(sandbox: Sandbox) -> None:
    """GraphQL and other non-/v1 paths are outside Baseten's REST document: not refused by it."""
    before = len(LEDGER.rejections)
    reply = Http(sandbox.url, API_KEY).api("POST", "graphql/", {"query": "{ x }"})
    # Served (the deploy operations truss sends), GraphQL-style: 200 with errors.
    assert reply.status_code == 200
    assert reply.json()["errors"][0]["extensions"]["code"] == "UNSUPPORTED_OPERATION"
    assert LEDGER.rejections[before:] == []
