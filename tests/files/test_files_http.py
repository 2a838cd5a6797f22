"""/files and training_file end to end: train_http under functions-framework, the sandbox, moto S3.

With no FILES_BUCKET the files live in a local folder (FILES_DIR): the embedded
default that ``make run`` uses. Cloud Storage is covered in test_files_gcs.py.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import requests

from finetune_api.files.schemas import DryRun, File
from loopback.functions import FunctionServer
from loopback.servers import LocalS3
from sandbox import Sandbox
from tests.conftest import API_KEY

MODEL = "Qwen/Qwen3-0.6B"
CHAT = {
    "messages": [
        {"role": "system", "content": "You are a support bot."},
        {"role": "user", "content": "My order is late."},
        {"role": "assistant", "content": "Sorry! Let me check the tracking number."},
    ]
}
GOOD = (json.dumps(CHAT) + "\n").encode() * 12


def upload(server: FunctionServer, data: bytes, name: str = "chats.jsonl", **form: str) -> Any:
    return requests.post(
        f"{server.url}/files",
        files={"file": (name, data, "application/jsonl")},
        data={"purpose": "fine-tune", **form},
        timeout=60,
    )


def submit(server: FunctionServer, body: dict[str, Any]) -> requests.Response:
    return requests.post(f"{server.url}/jobs", json=body, timeout=60)


def files_dir(server: FunctionServer) -> Path:
    return Path(server.env["FILES_DIR"])


def stored_files(server: FunctionServer) -> set[str]:
    data = files_dir(server) / "files" / "data"
    return {p.name for p in data.iterdir()} if data.exists() else set()


def test_an_upload_is_checked_stored_and_listed(train_http: FunctionServer) -> None:
    response = upload(train_http, GOOD)
    assert response.status_code == 201, response.text
    file = response.json()
    assert file["id"].startswith("file-") and file["object"] == "file"
    assert file["status"] == "processed" and file["purpose"] == "fine-tune"
    assert file["bytes"] == len(GOOD) and file["sha256"] == hashlib.sha256(GOOD).hexdigest()
    assert file["validation"] == {
        "format": "chat",
        "examples": 12,
        "invalid_examples": 0,
        "errors": [],
    }
    assert "upload_url" not in file
    assert File.model_validate(file).model_dump(exclude_none=True) == {
        k: v for k, v in file.items() if v is not None
    }
    assert requests.get(f"{train_http.url}/files/{file['id']}", timeout=10).json() == file
    stored = files_dir(train_http) / "files" / "data" / f"{file['id']}.jsonl"
    assert stored.read_bytes() == GOOD


def test_files_page_newest_first_with_after(train_http: FunctionServer) -> None:
    ids = [upload(train_http, GOOD, f"f{i}.jsonl").json()["id"] for i in range(5)]
    seen: list[str] = []
    after = None
    while True:
        params = {"limit": 2, **({"after": after} if after else {})}
        page = requests.get(f"{train_http.url}/files", params=params, timeout=10).json()
        seen += [f["id"] for f in page["data"]]
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
    assert [i for i in seen if i in ids] == ids[::-1]
    assert len(seen) == len(set(seen))


def test_delete_removes_record_and_bytes(train_http: FunctionServer) -> None:
    file_id = upload(train_http, GOOD).json()["id"]
    gone = requests.delete(f"{train_http.url}/files/{file_id}", timeout=10)
    assert gone.json() == {"id": file_id, "object": "file", "deleted": True}
    assert requests.get(f"{train_http.url}/files/{file_id}", timeout=10).status_code == 404
    assert f"{file_id}.jsonl" not in stored_files(train_http)


def test_same_bytes_twice_are_two_files_with_two_copies(train_http: FunctionServer) -> None:
    first, second = (upload(train_http, GOOD).json() for _ in range(2))
    assert first["id"] != second["id"] and first["sha256"] == second["sha256"]
    requests.delete(f"{train_http.url}/files/{first['id']}", timeout=10)
    assert requests.get(f"{train_http.url}/files/{second['id']}", timeout=10).status_code == 200
    assert f"{second['id']}.jsonl" in stored_files(train_http)


def test_a_bad_file_is_an_error_file_and_a_job_naming_it_is_refused(
    train_http: FunctionServer, sandbox: Sandbox
) -> None:
    file = upload(train_http, b"question,answer\nhi,hello\n", "faq.csv").json()
    assert file["status"] == "error"
    assert file["validation"]["errors"][1:] == [
        {"line": 1, "reason": "not valid JSON"},
        {"line": 2, "reason": "not valid JSON"},
    ]
    refused = submit(train_http, {"training_file": file["id"], "model_id": MODEL})
    assert refused.status_code == 400
    assert refused.json()["error"]["details"][0]["location"] == "training_file"
    assert "failed its check" in refused.json()["error"]["message"]
    assert sandbox.jobs() == []


def test_an_upload_over_max_upload_bytes_is_413_naming_the_large_file_path(
    sandbox: Sandbox, secret_manager: Any, function_tmp: Path, tmp_path: Path
) -> None:
    from tests.conftest import function_env

    env = function_env(
        sandbox, secret_manager, function_tmp, MAX_UPLOAD_BYTES="4096", FILES_DIR=str(tmp_path)
    )
    with FunctionServer("train_http", env) as server:
        response = upload(server, GOOD * 20)
        assert response.status_code == 413
        message = response.json()["error"]["message"]
        assert "MAX_UPLOAD_BYTES" in message and "POST /files/{id}/complete" in message
        assert stored_files(server) == set()
        assert requests.get(f"{server.url}/files", timeout=10).json()["data"] == []
        assert sandbox.jobs() == []


def test_the_large_file_path_on_the_local_store(train_http: FunctionServer) -> None:
    opened = requests.post(
        f"{train_http.url}/files",
        json={"filename": "big.jsonl", "bytes": len(GOOD), "purpose": "fine-tune"},
        timeout=10,
    )
    assert opened.status_code == 201
    file = opened.json()
    assert file["status"] == "pending_upload" and file["validation"] is None
    complete = f"{train_http.url}/files/{file['id']}/complete"
    early = requests.post(complete, timeout=10)
    assert early.status_code == 409 and "no complete upload" in early.json()["error"]["message"]
    assert requests.get(f"{train_http.url}/files/{file['id']}", timeout=10).json()["status"] == (
        "pending_upload"
    )
    partial = requests.put(file["upload_url"], data=GOOD[:100], timeout=10)
    assert partial.status_code == 400
    assert requests.put(file["upload_url"], data=GOOD, timeout=10).status_code == 200
    done = requests.post(complete, timeout=10).json()
    assert done["status"] == "processed" and done["validation"]["examples"] == 12
    assert done["sha256"] == hashlib.sha256(GOOD).hexdigest() and "upload_url" not in done
    assert requests.post(complete, timeout=10).json() == done  # completing twice: same File


def test_a_job_naming_a_pending_or_unknown_file_is_refused(
    train_http: FunctionServer, sandbox: Sandbox
) -> None:
    pending = requests.post(
        f"{train_http.url}/files",
        json={"filename": "p.jsonl", "bytes": 10, "purpose": "fine-tune"},
        timeout=10,
    ).json()
    cases = {
        pending["id"]: "still pending_upload",
        "file-000000000000000000000000": "no such File",
        "file-nope": "must be a File id",
        "gs://": "malformed gs:// URI",
        "gs://Bad_Bucket/x.jsonl": "malformed gs:// URI",
    }
    for ref, reason in cases.items():
        refused = submit(train_http, {"training_file": ref, "model_id": MODEL})
        assert refused.status_code == 400, ref
        assert reason in refused.json()["error"]["message"], ref
        refused = submit(
            train_http, {"dataset_id": "a/b", "validation_file": ref, "model_id": MODEL}
        )
        assert refused.json()["error"]["details"][0]["location"] == "validation_file", ref
    both = submit(
        train_http, {"dataset_id": "a/b", "training_file": pending["id"], "model_id": MODEL}
    )
    assert both.status_code == 400
    assert "exactly one of dataset_id and training_file" in both.text
    assert sandbox.jobs() == []


def test_bad_upload_requests(train_http: FunctionServer, sandbox: Sandbox) -> None:
    url = f"{train_http.url}/files"
    before = stored_files(train_http)
    no_file = requests.post(
        url, files={"other": ("x", b"{}")}, data={"purpose": "fine-tune"}, timeout=10
    )
    assert no_file.status_code == 400 and "'file'" in no_file.json()["error"]["message"]
    wrong_purpose = upload(train_http, GOOD, purpose="batch")
    assert wrong_purpose.status_code == 400
    assert wrong_purpose.json()["error"]["details"] == [
        {"location": "purpose", "reason": "must be fine-tune"}
    ]
    text = requests.post(url, data=b"hello", headers={"Content-Type": "text/plain"}, timeout=10)
    assert text.status_code == 415
    for body in ({"filename": "x", "bytes": 0, "purpose": "fine-tune"}, {"filename": "x"}):
        assert requests.post(url, json=body, timeout=10).status_code == 400
    extra = requests.post(
        url, json={"filename": "x", "bytes": 1, "purpose": "fine-tune", "y": 1}, timeout=10
    )
    assert extra.status_code == 400
    assert requests.get(f"{url}?limit=0", timeout=10).status_code == 400
    assert requests.get(f"{url}?after=nope", timeout=10).status_code == 400
    assert stored_files(train_http) == before  # no bytes kept for any refused upload
    assert sandbox.jobs() == []


def test_the_job_gets_exactly_the_checked_bytes(
    train_http: FunctionServer, sandbox: Sandbox, s3: LocalS3
) -> None:
    train = upload(train_http, GOOD).json()
    held_out = (json.dumps({"messages": CHAT["messages"][1:]}) + "\n").encode() * 3
    valid = upload(train_http, held_out, "eval.jsonl").json()
    body = {"training_file": train["id"], "validation_file": valid["id"], "model_id": MODEL}
    response = submit(train_http, body)
    assert response.status_code == 201, response.text
    [recorded] = sandbox.jobs()
    env = recorded["request"]["runtime"]["environment_variables"]
    assert "DATASET_ID" not in env
    [artifact] = recorded["request"]["runtime"]["artifacts"]
    blob = s3.client().get_object(Bucket=artifact["s3_bucket"], Key=artifact["s3_key"])
    with tarfile.open(fileobj=io.BytesIO(blob["Body"].read())) as archive:
        staged = json.load(archive.extractfile("runtime_config.json"))  # type: ignore[arg-type]
    assert staged["dataset_id"] is None
    assert json.loads(env["RUNTIME_CONFIG"])["training_file"] == staged["training_file"]
    for field, file, data in (("training_file", train, GOOD), ("validation_file", valid, held_out)):
        handed = staged[field]
        assert handed["source"] == file["id"] and handed["sha256"] == file["sha256"]
        assert handed["format"] == "chat" and handed["bytes"] == len(data)
        assert handed["url"].startswith("file://")
        assert Path(handed["url"].removeprefix("file://")).read_bytes() == data
    assert API_KEY not in train_http.output()


def test_a_dry_run_checks_and_estimates_and_creates_nothing(
    train_http: FunctionServer, sandbox: Sandbox
) -> None:
    file = upload(train_http, GOOD).json()
    body = {
        "training_file": file["id"],
        "model_id": MODEL,
        "hyperparameters": {"num_epochs": 3, "max_seq_length": 16},
        "dry_run": True,
    }
    response = submit(train_http, body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["dry_run"] is True
    DryRun.model_validate(answer)  # the answer is what /openapi.json says
    assert answer["request"]["training_file"]["sha256"] == file["sha256"]
    assert "url" not in answer["request"]["training_file"]
    estimate = answer["estimate"]
    assert estimate["examples"] == 12
    assert estimate["trained_tokens"] == estimate["tokens"] * 3
    assert estimate["examples_over_max_seq_length"] == 12  # every chat is > 16 tokens
    assert estimate["gpu_hours"] is None and estimate["cost_usd"] is None
    assert estimate["cost_basis"]
    assert sandbox.jobs() == []


_ANSWER = {"role": "assistant", "content": "It is sunny."}
_TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
_TOOL_ANSWER = {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}


def _caller(name: str, arguments: str) -> dict[str, Any]:
    call = {"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}
    return {"role": "assistant", "content": None, "tool_calls": [call]}


def _chat(*messages: Any, **extra: Any) -> bytes:
    return json.dumps({"messages": list(messages), **extra}).encode() + b"\n"


def _pair(**changes: Any) -> bytes:
    pair = {
        "input": {"messages": [{"role": "user", "content": "Weather?"}]},
        "preferred_output": [_ANSWER],
        "non_preferred_output": [{"role": "assistant", "content": "No idea."}],
    }
    return json.dumps({**pair, **changes}).encode() + b"\n"


BAD_FILES = {
    "latin-1.jsonl": ('{"text": "caf\u00e9"}\n'.encode("latin-1"), (1, "not valid UTF-8")),
    "chats.jsonl.gz": (
        gzip.compress(GOOD),
        (None, "the file is gzip-compressed: upload the uncompressed JSONL"),
    ),
    "array.jsonl": (b"[1, 2, 3]\n", (1, "a JSON array, not an object")),
    "huge-line.jsonl": (
        b'{"text": "' + b"x" * (10 * 1024 * 1024) + b'"}\n',
        (1, "line is longer than 4194304 bytes"),
    ),
    "no-assistant.jsonl": (
        b'{"messages": [{"role": "user", "content": "hi"}]}\n',
        (1, "no assistant message: nothing to learn from"),
    ),
    "robot.jsonl": (
        b'{"messages": [{"role": "robot", "content": "hi"}]}\n',
        (1, "messages[0].role must be system, developer, user, assistant or tool"),
    ),
    "empty-content.jsonl": (
        b'{"messages": [{"role": "user", "content": "hi"}, '
        b'{"role": "assistant", "content": ""}]}\n',
        (1, "messages[1].content is empty"),
    ),
    # OpenAI's chat format: each rule of the contract's table broken once (issue 26).
    "image-part.jsonl": (
        _chat({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}),
        (
            1,
            "messages[0].content[0] is a part of type 'image_url': only \"text\" parts are "
            "accepted",
        ),
    ),
    "unanswered-tool.jsonl": (
        _chat({"role": "tool", "tool_call_id": "call_9", "content": "42"}),
        (1, "messages[0].tool_call_id 'call_9' names no tool call made earlier in this example"),
    ),
    "arguments.jsonl": (
        _chat(_caller("get_weather", "Paris"), _TOOL_ANSWER, tools=_TOOLS),
        (1, "messages[0].tool_calls[0].function.arguments is not a JSON object string"),
    ),
    "unknown-function.jsonl": (
        _chat(_caller("get_time", "{}"), _TOOL_ANSWER, tools=_TOOLS),
        (1, "messages[0].tool_calls[0].function.name 'get_time' is not one of the line's tools"),
    ),
    "weight-2.jsonl": (
        _chat({"role": "assistant", "content": "x", "weight": 2}),
        (1, "messages[0].weight must be 0 or 1, not 2"),
    ),
    "weight-on-user.jsonl": (
        _chat({"role": "user", "content": "hi", "weight": 1}),
        (1, "messages[0].weight is only allowed on assistant messages"),
    ),
    "all-weight-0.jsonl": (
        _chat(
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": "x", "weight": 0}
        ),
        (1, "every assistant message has weight 0: nothing to learn from"),
    ),
    "two-preferred.jsonl": (
        _pair(preferred_output=[_ANSWER, _ANSWER]),
        (1, "'preferred_output' must be a list of exactly one assistant message (2 messages)"),
    ),
    "input-ends-with-assistant.jsonl": (
        _pair(input={"messages": [{"role": "user", "content": "hi"}, _ANSWER]}),
        (
            1,
            "input.messages ends with an assistant message: it must end with a user or tool "
            "message (the outputs answer it)",
        ),
    ),
    # JSON a loader could read another way (issue 27 item 3).
    "surrogate.jsonl": (
        b'{"messages": [{"role": "assistant", "content": "\\ud800"}]}\n',
        (
            1,
            "a string holds a lone surrogate escape such as \\ud800 (half of a UTF-16 pair, "
            "no character): not valid Unicode",
        ),
    ),
    "duplicate-key.jsonl": (
        b'{"messages": [{"role": "assistant", "content": "a", "content": "b"}]}\n',
        (1, "the key 'content' appears twice in one object"),
    ),
    "split-and-doubled.jsonl": (
        GOOD
        + b'{"messages": [{"role": "user", "content": "split"}\n'
        + b'{"role": "assistant", "content": "over two lines"}]}\n'
        + GOOD.split(b"\n")[0]
        + b", "
        + GOOD,
        (13, "not valid JSON"),
    ),
    "empty.jsonl": (b"", (None, "the file is empty")),
    "blank.jsonl": (b"\n\n", (None, "no valid example in the file")),
}


def test_each_bad_file_is_stored_as_error_with_its_reason(
    train_http: FunctionServer, sandbox: Sandbox
) -> None:
    for name, (data, (line_no, reason)) in BAD_FILES.items():
        file = upload(train_http, data, name).json()
        assert file["status"] == "error", name
        assert {"line": line_no, "reason": reason} in file["validation"]["errors"], name
        refused = submit(train_http, {"training_file": file["id"], "model_id": MODEL})
        assert refused.status_code == 400, name
    bom = upload(train_http, b"\xef\xbb\xbf" + GOOD, "bom.jsonl").json()
    assert bom["status"] == "processed" and bom["validation"]["examples"] == 12
    assert sandbox.jobs() == []


def test_openais_full_chat_format_and_preference_pairs_upload_as_processed(
    train_http: FunctionServer,
) -> None:
    agent = _chat(
        {"role": "developer", "content": "Use the tools."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        _caller("get_weather", '{"city": "Paris"}'),
        _TOOL_ANSWER,
        {**_ANSWER, "weight": 1, "name": "bot"},
        tools=_TOOLS,
        parallel_tool_calls=False,
    )
    for data, fmt, examples in ((agent * 3 + GOOD, "chat", 15), (_pair() * 4, "preference", 4)):
        file = upload(train_http, data).json()
        assert file["status"] == "processed", file["validation"]
        assert file["validation"] == {
            "format": fmt,
            "examples": examples,
            "invalid_examples": 0,
            "errors": [],
        }
        assert File.model_validate(file).validation is not None
