"""Safety of one's own data (issue 27): who may write a File's bytes, how large a File
may be, when it may be deleted, what a part may hold, and the check that goes on after
the answer. train_http under functions-framework with the local store (FILES_DIR),
the sandbox for Baseten, the real ``openai`` SDK for ``/v1``.

Every refusal shows nothing was created at Baseten and nothing stored was lost.
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
from tests.conftest import function_env

MODEL = "Qwen/Qwen3-0.6B"
LINE = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hey"}]}
GOOD = (json.dumps(LINE) + "\n").encode() * 30
KEY = "safety-key-0123456789"


def files_root(server: FunctionServer) -> Path:
    return Path(server.env["FILES_DIR"]) / "files"


def stored(server: FunctionServer) -> dict[str, str]:
    """Every stored object under files/ (data, meta, parts): name -> sha256 of its bytes."""
    root = files_root(server)
    if not root.exists():
        return {}
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def open_large(server: FunctionServer, size: int, **headers: str) -> requests.Response:
    return requests.post(
        f"{server.url}/files",
        json={"filename": "big.jsonl", "bytes": size, "purpose": "fine-tune"},
        headers=headers,
        timeout=10,
    )


def upload(server: FunctionServer, data: bytes = GOOD) -> dict[str, Any]:
    response = requests.post(
        f"{server.url}/files",
        files={"file": ("chats.jsonl", data, "application/jsonl")},
        data={"purpose": "fine-tune"},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


# -- item 4: the upload session goes only to its opener; bytes once there are final ----------


def test_the_upload_url_is_only_in_the_opening_answer_and_writes_once(
    train_http: FunctionServer, sandbox: Sandbox
) -> None:
    opened = open_large(train_http, len(GOOD))
    assert opened.status_code == 201
    file = opened.json()
    url = file["upload_url"]
    assert "token=" in url
    # Nobody else learns it: not from a GET, not from the list.
    got = requests.get(f"{train_http.url}/files/{file['id']}", timeout=10).json()
    assert "upload_url" not in got and got["status"] == "pending_upload"
    listed = requests.get(f"{train_http.url}/files", timeout=10).json()["data"]
    assert all("upload_url" not in item for item in listed)
    assert file["id"] in [item["id"] for item in listed]
    # Without the token (or with another) the session is not there; nothing is written.
    before = stored(train_http)
    bare = url.split("?")[0]
    assert requests.put(bare, data=GOOD, timeout=10).status_code == 404
    assert requests.put(bare + "?token=guess", data=GOOD, timeout=10).status_code == 404
    assert stored(train_http) == before
    # The opener sends the bytes once; a second PUT (other bytes, same size) is refused.
    assert requests.put(url, data=GOOD, timeout=10).status_code == 200
    after_first = stored(train_http)
    other = GOOD.replace(b"hey", b"HEY")
    again = requests.put(url, data=other, timeout=10)
    assert again.status_code == 409 and "arrived already" in again.json()["error"]["message"]
    assert stored(train_http) == after_first
    done = requests.post(f"{train_http.url}/files/{file['id']}/complete", timeout=30).json()
    assert done["status"] == "processed" and done["sha256"] == hashlib.sha256(GOOD).hexdigest()
    # Once complete, never replaced.
    late = requests.put(url, data=other, timeout=10)
    assert late.status_code == 409 and "its bytes are final" in late.json()["error"]["message"]
    assert stored(train_http) == after_first | {
        f"meta/{file['id']}.json": stored(train_http)[f"meta/{file['id']}.json"]
    }
    data = files_root(train_http) / "data" / f"{file['id']}.jsonl"
    assert data.read_bytes() == GOOD
    assert sandbox.jobs() == []


# -- item 7: MAX_FILE_BYTES -------------------------------------------------------------------


def test_a_file_larger_than_max_file_bytes_is_413_and_nothing_is_kept(
    train_http: FunctionServer, sandbox: Sandbox
) -> None:
    before = stored(train_http)
    for size in (10**15, 8 * 1024**3 + 1):
        refused = open_large(train_http, size)
        assert refused.status_code == 413, refused.text
        assert "MAX_FILE_BYTES" in refused.json()["error"]["message"]
        v1 = requests.post(
            f"{train_http.url}/v1/uploads",
            json={"filename": "x.jsonl", "bytes": size, "purpose": "fine-tune"},
            timeout=10,
        )
        assert v1.status_code == 413 and "MAX_FILE_BYTES" in v1.json()["error"]["message"]
    assert open_large(train_http, 8 * 1024**3).status_code == 201  # the limit itself is fine
    assert {k for k in stored(train_http) if not k.startswith("meta/")} == {
        k for k in before if not k.startswith("meta/")
    }
    assert sandbox.jobs() == []


def test_a_larger_object_at_complete_is_413_and_a_larger_upload_too(tmp_path: Path) -> None:
    """The store holds more than MAX_FILE_BYTES at complete (e.g. the limit was lowered
    while the upload ran): 413 and the File is gone. A multipart upload too."""
    import io

    from finetune_api.core.errors import PayloadTooLargeError
    from finetune_api.files.service import FileService
    from finetune_api.files.stores import LocalFileStore

    store = LocalFileStore(tmp_path)
    wide = FileService(store, max_line_bytes=1 << 20, url_ttl_seconds=60, max_file_bytes=10**6)
    opened = wide.start_upload("a.jsonl", len(GOOD), "fine-tune", session_base="http://x/")
    store.write_data(opened["id"], io.BytesIO(GOOD))
    narrow = FileService(store, max_line_bytes=1 << 20, url_ttl_seconds=60, max_file_bytes=100)
    with pytest.raises(PayloadTooLargeError, match="MAX_FILE_BYTES"):
        narrow.complete(opened["id"])
    assert store.read_meta(opened["id"]) is None and store.data_size(opened["id"]) is None
    with pytest.raises(PayloadTooLargeError, match="MAX_FILE_BYTES"):
        narrow.upload("b.jsonl", io.BytesIO(GOOD), "fine-tune")
    assert store.list_meta(None, 10) == []


# -- item 6: a File a job still needs is not deleted ------------------------------------------


def test_deleting_a_file_a_running_job_needs_is_409_naming_the_job(
    train_http: FunctionServer, sandbox: Sandbox
) -> None:
    file = upload(train_http)
    job = requests.post(
        f"{train_http.url}/jobs", json={"training_file": file["id"], "model_id": MODEL}, timeout=60
    )
    assert job.status_code == 201, job.text
    job_id = job.json()["training_job_id"]
    before = stored(train_http)
    refused = requests.delete(f"{train_http.url}/files/{file['id']}", timeout=30)
    assert refused.status_code == 409, refused.text
    message = refused.json()["error"]["message"]
    assert job_id in message and "ftjob-" in message
    assert stored(train_http) == before  # nothing lost
    assert requests.get(f"{train_http.url}/files/{file['id']}", timeout=10).status_code == 200
    for _ in range(20):
        states = sandbox.advance(job_id)
        if states and states[0]["current_status"] == "TRAINING_JOB_COMPLETED":
            break
    gone = requests.delete(f"{train_http.url}/files/{file['id']}", timeout=30)
    assert gone.status_code == 200 and gone.json()["deleted"] is True
    assert not (files_root(train_http) / "data" / f"{file['id']}.jsonl").exists()
    assert len(sandbox.jobs()) == 1  # the one job, nothing else


# -- item 11: the content of a File whose bytes are not final ---------------------------------


def test_content_of_a_pending_file_is_a_409_in_openais_shape(train_http: FunctionServer) -> None:
    file = open_large(train_http, len(GOOD)).json()
    response = requests.get(f"{train_http.url}/v1/files/{file['id']}/content", timeout=10)
    assert response.status_code == 409
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert "pending_upload" in error["message"]


# -- item 10: parts ---------------------------------------------------------------------------


def _parts(server: FunctionServer, upload_id: str) -> dict[str, int]:
    folder = files_root(server) / "uploads" / upload_id
    return {p.name: p.stat().st_size for p in folder.iterdir()} if folder.exists() else {}


def _part(server: FunctionServer, upload_id: str, data: bytes) -> requests.Response:
    return requests.post(
        f"{server.url}/v1/uploads/{upload_id}/parts",
        files={"data": ("blob", data, "application/octet-stream")},
        timeout=60,
    )


def test_a_refused_part_is_not_kept_and_parts_stop_at_the_announced_bytes(
    train_http: FunctionServer,
) -> None:
    small = requests.post(
        f"{train_http.url}/v1/uploads",
        json={"filename": "x.jsonl", "bytes": 100, "purpose": "fine-tune"},
        timeout=10,
    ).json()
    too_big = _part(train_http, small["id"], b"x" * 150)
    assert too_big.status_code == 413, too_big.text
    assert _parts(train_http, small["id"]) == {}
    first = _part(train_http, small["id"], b"x" * 60)
    assert first.status_code == 200
    past = _part(train_http, small["id"], b"y" * 60)
    assert past.status_code == 413 and "announced" in past.json()["error"]["message"]
    assert _parts(train_http, small["id"]) == {first.json()["id"]: 60}
    # A part over MAX_UPLOAD_BYTES (32 MiB) but within the route's multipart slack.
    large = requests.post(
        f"{train_http.url}/v1/uploads",
        json={"filename": "x.jsonl", "bytes": 40 * 1024 * 1024, "purpose": "fine-tune"},
        timeout=10,
    ).json()
    over = _part(train_http, large["id"], b"z" * (32 * 1024 * 1024 + 1000))
    assert over.status_code == 413, over.text
    assert _parts(train_http, large["id"]) == {}


# -- item 7: a check that would outlast the request -------------------------------------------


@pytest.fixture(scope="module")
def no_wait(
    sandbox_server: Sandbox,
    secret_manager: FakeSecretManager,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[FunctionServer]:
    """train_http whose complete never waits for the check (FILE_CHECK_WAIT_SECONDS=0)."""
    tmp = tmp_path_factory.mktemp("no-wait-tmp")
    env = function_env(
        sandbox_server, secret_manager, tmp, API_KEYS=KEY, FILE_CHECK_WAIT_SECONDS="0"
    )
    with FunctionServer("train_http", env, threads=8) as server:
        yield server
    assert list(tmp.iterdir()) == []


def _big(lines: int = 60_000) -> bytes:
    return (json.dumps(LINE) + "\n").encode() * lines


def test_complete_answers_202_validating_and_the_check_finishes_alone(
    no_wait: FunctionServer, sandbox: Sandbox
) -> None:
    headers = {"X-Api-Key": KEY}
    data = _big()
    opened = open_large(no_wait, len(data), **headers).json()
    assert requests.put(opened["upload_url"], data=data, headers=headers, timeout=30).ok
    answer = requests.post(
        f"{no_wait.url}/files/{opened['id']}/complete", headers=headers, timeout=30
    )
    assert answer.status_code == 202, answer.text
    assert answer.json()["status"] == "validating" and answer.json()["validation"] is None
    # A job naming it now is refused, and nothing is created.
    early = requests.post(
        f"{no_wait.url}/jobs",
        json={"training_file": opened["id"], "model_id": MODEL},
        headers=headers,
        timeout=30,
    )
    if early.status_code == 400:  # (the check may already be over on a fast machine)
        assert "still being checked" in early.json()["error"]["message"]
        assert sandbox.jobs() == []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        got = requests.get(f"{no_wait.url}/files/{opened['id']}", headers=headers, timeout=10)
        if got.json()["status"] != "validating":
            break
        time.sleep(0.1)
    assert got.json()["status"] == "processed"
    assert got.json()["validation"]["examples"] == 60_000
    assert got.json()["sha256"] == hashlib.sha256(data).hexdigest()


def test_the_sdks_wait_for_processing_after_a_chunked_upload(
    no_wait: FunctionServer, tmp_path: Path
) -> None:
    sdk = openai.OpenAI(base_url=f"{no_wait.url}/v1", api_key=KEY, max_retries=0, timeout=60)
    path = tmp_path / "chats.jsonl"
    path.write_bytes(_big())
    upload = sdk.uploads.upload_file_chunked(
        file=path, mime_type="application/jsonl", purpose="fine-tune", part_size=1024 * 1024
    )
    assert upload.status == "completed" and upload.file is not None
    assert upload.file.status == "validating"
    done = sdk.files.wait_for_processing(upload.file.id, poll_interval=0.1, max_wait_seconds=60)
    assert done.status == "processed" and done.model_extra["validation"]["examples"] == 60_000


def test_a_check_whose_instance_died_is_taken_over(no_wait: FunctionServer) -> None:
    """What a dead instance leaves: the File ``validating`` with a lease in the past."""
    headers = {"X-Api-Key": KEY}
    opened = open_large(no_wait, len(GOOD), **headers).json()
    assert requests.put(opened["upload_url"], data=GOOD, headers=headers, timeout=30).ok
    meta = files_root(no_wait) / "meta" / f"{opened['id']}.json"
    record = json.loads(meta.read_text())
    record.update(status="validating", _lease_until=int(time.time()) - 1)
    meta.write_text(json.dumps(record))
    first = requests.get(f"{no_wait.url}/files/{opened['id']}", headers=headers, timeout=10)
    assert first.json()["status"] in ("validating", "processed")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        got = requests.get(f"{no_wait.url}/files/{opened['id']}", headers=headers, timeout=10)
        if got.json()["status"] == "processed":
            break
        time.sleep(0.1)
    assert got.json()["status"] == "processed" and got.json()["validation"]["examples"] == 30
    # A live lease is left alone: nobody takes over a check still within its lease.
    record.update(status="validating", _lease_until=int(time.time()) + 3600)
    record.pop("_version", None)
    meta.write_text(json.dumps({**record, "_version": 99}))
    time.sleep(0.3)
    held = requests.get(f"{no_wait.url}/files/{opened['id']}", headers=headers, timeout=10)
    assert held.json()["status"] == "validating"
