"""Teams (issue 29): two teams and an admin on one train_http, end to end.

Real parts: train_http under functions-framework, the sandbox (with moto behind
truss), the files' local folder, the unmodified ``openai`` SDK as two clients
with two keys. Team ``alpha`` makes a File, a pending File, an Upload, a job
(through /v1), a deployment and a fine-tuned model; team ``beta`` then calls
**every route of every route map** with alpha's ids, and each answer equals the
answer for an unknown id of the same shape, costs the same number of Baseten
requests, and writes nothing at Baseten. New routes are swept automatically.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import requests

from finetune_api.core.teams import key_table
from finetune_api.edge.http_app import TRAIN_ROUTES
from finetune_api.edge.openai_routes import V1_ROUTES
from loopback.fake_secret_manager import FakeSecretManager
from loopback.functions import FunctionServer
from loopback.servers import LocalS3, start_sandbox
from sandbox import Sandbox
from tests.conftest import API_KEY, function_env

ALPHA = "alpha-key-000000001"
BETA = "beta-key-0000000002"
OPS = "ops-key-00000000003"
KEYS = f"alpha:{ALPHA},beta:{BETA},ops:{OPS}"
PREFIX = "svc-"
MODEL = "Qwen/Qwen3-0.6B"
LINE = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
DATA = ("\n".join(json.dumps(LINE) for _ in range(20)) + "\n").encode()
CHAT = [{"role": "user", "content": "hi"}]
# Baseten routes that only read (a search is a POST that reads).
READS = ("GET ", "POST /v1/training_jobs/search")


@pytest.fixture(scope="module")
def teams_sandbox(s3: LocalS3) -> Iterator[Sandbox]:
    """A sandbox of this module's own: no other test's reset empties it (pytest-xdist
    may run other modules' tests between these on one worker)."""
    server = start_sandbox(API_KEY, s3.url)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def teams_server(
    teams_sandbox: Sandbox,
    secret_manager: FakeSecretManager,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[FunctionServer]:
    tmp = tmp_path_factory.mktemp("teams-tmp")
    env = function_env(
        teams_sandbox,
        secret_manager,
        tmp,
        API_KEYS=KEYS,
        ADMIN_TEAM="ops",
        PROJECT_NAME_PREFIX=PREFIX,
    )
    with FunctionServer("train_http", env, threads=16) as server:
        yield server
        output = server.output()
    assert sorted(p.name for p in tmp.iterdir()) == []
    for key in (ALPHA, BETA, OPS):
        assert key not in output  # no team's key is ever logged


def sdk(server: FunctionServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)


def call(server: FunctionServer, key: str, method: str, path: str, **kw: Any) -> Any:
    headers = {"X-Api-Key": key, **kw.pop("headers", {})}
    return requests.request(method, f"{server.url}{path}", headers=headers, timeout=60, **kw)


@pytest.fixture(scope="module")
def alpha(teams_server: FunctionServer, teams_sandbox: Sandbox) -> dict[str, Any]:
    """Everything team alpha owns: a File, a pending File, an Upload, a job, a model."""
    server, sandbox = teams_server, teams_sandbox
    client = sdk(server, ALPHA)
    made: dict[str, Any] = {}
    made["file"] = client.files.create(file=("train.jsonl", DATA), purpose="fine-tune").id
    pending = call(
        server,
        ALPHA,
        "POST",
        "/files",
        json={"filename": "big.jsonl", "bytes": len(DATA), "purpose": "fine-tune"},
    )
    assert pending.status_code == 201, pending.text
    made["pending"] = pending.json()["id"]
    upload = client.uploads.create(
        bytes=len(DATA), filename="u.jsonl", mime_type="text/jsonl", purpose="fine-tune"
    )
    made["upload"] = upload.id
    made["part"] = client.uploads.parts.create(upload_id=upload.id, data=DATA).id
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=made["file"], suffix="chatty")
    made["ftjob"] = job.id
    made["project"] = job.model_extra["training_project_id"]
    made["job"] = job.model_extra["training_job_id"]
    sandbox.advance(made["job"], steps=6)
    deployed = call(
        server,
        ALPHA,
        "POST",
        f"/jobs/{made['project']}/{made['job']}/deployments",
        json={"model_name": "chatty"},
    )
    assert deployed.status_code == 202, deployed.text
    made["model_id"] = deployed.json()["model_id"]
    made["deployment"] = deployed.json()["deployment_id"]
    made["checkpoint"] = deployed.json()["checkpoint_id"]
    requests.post(
        f"{sandbox.url}/_sandbox/deployments/{made['deployment']}/status",
        json={"status": "ACTIVE"},
        timeout=10,
    ).raise_for_status()
    model = client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model
    assert model is not None
    made["model"] = model
    # alpha itself reads and chats with all of it.
    assert client.chat.completions.create(model=model, messages=CHAT).choices
    return made


def twin(value: str) -> str:
    """An id of the same shape that does not exist: its last four letters/digits rotated."""
    chars = list(value)
    changed = 0
    for i in range(len(chars) - 1, -1, -1):
        c = chars[i]
        if c.isdigit():
            chars[i] = str((int(c) + 3) % 10)
        elif "a" <= c <= "f":  # hex stays hex
            chars[i] = chr((ord(c) - 97 + 1) % 6 + 97)
        elif "a" <= c <= "z":
            chars[i] = chr((ord(c) - 103 + 7) % 20 + 103)
        elif "A" <= c <= "Z":
            chars[i] = chr((ord(c) - 65 + 7) % 26 + 65)
        else:
            continue
        changed += 1
        if changed == 4:
            break
    return "".join(chars)


def _values(made: dict[str, Any], endpoint: str, v1: bool) -> dict[str, str]:
    file_id = made["pending"] if endpoint in ("file_content", "complete_file") and not v1 else None
    return {
        "project_id": made["project"],
        "job_id": made["ftjob"] if v1 else made["job"],
        "file_id": file_id or made["file"],
        "upload_id": made["upload"],
        "model_id": made["model_id"],
        "deployment_id": made["deployment"],
        "checkpoint_id": made["checkpoint"],
        "model": made["model"],
    }


def _body(endpoint: str, made: dict[str, Any]) -> dict[str, Any]:
    if endpoint == "file_content":
        return {"data": DATA, "headers": {"Content-Type": "application/octet-stream"}}
    if endpoint == "add_part":
        return {"files": {"data": ("part", DATA)}}
    if endpoint == "complete_upload":
        return {"json": {"part_ids": [made["part"]]}}
    if endpoint in ("deploy", "resume"):
        return {"json": {}}
    return {}


def _answer(response: requests.Response) -> tuple[int, Any]:
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, response.content


def _writes(before: dict[str, int], after: dict[str, int]) -> list[str]:
    return [
        route
        for route, count in after.items()
        if count > before.get(route, 0) and not route.startswith(READS)
    ]


def test_team_b_with_team_a_ids_gets_the_unknown_answer_on_every_route(
    teams_server: FunctionServer, teams_sandbox: Sandbox, alpha: dict[str, Any]
) -> None:
    server, sandbox = teams_server, teams_sandbox
    jobs_before = len(sandbox.jobs())
    swept = []
    for routes, v1 in ((TRAIN_ROUTES, False), (V1_ROUTES, True)):
        adapter = routes.bind("localhost")
        for rule in routes.iter_rules():
            if not rule.arguments:
                continue  # lists and creates: tested below
            values = _values(alpha, rule.endpoint, v1)
            for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                real = {name: values[name] for name in rule.arguments}
                fake = {name: twin(value) for name, value in real.items()}
                kwargs = _body(rule.endpoint, alpha)
                answers = []
                for ids in (real, fake):
                    path = adapter.build(rule.endpoint, ids, method=method)
                    before = sandbox.stats()
                    response = call(server, BETA, method, path, **kwargs)
                    after = sandbox.stats()
                    assert _writes(before["by_route"], after["by_route"]) == [], path
                    answers.append((_answer(response), after["requests"] - before["requests"]))
                (seen, cost), (unknown, unknown_cost) = answers
                assert seen == unknown, (rule.rule, method, seen, unknown)
                assert seen[0] == 404, (rule.rule, method, seen)
                # No Baseten call that only another team's id would cause.
                assert cost == unknown_cost, (rule.rule, method, cost, unknown_cost)
                swept.append(f"{method} {rule.rule}")
    assert len(swept) >= 24
    # Chat with alpha's model: as a model that does not exist.
    for model in (alpha["model"], twin(alpha["model"])):
        with pytest.raises(openai.NotFoundError):
            sdk(server, BETA).chat.completions.create(model=model, messages=CHAT)
    # alpha's things are all still there, untouched.
    client = sdk(server, ALPHA)
    assert client.files.retrieve(alpha["file"]).status == "processed"
    assert client.fine_tuning.jobs.retrieve(alpha["ftjob"]).status == "succeeded"
    states = {item["job"]["id"]: item["job"]["current_status"] for item in sandbox.jobs()}
    assert states[alpha["job"]] == "TRAINING_JOB_COMPLETED"
    assert len(states) == jobs_before  # no resume, no retry, nothing made for beta


def test_a_team_never_deploys_into_another_teams_model(
    teams_server: FunctionServer, teams_sandbox: Sandbox, alpha: dict[str, Any]
) -> None:
    before = len(teams_sandbox.jobs())
    deploy = {"model_name": "chatty", "on_completion": True}
    body = {"dataset_id": "d", "model_id": MODEL, "deploy": deploy}
    refused = call(teams_server, BETA, "POST", "/jobs", json=body)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["details"][0]["location"] == "deploy.model_name"
    assert len(teams_sandbox.jobs()) == before
    # alpha itself may deploy into its own model again.
    mine = call(teams_server, ALPHA, "POST", "/jobs", json={**body, "dry_run": True})
    assert mine.status_code == 200, mine.text


def test_lists_show_only_the_callers_team_and_the_admin_sees_all(
    teams_server: FunctionServer, alpha: dict[str, Any]
) -> None:
    server = teams_server
    beta_job = call(server, BETA, "POST", "/jobs", json={"dataset_id": "d", "model_id": MODEL})
    assert beta_job.status_code == 201, beta_job.text
    assert beta_job.json()["training_project_name"].startswith("svc-beta-")
    beta_file = sdk(server, BETA).files.create(file=("b.jsonl", DATA), purpose="fine-tune").id

    def ids(key: str) -> dict[str, set[str]]:
        client = sdk(server, key)
        jobs = call(server, key, "GET", "/jobs", params={"limit": 100}).json()["data"]
        files = call(server, key, "GET", "/files").json()["data"]
        return {
            "jobs": {job["training_job_id"] for job in jobs},
            "files": {item["id"] for item in files},
            "v1_files": {item.id for item in client.files.list()},
            "v1_jobs": {item.id for item in client.fine_tuning.jobs.list()},
            "models": {item.id for item in client.models.list()},
        }

    beta, admin = ids(BETA), ids(OPS)
    # One project's list: another team's project answers as one that does not exist.
    answers = [
        _answer(call(server, BETA, "GET", "/jobs", params={"project_id": project}))
        for project in (alpha["project"], twin(alpha["project"]))
    ]
    assert answers[0] == answers[1] and answers[0][0] == 404, answers
    assert beta["jobs"] == {beta_job.json()["training_job_id"]}
    assert alpha["file"] not in beta["files"] and beta_file in beta["files"]
    assert alpha["file"] not in beta["v1_files"] and beta_file in beta["v1_files"]
    assert alpha["ftjob"] not in beta["v1_jobs"]
    assert alpha["model"] not in beta["models"]
    assert {alpha["job"], beta_job.json()["training_job_id"]} <= admin["jobs"]
    assert {alpha["file"], beta_file} <= admin["files"]
    assert alpha["model"] in admin["models"] and alpha["ftjob"] in admin["v1_jobs"]
    # /v1 jobs name their team too (an extra field the SDK keeps in model_extra).
    v1 = sdk(server, OPS).fine_tuning.jobs.retrieve(alpha["ftjob"])
    assert v1.model_extra["team"] == "alpha"
    # The admin's lists name each item's team.
    listed = call(server, OPS, "GET", "/jobs", params={"limit": 100}).json()["data"]
    teams = {job["training_job_id"]: job["team"] for job in listed}
    assert teams[alpha["job"]] == "alpha"
    assert teams[beta_job.json()["training_job_id"]] == "beta"
    files = {f["id"]: f["team"] for f in call(server, OPS, "GET", "/files").json()["data"]}
    assert files[alpha["file"]] == "alpha" and files[beta_file] == "beta"
    # The admin reads (and could act on) alpha's job; its own jobs go to its own prefix.
    one = call(server, OPS, "GET", f"/jobs/{alpha['project']}/{alpha['job']}")
    assert one.status_code == 200 and one.json()["team"] == "alpha"
    own = call(server, OPS, "POST", "/jobs", json={"dataset_id": "d", "model_id": MODEL})
    assert own.status_code == 201 and own.json()["training_project_name"].startswith("svc-ops-")


def test_another_teams_file_as_training_file_is_the_unknown_file_answer(
    teams_server: FunctionServer, teams_sandbox: Sandbox, alpha: dict[str, Any]
) -> None:
    server = teams_server
    before = len(teams_sandbox.jobs())
    answers = []
    for file_id in (alpha["file"], twin(alpha["file"])):
        body = {"model_id": MODEL, "training_file": file_id}
        answers.append(_answer(call(server, BETA, "POST", "/jobs", json=body)))
        with pytest.raises(openai.BadRequestError) as raised:
            sdk(server, BETA).fine_tuning.jobs.create(model=MODEL, training_file=file_id)
        answers.append((raised.value.status_code, raised.value.body))
    assert answers[0] == answers[2] and answers[0][0] == 400, answers
    assert answers[1] == answers[3] and answers[1][0] == 400, answers
    assert len(teams_sandbox.jobs()) == before


@pytest.mark.parametrize(
    ("key", "project_name"),
    [
        (ALPHA, "svc-beta-mine"),  # another team's prefix
        (ALPHA, "svc-ops-mine"),  # the admin's
        (ALPHA, "svc-alpha"),  # the prefix without its '-'
        (ALPHA, "svc-alph-x"),
        (ALPHA, "other-x"),
        (OPS, "svc-alpha-x"),  # the admin creates in its own prefix too
    ],
)
def test_a_project_name_outside_the_teams_prefix_is_a_400(
    teams_server: FunctionServer, teams_sandbox: Sandbox, key: str, project_name: str
) -> None:
    before = teams_sandbox.stats()["by_route"]
    body = {"dataset_id": "d", "model_id": MODEL, "project_name": project_name}
    response = call(teams_server, key, "POST", "/jobs", json=body)
    assert response.status_code == 400, response.text
    [detail] = response.json()["error"]["details"]
    assert detail["location"] == "project_name"
    assert "your team's prefix" in detail["reason"]
    assert _writes(before, teams_sandbox.stats()["by_route"]) == []


def test_dot_dot_in_a_project_name_is_refused(teams_server: FunctionServer) -> None:
    body = {"dataset_id": "d", "model_id": MODEL, "project_name": "svc-alpha-../svc-beta-x"}
    response = call(teams_server, ALPHA, "POST", "/jobs", json=body)
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("entries", "reason"),
    [
        ("Alpha:alpha-key-0000001", "bad team"),
        ("9team:alpha-key-0000001", "bad team"),
        (":alpha-key-0000001", "bad team"),
        ("alphabeta:", "empty key"),
        ("alpha:short", "shorter than"),
        ("alpha:same-key-000001,beta:same-key-000001", "two teams"),
        ("ml:key-one-0000001,ml-research:key-two-0000002", "overlap"),
        ("a" * 33 + ":alpha-key-0000001", "bad team"),
    ],
)
def test_malformed_team_entries_are_refused(entries: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as raised:
        key_table(entries)
    assert "key-0000001" not in str(raised.value)  # never quotes a key


def test_a_malformed_team_entry_fails_closed_and_creates_nothing(
    sandbox: Sandbox, secret_manager: FakeSecretManager, tmp_path: Any
) -> None:
    env = function_env(
        sandbox, secret_manager, tmp_path, API_KEYS="alpha:same-key-000001,beta:same-key-000001"
    )
    with FunctionServer("train_http", env) as server:
        for key in ("same-key-000001", "", "anything-else-123"):
            response = call(server, key, "POST", "/jobs", json={"dataset_id": "d", "model_id": "m"})
            assert response.status_code == 500, response.text
            assert "same-key" not in response.text
        output = server.output()
    assert sandbox.jobs() == [] and sandbox.stats()["requests"] == 0
    assert "same-key-000001" not in output


def test_without_team_entries_nothing_changes(
    sandbox: Sandbox, secret_manager: FakeSecretManager, tmp_path: Any
) -> None:
    env = function_env(sandbox, secret_manager, tmp_path, API_KEYS="plain-key-0000001")
    with FunctionServer("train_http", env) as server:
        made = call(
            server, "plain-key-0000001", "POST", "/jobs", json={"dataset_id": "d", "model_id": "m"}
        )
        assert made.status_code == 201
        assert "team" not in made.json()
        assert not made.json()["training_project_name"].startswith("default-")
        listed = call(server, "plain-key-0000001", "GET", "/jobs").json()["data"]
        assert [job["training_job_id"] for job in listed] == [made.json()["training_job_id"]]
        assert "team" not in listed[0]
