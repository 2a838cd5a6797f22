"""The unmodified ``openai`` SDK against ``train_http``'s ``/v1/`` (functions-framework, the
sandbox, moto behind truss, the files' local folder; fake-gcs-server for compose).

Files and wait_for_processing; jobs created, retrieved while the sandbox moves them,
auto-paged newest first, filtered by metadata, their events, checkpoints and cancel;
chat with the fine-tuned model, streamed and not; every error path as the SDK's own
exception class; the Uploads API with 8 MiB parts and a 40 MiB file whose check
matches the same bytes sent through ``/files``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from loopback.fake_secret_manager import FakeSecretManager
from loopback.functions import FunctionServer
from sandbox import Sandbox
from tests.conftest import API_KEY, function_env

KEY = "sk-test-openai-surface-0001"
MODEL = "Qwen/Qwen3-0.6B"
LINE = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
DATA = ("\n".join(json.dumps(LINE) for _ in range(20)) + "\n").encode()


@pytest.fixture(scope="module")
def world(
    sandbox_server: Sandbox,
    secret_manager: FakeSecretManager,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[FunctionServer, Sandbox]]:
    """One train_http with API_KEYS for the whole module; the sandbox emptied once."""
    sandbox_server.reset()
    tmp = tmp_path_factory.mktemp("openai-tmp")
    env = function_env(sandbox_server, secret_manager, tmp, API_KEYS=KEY)
    with FunctionServer("train_http", env, threads=16) as server:
        yield server, sandbox_server
        output = server.output()
    assert sorted(p.name for p in tmp.iterdir()) == []
    # Neither the Baseten key nor the service's own key is ever logged.
    assert API_KEY not in output and KEY not in output


def client(server: FunctionServer, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def training_file(world: tuple[FunctionServer, Sandbox]) -> str:
    server, _ = world
    created = client(server).files.create(file=("train.jsonl", DATA), purpose="fine-tune")
    return str(created.id)


def test_files_create_wait_list_content_delete(world: tuple[FunctionServer, Sandbox]) -> None:
    server, _ = world
    sdk = client(server)
    created = sdk.files.create(file=("chat.jsonl", DATA), purpose="fine-tune")
    assert created.id.startswith("file-") and created.object == "file"
    done = sdk.files.wait_for_processing(created.id, poll_interval=0.1, max_wait_seconds=10)
    assert done.status == "processed" and done.bytes == len(DATA)
    assert done.model_extra["validation"]["examples"] == 20
    assert created.id in [item.id for item in sdk.files.list()]
    assert sdk.files.content(created.id).content == DATA
    deleted = sdk.files.delete(created.id)
    assert deleted.deleted is True
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(created.id)
    bad = sdk.files.create(file=("bad.jsonl", b"not json\n"), purpose="fine-tune")
    assert sdk.files.wait_for_processing(bad.id, poll_interval=0.1).status == "error"


def test_job_create_retrieve_while_the_sandbox_moves_it(
    world: tuple[FunctionServer, Sandbox], training_file: str
) -> None:
    server, sandbox = world
    sdk = client(server)
    job = sdk.fine_tuning.jobs.create(
        model=MODEL,
        training_file=training_file,
        suffix="mine",
        metadata={"team": "search", "run": "1"},
        seed=7,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
        extra_body={"compute": {"accelerator": "H100"}, "lora": {"rank": 8}},
    )
    assert job.object == "fine_tuning.job" and job.status == "queued"
    assert (job.model, job.training_file, job.suffix, job.seed) == (MODEL, training_file, "mine", 7)
    assert job.metadata == {"team": "search", "run": "1"}
    assert job.hyperparameters.n_epochs == 2
    # The method echoed with the values used: numbers, never "auto".
    assert job.method is not None and job.method.type == "supervised"
    assert job.method.supervised is not None and job.method.supervised.hyperparameters is not None
    used = job.method.supervised.hyperparameters
    assert (used.n_epochs, used.batch_size, used.learning_rate_multiplier) == (2, 4, 1.0)
    baseten_job = job.model_extra["training_job_id"]
    request = next(j["request"] for j in sandbox.jobs() if j["job"]["id"] == baseten_job)
    config = json.loads(request["runtime"]["environment_variables"]["RUNTIME_CONFIG"])
    assert config["hyperparameters"]["lora_rank"] == 8 and config["hyperparameters"]["seed"] == 7
    assert config["compute"]["accelerator"] == "H100"
    seen = [job.status]
    for _ in range(6):
        sandbox.advance(baseten_job)
        seen.append(sdk.fine_tuning.jobs.retrieve(job.id).status)
    assert seen[0] == "queued" and "running" in seen and seen[-1] == "succeeded"
    final = sdk.fine_tuning.jobs.retrieve(job.id)
    assert final.finished_at is not None and final.finished_at >= final.created_at
    # The last step line's cumulative token count (the sandbox: 4096 per step, 25 per epoch).
    assert final.trained_tokens == 2 * 25 * 4096
    listed = next(j for j in sdk.fine_tuning.jobs.list() if j.id == job.id)
    assert (listed.trained_tokens, listed.finished_at) == (final.trained_tokens, final.finished_at)
    events = list(sdk.fine_tuning.jobs.list_events(job.id, limit=5))
    assert events[0].message == "The job has successfully completed"
    assert events[-1].message == "Created fine-tuning job"
    metrics = [e for e in events if e.type == "metrics"]
    assert metrics and all(e.data["train_loss"] is not None for e in metrics)
    created_at = [e.created_at for e in events]
    assert created_at == sorted(created_at, reverse=True)
    checkpoints = list(sdk.fine_tuning.jobs.checkpoints.list(job.id))
    assert checkpoints, "the sandbox writes a checkpoint per epoch"
    for checkpoint in checkpoints:
        assert checkpoint.fine_tuning_job_id == job.id and checkpoint.step_number > 0
        assert checkpoint.metrics.train_loss is not None


PAIR = {
    "input": {"messages": [{"role": "user", "content": "hi"}]},
    "preferred_output": [{"role": "assistant", "content": "hello, how can I help?"}],
    "non_preferred_output": [{"role": "assistant", "content": "what"}],
}


def test_dpo_with_openais_method_object(
    world: tuple[FunctionServer, Sandbox], training_file: str
) -> None:
    server, sandbox = world
    sdk = client(server)
    data = ("\n".join(json.dumps(PAIR) for _ in range(10)) + "\n").encode()
    pairs = sdk.files.create(file=("pairs.jsonl", data), purpose="fine-tune")
    assert pairs.model_extra["validation"]["format"] == "preference"
    auto = sdk.fine_tuning.jobs.create(
        model=MODEL,
        training_file=pairs.id,
        method={
            "type": "dpo",
            "dpo": {"hyperparameters": {"beta": "auto", "n_epochs": 2, "batch_size": "auto"}},
        },
    )
    for job in (auto, sdk.fine_tuning.jobs.retrieve(auto.id)):
        assert job.method is not None and job.method.type == "dpo" and job.method.dpo is not None
        used = job.method.dpo.hyperparameters
        assert used is not None
        assert (used.beta, used.n_epochs, used.batch_size, used.learning_rate_multiplier) == (
            0.1,
            2,
            4,
            1.0,
        )
    listed = next(j for j in sdk.fine_tuning.jobs.list() if j.id == auto.id)
    assert listed.method is not None and listed.method.type == "dpo"
    # The raw object matches the OpenAPI document's method (numbers only: "auto" would fail).
    import jsonschema

    headers = {"X-Api-Key": KEY}
    raw = requests.get(f"{server.url}/v1/fine_tuning/jobs/{auto.id}", headers=headers, timeout=30)
    document = requests.get(f"{server.url}/openapi.json", headers=headers, timeout=30).json()
    schema = document["components"]["schemas"]["OpenAIFineTuningJob"]["properties"]["method"]
    jsonschema.validate(raw.json()["method"], schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"type": "dpo", "dpo": {"hyperparameters": {"beta": "auto"}}}, schema)
    explicit = sdk.fine_tuning.jobs.create(
        model=MODEL,
        training_file=pairs.id,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.5}}},
    )
    assert explicit.method is not None and explicit.method.dpo is not None
    assert explicit.method.dpo.hyperparameters is not None
    assert explicit.method.dpo.hyperparameters.beta == 0.5
    baseten_job = explicit.model_extra["training_job_id"]
    entry = next(j for j in sandbox.jobs() if j["job"]["id"] == baseten_job)
    config = json.loads(entry["request"]["runtime"]["environment_variables"]["RUNTIME_CONFIG"])
    assert config["method"] == "dpo" and config["hyperparameters"]["dpo_beta"] == 0.5

    before = len(sandbox.jobs())
    with pytest.raises(openai.BadRequestError) as reinforcement:
        sdk.fine_tuning.jobs.create(
            model=MODEL,
            training_file=training_file,
            method={"type": "reinforcement", "reinforcement": {"grader": {"type": "string_check"}}},  # type: ignore[typeddict-item]
        )
    assert reinforcement.value.code == "unsupported_method"
    assert reinforcement.value.param == "method.type"
    refusals = [
        ({"type": "supervised"}, pairs.id, "training_file"),
        (
            {"type": "dpo", "dpo": {"hyperparameters": {"beta": 11}}},
            pairs.id,
            "method.dpo.hyperparameters.beta",
        ),
        (
            {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}},
            pairs.id,
            "method.dpo.hyperparameters.beta",
        ),
    ]
    for method, file_id, param in refusals:
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.fine_tuning.jobs.create(model=MODEL, training_file=file_id, method=method)  # type: ignore[arg-type]
        assert refused.value.param == param, refused.value.body
    with pytest.raises(openai.BadRequestError) as both:
        sdk.fine_tuning.jobs.create(
            model=MODEL,
            training_file=pairs.id,
            hyperparameters={"n_epochs": 2},
            method={"type": "dpo"},
        )
    assert both.value.param == "hyperparameters"
    assert len(sandbox.jobs()) == before  # nothing created at Baseten


def test_a_running_job_has_an_estimated_finish(
    world: tuple[FunctionServer, Sandbox], training_file: str
) -> None:
    server, sandbox = world
    sdk = client(server)
    job = sdk.fine_tuning.jobs.create(model=MODEL, training_file=training_file)
    sandbox.configure(step_seconds=1.0, running_steps=4)  # the job's clock runs: lines appear
    try:
        estimates = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            current = sdk.fine_tuning.jobs.retrieve(job.id)
            if current.status == "running" and current.estimated_finish is not None:
                estimates.append(current.estimated_finish)
            if current.status == "succeeded":
                break
            time.sleep(0.3)
    finally:
        sandbox.configure(step_seconds=None, running_steps=2)
    assert estimates, "no estimate while running"
    assert all(job.created_at <= e <= time.time() + 60 for e in estimates)


def test_auto_paging_lists_each_job_once_newest_first_and_filters_by_metadata(
    world: tuple[FunctionServer, Sandbox], training_file: str
) -> None:
    server, _ = world
    sdk = client(server)
    made = []
    for index in range(6):
        if index % 3 == 2:
            # Started through POST /jobs: indexed by the same submit path.
            answer = requests.post(
                f"{server.url}/jobs",
                json={"model_id": MODEL, "training_file": training_file},
                headers={"X-Api-Key": KEY},
                timeout=60,
            )
            assert answer.status_code == 201, answer.text
            made.append(answer.json()["training_job_id"])
        else:
            job = sdk.fine_tuning.jobs.create(
                model=MODEL,
                training_file=training_file,
                metadata={"batch": f"b{index % 2}", "kind": f"k{index // 3}"},
            )
            made.append(job.model_extra["training_job_id"])
        time.sleep(0.01)
    listed = list(sdk.fine_tuning.jobs.list(limit=2))
    ids = [job.id for job in listed]
    assert len(ids) == len(set(ids)), "each job exactly once"
    assert [j.created_at for j in listed] == sorted((j.created_at for j in listed), reverse=True)
    assert ids == sorted(ids), "ftjob ids sort newest first"
    baseten_ids = [job.model_extra["training_job_id"] for job in listed]
    assert baseten_ids[:6] == list(reversed(made))
    even = list(sdk.fine_tuning.jobs.list(limit=1, metadata={"batch": "b0"}))
    assert [j.model_extra["training_job_id"] for j in even] == [made[4], made[0]]
    assert all(j.metadata is not None and j.metadata["batch"] == "b0" for j in even)
    assert list(sdk.fine_tuning.jobs.list(metadata={"batch": "none"})) == []
    # Two filters: the pairs' listings joined (a bounded page), auto-paged by the SDK.
    both = sdk.fine_tuning.jobs.list(limit=1, metadata={"batch": "b1", "kind": "k0"})
    assert [j.model_extra["training_job_id"] for j in both] == [made[1]]
    by_kind = [
        j.model_extra["training_job_id"]
        for pair in ({"batch": "b0", "kind": "k1"}, {"batch": "b0", "kind": "k0"})
        for j in sdk.fine_tuning.jobs.list(limit=1, metadata=pair)
    ]
    assert by_kind == [made[4], made[0]]
    assert list(sdk.fine_tuning.jobs.list(metadata={"batch": "b1", "kind": "k9"})) == []
    many = {f"k{i}": "v" for i in range(17)}  # more than a job can carry: nothing read
    assert list(sdk.fine_tuning.jobs.list(metadata=many)) == []


def test_cancel(world: tuple[FunctionServer, Sandbox], training_file: str) -> None:
    server, _ = world
    sdk = client(server)
    job = sdk.fine_tuning.jobs.create(model=MODEL, training_file=training_file)
    cancelled = sdk.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    assert sdk.fine_tuning.jobs.list_events(job.id).data[0].message == "The job was cancelled"


def _serving_job(server: FunctionServer, sandbox: Sandbox, training_file: str) -> str:
    sdk = client(server)
    job = sdk.fine_tuning.jobs.create(model=MODEL, training_file=training_file, suffix="chatty")
    project_id, job_id = job.model_extra["training_project_id"], job.model_extra["training_job_id"]
    sandbox.advance(job_id, steps=6)
    deployed = requests.post(
        f"{server.url}/jobs/{project_id}/{job_id}/deployments",
        json={"model_name": "chatty"},
        headers={"X-Api-Key": KEY},
        timeout=60,
    )
    assert deployed.status_code == 202, deployed.text
    assert sdk.fine_tuning.jobs.retrieve(job.id).fine_tuned_model is None  # still building
    requests.post(
        f"{sandbox.url}/_sandbox/deployments/{deployed.json()['deployment_id']}/status",
        json={"status": "ACTIVE"},
        timeout=10,
    ).raise_for_status()
    model = sdk.fine_tuning.jobs.retrieve(job.id).fine_tuned_model
    assert model is not None and model.startswith("ft:chatty:")
    return model


def test_chat_with_the_fine_tuned_model_streamed_and_not(
    world: tuple[FunctionServer, Sandbox], training_file: str
) -> None:
    server, sandbox = world
    sdk = client(server)
    model = _serving_job(server, sandbox, training_file)
    assert model in [m.id for m in sdk.models.list()]
    answer = sdk.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "how are you"}]
    )
    text = answer.choices[0].message.content or ""
    assert "You said: how are you" in text
    chunks = list(
        sdk.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "how are you"}], stream=True
        )
    )
    assert len(chunks) > 3
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    # Streamed as it arrives: with 150 ms between chunks the first one comes long before the last.
    requests.post(
        f"{sandbox.url}/_sandbox/deployments/config", json={"token_ms": 150}, timeout=10
    ).raise_for_status()
    try:
        started = time.perf_counter()
        stream = sdk.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "one two"}], stream=True
        )
        arrivals = [time.perf_counter() - started for _ in stream]
    finally:
        requests.post(
            f"{sandbox.url}/_sandbox/deployments/config", json={"token_ms": 0}, timeout=10
        ).raise_for_status()
    assert arrivals[-1] - arrivals[0] > 0.5, arrivals
    # Deactivated: the model is gone from the list and a chat is a 404.
    model_id, deployment_id = model.split(":")[-2:]
    requests.post(
        f"{server.url}/deployments/{model_id}/{deployment_id}/deactivate",
        headers={"X-Api-Key": KEY},
        timeout=60,
    ).raise_for_status()
    assert model not in [m.id for m in sdk.models.list()]
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])


def test_deploy_on_completion_names_the_fine_tuned_model_after_the_suffix(
    world: tuple[FunctionServer, Sandbox],
    secret_manager: FakeSecretManager,
    training_file: str,
    tmp_path: Path,
) -> None:
    server, sandbox = world
    sdk = client(server)
    job = sdk.fine_tuning.jobs.create(
        model=MODEL,
        training_file=training_file,
        suffix="auto-bot",
        extra_body={"deploy": {"on_completion": True}},
    )
    baseten_job = job.model_extra["training_job_id"]
    sandbox.advance(baseten_job, steps=6)
    env = function_env(sandbox, secret_manager, tmp_path, POLL_STATE_FILE=str(tmp_path / "s.json"))
    with FunctionServer("poll_jobs", env) as poller:
        report = requests.post(poller.url, json={}, timeout=60).json()
    assert report["deployments_checked"] >= 1 and report["deployments_failed"] == 0, report
    [deployment] = [
        d
        for d in sandbox.state.deployments.all()["deployments"]
        if d["name"].startswith(f"ft.{job.model_extra['training_project_id']}.{baseten_job}.")
    ]
    sandbox.state.deployments.force_status(deployment["id"], {"status": "ACTIVE"})
    model = sdk.fine_tuning.jobs.retrieve(job.id).fine_tuned_model
    assert model == f"ft:auto-bot:{deployment['model_id']}:{deployment['id']}"
    listed = next(j for j in sdk.fine_tuning.jobs.list() if j.id == job.id)
    assert listed.fine_tuned_model == model and listed.status == "succeeded"
    answer = sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert "auto-bot" in (answer.choices[0].message.content or "")


def test_errors_raise_the_sdks_own_classes(
    world: tuple[FunctionServer, Sandbox], training_file: str
) -> None:
    server, sandbox = world
    sdk = client(server)
    job = next(iter(sdk.fine_tuning.jobs.list(limit=1)))
    for bad in ("ftjob-nope", "ftjob-000000000000-abc-def", "x" * 150):
        with pytest.raises(openai.NotFoundError) as caught:
            sdk.fine_tuning.jobs.retrieve(bad)
        assert bad not in caught.value.response.text  # never echoed
        body = caught.value.body
        assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve("file-nope")
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(
            model="ft:x:abc:def", messages=[{"role": "user", "content": "hi"}]
        )
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as bad_method:
        sdk.fine_tuning.jobs.create(
            model=MODEL, training_file=training_file, method={"type": "dpo"}
        )
    # dpo is a method now: it needs a preference file, and this one is chat.
    assert bad_method.value.param == "training_file"
    with pytest.raises(openai.BadRequestError):
        sdk.fine_tuning.jobs.create(model=MODEL, training_file="file-000000000000000000000000")
    with pytest.raises(openai.BadRequestError):
        sdk.fine_tuning.jobs.create(
            model=MODEL, training_file=training_file, metadata={f"k{i}": "v" for i in range(17)}
        )
    # Baseten failing is the SDK's InternalServerError (502 upstream_error).
    sandbox.add_fault(path="^v1/training_projects/.*/jobs/[^/]+$", method="GET", status=500)
    try:
        with pytest.raises(openai.InternalServerError) as failed:
            sdk.fine_tuning.jobs.retrieve(job.id)
        assert failed.value.status_code == 502
    finally:
        sandbox.clear_faults()
    with pytest.raises(openai.AuthenticationError):
        client(server, "sk-wrong").fine_tuning.jobs.list()
    assert (
        requests.get(f"{server.url}/v1/models", headers={"X-Api-Key": KEY}, timeout=10).status_code
        == 200
    )
    # Baseten's 429 (after our own retries) reaches the caller as the SDK's RateLimitError.
    sandbox.add_fault(
        path="^v1/training_projects/.*/jobs/[^/]+$", method="GET", status=429, count=20
    )
    try:
        with pytest.raises(openai.RateLimitError):
            sdk.fine_tuning.jobs.retrieve(job.id)
    finally:
        sandbox.clear_faults()


def test_chat_rate_limited_by_baseten_is_a_rate_limit_error(
    world: tuple[FunctionServer, Sandbox], training_file: str
) -> None:
    server, sandbox = world
    model = _serving_job(server, sandbox, training_file)
    sandbox.add_fault(path="^model-.*/chat/completions$", status=429, retry_after=0, count=10)
    try:
        with pytest.raises(openai.RateLimitError):
            client(server).chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}]
            )
    finally:
        sandbox.clear_faults()


def _big_file(path: Path, size: int) -> Path:
    """Valid JSONL of at least ``size`` bytes (whole lines)."""
    line = (json.dumps({"prompt": "p" * 400, "completion": "c" * 600}) + "\n").encode()
    with path.open("wb") as out:
        out.write(line * (size // len(line) + 1))
    return path


def test_upload_file_chunked_40_mib_matches_the_same_file_through_files(
    world: tuple[FunctionServer, Sandbox], tmp_path: Path
) -> None:
    server, _ = world
    sdk = client(server)
    path = _big_file(tmp_path / "big.jsonl", 40 * 1024 * 1024)
    size = path.stat().st_size
    upload = sdk.uploads.upload_file_chunked(
        file=path, mime_type="application/jsonl", purpose="fine-tune", part_size=8 * 1024 * 1024
    )
    assert upload.status == "completed" and upload.file is not None
    via_uploads = sdk.files.retrieve(upload.file.id)
    # The same bytes through /files' large-file path (JSON, PUT upload_url, complete).
    headers = {"X-Api-Key": KEY}
    opened = requests.post(
        f"{server.url}/files",
        json={"filename": "big.jsonl", "bytes": size, "purpose": "fine-tune"},
        headers=headers,
        timeout=30,
    ).json()
    with path.open("rb") as source:
        requests.put(
            opened["upload_url"], data=source, headers=headers, timeout=120
        ).raise_for_status()
    via_files = requests.post(
        f"{server.url}/files/{opened['id']}/complete", headers=headers, timeout=120
    ).json()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert via_uploads.status == via_files["status"] == "processed"
    assert via_uploads.model_extra["sha256"] == via_files["sha256"] == digest
    assert via_uploads.model_extra["validation"] == via_files["validation"]
    assert via_uploads.bytes == size


def test_upload_errors(world: tuple[FunctionServer, Sandbox]) -> None:
    server, _ = world
    sdk = client(server)
    upload = sdk.uploads.create(
        bytes=len(DATA), filename="x.jsonl", mime_type="application/jsonl", purpose="fine-tune"
    )
    part = sdk.uploads.parts.create(upload.id, data=DATA[:10])
    with pytest.raises(openai.BadRequestError):  # 10 of the bytes announced
        sdk.uploads.complete(upload.id, part_ids=[part.id])
    assert sdk.uploads.cancel(upload.id).status == "cancelled"
    with pytest.raises(openai.ConflictError):
        sdk.uploads.parts.create(upload.id, data=DATA)
    with pytest.raises(openai.NotFoundError):
        sdk.uploads.cancel("upload_nope")


def _stamp(job: Any) -> int:
    return int(job.created_at)


def test_the_openapi_document_covers_every_v1_route(world: tuple[FunctionServer, Sandbox]) -> None:
    import re

    from finetune_api.edge.openai_routes import V1_ROUTES

    server, _ = world
    document = requests.get(
        f"{server.url}/openapi.json", headers={"X-Api-Key": KEY}, timeout=30
    ).json()

    def shape(path: str) -> str:
        return re.sub(r"\{[^}]+\}|<[^>]+>", "{}", path)

    documented = {
        (shape(path), method.upper()) for path, item in document["paths"].items() for method in item
    }
    for rule in V1_ROUTES.iter_rules():
        for method in rule.methods or ():
            if method in ("HEAD", "OPTIONS"):
                continue
            assert (shape(rule.rule), method) in documented, (rule.rule, method)
    assert "Bearer" in document["components"]["securitySchemes"]
