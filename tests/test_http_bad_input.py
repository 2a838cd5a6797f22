"""Every bad input: the CONTRACT error, no call to Baseten, nothing left in TMPDIR.

The ``train_http`` fixture itself asserts the function's TMPDIR is empty after
each test; here each case also checks the sandbox saw no request at all.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import requests

from loopback.functions import FunctionServer
from sandbox import Sandbox
from tests.conftest import API_KEY

VALID = {"dataset_id": "HuggingFaceH4/Multilingual-Thinking", "model_id": "openai/gpt-oss-20b"}
JSON = {"Content-Type": "application/json"}


def send(
    server: FunctionServer, data: bytes, headers: dict[str, str] | None = None
) -> requests.Response:
    return requests.post(f"{server.url}/jobs", data=data, headers=headers or JSON, timeout=30)


def assert_error(response: requests.Response, status: int, error_type: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert error["type"] == error_type
    assert error["message"]
    assert API_KEY not in response.text
    return error


def assert_untouched(sandbox: Sandbox) -> None:
    assert sandbox.stats()["requests"] == 0
    assert sandbox.jobs() == []


@pytest.mark.parametrize(
    ("body", "locations"),
    [
        ({}, {"dataset_id", "model_id"}),
        ({"dataset_id": "a/b"}, {"model_id"}),
        ({**VALID, "dataset_id": 12}, {"dataset_id"}),
        ({**VALID, "hyperparameters": {"num_epochs": "2"}}, {"hyperparameters.num_epochs"}),
        ({**VALID, "extra": True}, {"extra"}),
        ({**VALID, "dataset_id": "../x"}, {"dataset_id"}),
        ({**VALID, "dataset_id": "a/b/c"}, {"dataset_id"}),
        ({**VALID, "model_id": "a b"}, {"model_id"}),
        ({**VALID, "model_id": "a\nb"}, {"model_id"}),
        ({**VALID, "model_id": "x" * 97}, {"model_id"}),
        ({**VALID, "model_id": "a--b"}, {"model_id"}),
        ({**VALID, "model_id": "-a"}, {"model_id"}),
        ({**VALID, "model_id": ""}, {"model_id"}),
        ({**VALID, "hyperparameters": {"learning_rate": 2}}, {"hyperparameters.learning_rate"}),
        ({**VALID, "hyperparameters": {"lora_rank": 0}}, {"hyperparameters.lora_rank"}),
        ({**VALID, "compute": {"accelerator": "T4"}}, {"compute.accelerator"}),
        ({**VALID, "compute": {"gpu_count": 9}}, {"compute.gpu_count"}),
        ({**VALID, "compute": {"node_count": 2}}, {"compute.node_count"}),
    ],
)
def test_schema_violations(
    train_http: FunctionServer, sandbox: Sandbox, body: dict[str, Any], locations: set[str]
) -> None:
    error = assert_error(send(train_http, json.dumps(body).encode()), 400, "invalid_request")
    assert {detail["location"] for detail in error["details"]} == locations
    assert all(detail["reason"] for detail in error["details"])
    assert_untouched(sandbox)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"[1, 2]", "JSON object"),
        (b'"text"', "JSON object"),
        (b"null", "JSON object"),
        (b"{not json", "not valid JSON"),
        (b'{"dataset_id": NaN}', "not valid JSON"),
        (b'{"dataset_id": "\xff\xfe"}', "UTF-8"),
        (b"", "empty"),
    ],
)
def test_malformed_bodies(
    train_http: FunctionServer, sandbox: Sandbox, data: bytes, words: str
) -> None:
    error = assert_error(send(train_http, data), 400, "invalid_request")
    assert words in error["message"]
    assert_untouched(sandbox)


def test_oversized_body_is_413(train_http: FunctionServer, sandbox: Sandbox) -> None:
    data = json.dumps({**VALID, "job_name": "x" * 70000}).encode()
    assert_error(send(train_http, data), 413, "payload_too_large")
    assert_untouched(sandbox)


def test_oversized_chunked_body_is_413(train_http: FunctionServer, sandbox: Sandbox) -> None:
    def chunks() -> Any:
        for _ in range(70):
            yield b" " * 1024

    response = requests.post(f"{train_http.url}/jobs", data=chunks(), headers=JSON, timeout=30)
    assert_error(response, 413, "payload_too_large")
    assert_untouched(sandbox)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/jsonx"]
)
def test_wrong_content_type_is_415(
    train_http: FunctionServer, sandbox: Sandbox, content_type: str
) -> None:
    response = send(train_http, json.dumps(VALID).encode(), {"Content-Type": content_type})
    assert_error(response, 415, "unsupported_media_type")
    assert_untouched(sandbox)


def test_json_with_charset_is_accepted(train_http: FunctionServer, sandbox: Sandbox) -> None:
    response = send(
        train_http, json.dumps(VALID).encode(), {"Content-Type": "application/json; charset=utf-8"}
    )
    assert response.status_code == 201, response.text


@pytest.mark.parametrize("key", ["a b", "x" * 256, "é"])
def test_bad_idempotency_key_header(train_http: FunctionServer, sandbox: Sandbox, key: str) -> None:
    headers = {**JSON, "Idempotency-Key": key}
    response = requests.post(
        f"{train_http.url}/jobs",
        data=json.dumps(VALID).encode(),
        headers={k: v.encode() for k, v in headers.items()},
        timeout=30,
    )
    error = assert_error(response, 400, "invalid_request")
    assert "Idempotency-Key" in error["message"]
    assert_untouched(sandbox)


def test_unknown_route_and_method(train_http: FunctionServer, sandbox: Sandbox) -> None:
    assert_error(requests.get(f"{train_http.url}/nope", timeout=10), 404, "not_found")
    response = requests.delete(f"{train_http.url}/jobs", timeout=10)
    assert_error(response, 405, "method_not_allowed")
    assert set(response.headers["Allow"].split(", ")) >= {"GET", "POST"}
    assert_untouched(sandbox)


def test_healthz_contacts_nothing(train_http: FunctionServer, sandbox: Sandbox) -> None:
    response = requests.get(f"{train_http.url}/healthz", timeout=10)
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    assert_untouched(sandbox)


def test_openapi_describes_every_route(train_http: FunctionServer) -> None:
    document = requests.get(f"{train_http.url}/openapi.json", timeout=10).json()
    assert document["openapi"].startswith("3.1")
    assert set(document["paths"]) >= {
        "/jobs",
        "/jobs/{project_id}/{job_id}",
        "/jobs/{project_id}/{job_id}/checkpoints",
        "/jobs/{project_id}/{job_id}/stop",
        "/healthz",
        "/openapi.json",
    }
    request_schema = document["components"]["schemas"]["TrainingRequest"]
    assert request_schema["additionalProperties"] is False
    # dataset_id or training_file: exactly one, checked beside the schema.
    assert set(request_schema["required"]) == {"model_id"}
    assert {"dataset_id", "training_file", "validation_file", "dry_run"} <= set(
        request_schema["properties"]
    )


def test_openapi_documents_every_route_and_method() -> None:
    """Every rule train_http routes is in the document, with each of its methods."""
    from finetune_api.edge.http_app import TRAIN_ROUTES
    from finetune_api.edge.openapi import openapi_document

    paths = openapi_document()["paths"]
    missing = []
    for rule in TRAIN_ROUTES.iter_rules():
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            if method.lower() not in paths.get(path, {}):
                missing.append(f"{method} {path}")
    assert missing == []


def test_request_logs_are_structured_with_trace(train_http: FunctionServer) -> None:
    trace = "0123456789abcdef0123456789abcdef"
    requests.get(
        f"{train_http.url}/healthz",
        headers={"X-Cloud-Trace-Context": f"{trace}/42;o=1"},
        timeout=10,
    )
    lines = [json.loads(line) for line in train_http.output().splitlines() if line.startswith("{")]
    [entry] = [
        line for line in lines if line.get("logging.googleapis.com/trace", "").endswith(trace)
    ]
    assert entry["severity"] == "INFO" and entry["route"] == "healthz" and entry["status"] == 200
    assert entry["httpRequest"]["latency"].endswith("s")
    assert entry["logging.googleapis.com/trace"] == f"projects/test-project/traces/{trace}"


# -- issue 12: every input that can only fail answers 400, in our JSON, quoting nothing --


@pytest.mark.parametrize(
    "data", [b"[" * 3000, b'{"a":' * 3000, b"[" * 30000 + b"]" * 30000], ids=["list", "obj", "deep"]
)
def test_deeply_nested_body_is_400(
    train_http: FunctionServer, sandbox: Sandbox, data: bytes
) -> None:
    error = assert_error(send(train_http, data), 400, "invalid_request")
    assert "nested too deeply" in error["message"]
    assert "Traceback" not in train_http.output()
    assert_untouched(sandbox)


@pytest.mark.parametrize(
    "limit",
    ["²", "٣", "\uff11\uff10", "1" * 4401, "0", "101", "-1", "+5", " 5", "5 ", "1e1", "", "0x10"],
    ids=lambda value: f"{value[:8]!r}",
)
def test_bad_limit_is_400_and_not_echoed(
    train_http: FunctionServer, sandbox: Sandbox, limit: str
) -> None:
    response = requests.get(f"{train_http.url}/jobs", params={"limit": limit}, timeout=30)
    error = assert_error(response, 400, "invalid_request")
    assert error["details"] == [
        {"location": "query.limit", "reason": "must be an integer from 1 to 100"}
    ]
    assert "Traceback" not in train_http.output()
    assert_untouched(sandbox)


@pytest.mark.parametrize("limit", ["1", "100", "007"])
def test_good_limits_are_accepted(train_http: FunctionServer, limit: str) -> None:
    response = requests.get(f"{train_http.url}/jobs", params={"limit": limit}, timeout=30)
    assert response.status_code == 200, response.text


ECHOED = "zq7echo"


@pytest.mark.parametrize(
    ("method", "path", "status", "error_type"),
    [
        ("GET", f"/jobs//{ECHOED}/j", 404, "not_found"),
        ("GET", f"/jobs/{ECHOED}%0Ab/j", 404, "not_found"),
        ("GET", f"/{ECHOED}%0A", 404, "not_found"),
        ("GET", f"/jobs/{ECHOED}/j%0A/stop", 404, "not_found"),
        ("GET", f"/{ECHOED}", 404, "not_found"),
        ("GET", f"/jobs/p1/{ECHOED}", 404, "not_found"),
        ("GET", f"/jobs/{ECHOED}/j1/checkpoints", 404, "not_found"),
        ("POST", f"/jobs/{ECHOED}/j1/stop", 404, "not_found"),
        ("GET", f"/jobs/p1/{ECHOED}/logs", 404, "not_found"),
        ("GET", f"/jobs/{ECHOED}/j1/metrics", 404, "not_found"),
        ("POST", f"/jobs/p1/{ECHOED}/deployments", 404, "not_found"),
        ("GET", f"/deployments/m1/{ECHOED}", 404, "not_found"),
        ("POST", f"/deployments/{ECHOED}/d1/deactivate", 404, "not_found"),
        ("GET", f"/jobs/{'x' * 65}{ECHOED}/j1", 404, "not_found"),
        ("ZQ7ECHO", "/jobs", 405, "method_not_allowed"),
    ],
)
def test_every_answer_is_our_json_and_quotes_no_input(
    train_http: FunctionServer, method: str, path: str, status: int, error_type: str
) -> None:
    response = requests.request(
        method, f"{train_http.url}{path}", timeout=30, allow_redirects=False
    )
    assert_error(response, status, error_type)
    assert ECHOED not in response.text.lower() and "localhost" not in response.text
