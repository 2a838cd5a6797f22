"""GET /jobs/{p}/{j}/logs, /metrics (JSON and SVG) and progress, under functions-framework."""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from typing import Any

import pytest
import requests

from loopback.functions import FunctionServer
from sandbox import Sandbox
from tests.conftest import API_KEY

SVG = "{http://www.w3.org/2000/svg}"


def finished_job(sb: Sandbox, steps: int = 400, **spec: Any) -> tuple[str, str]:
    project_id, job_id, _ = finished_job_lines(sb, steps, **spec)
    return project_id, job_id


def finished_job_lines(sb: Sandbox, steps: int = 400, **spec: Any) -> tuple[str, str, int]:
    """A completed job with a simulated run of ``steps`` steps; and its number of log lines."""
    seeded = sb.seed(status="TRAINING_JOB_RUNNING", name_prefix="charts")
    project_id, job_id = seeded["projects"][0]["id"], seeded["job_ids"][0]
    made = sb.synthesize_logs(job_id, steps=steps, seconds=300, validation=True, **spec)
    sb.set_status(job_id, "TRAINING_JOB_COMPLETED")
    return project_id, job_id, int(made["lines"])


def test_logs_route_pages_with_a_cursor(train_http: FunctionServer, sandbox: Sandbox) -> None:
    project_id, job_id, total = finished_job_lines(sandbox, steps=30)
    url = f"{train_http.url}/jobs/{project_id}/{job_id}/logs"
    first = requests.get(url, params={"limit": 10}, timeout=30)
    assert first.status_code == 200, first.text
    body = first.json()
    assert set(body) == {"data", "next_cursor", "has_more"}
    assert len(body["data"]) == 10 and body["has_more"] is True
    assert set(body["data"][0]) == {"timestamp", "message", "replica", "level"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", body["data"][0]["timestamp"])
    seen = list(body["data"])
    while body["has_more"]:
        body = requests.get(
            url, params={"limit": 10, "cursor": body["next_cursor"]}, timeout=30
        ).json()
        seen += body["data"]
    assert len(seen) == total and body["next_cursor"] is None
    stamps = [line["timestamp"] for line in seen]
    assert stamps == sorted(stamps)


@pytest.mark.parametrize(
    ("query", "location"),
    [
        ("limit=0", "query.limit"),
        ("limit=abc", "query.limit"),
        ("limit=" + "9" * 5000, "query.limit"),  # past int()'s digit limit: a 400, not a 500
        ("limit=%C2%B2", "query.limit"),
        ("limit=%D9%A3", "query.limit"),
        ("order=up", "query.order"),
        ("level=TRACE", "query.level"),
        ("since=now", "query.since"),
        ("cursor=%%%", "query.cursor"),
        ("offset=3", "query.offset"),
        ("limit=5&limit=6", "query.limit"),
    ],
)
def test_bad_log_query_is_a_400_naming_the_parameter(
    train_http: FunctionServer, sandbox: Sandbox, query: str, location: str
) -> None:
    project_id, job_id = finished_job(sandbox, steps=5)
    before = sandbox.stats()["requests"]
    response = requests.get(f"{train_http.url}/jobs/{project_id}/{job_id}/logs?{query}", timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request"
    assert location in [detail["location"] for detail in error["details"]]
    assert sandbox.stats()["requests"] == before  # nothing reached Baseten


def test_metrics_json_and_svg(train_http: FunctionServer, sandbox: Sandbox) -> None:
    project_id, job_id = finished_job(sandbox)
    url = f"{train_http.url}/jobs/{project_id}/{job_id}/metrics"
    answer = requests.get(url, params={"points": 100}, timeout=60)
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/json"
    body = answer.json()
    assert set(body["training"]) == {"steps", "evaluations", "points", "summary"}
    assert len(body["training"]["steps"]) <= 100
    assert body["training"]["summary"]["step"] == 400
    assert body["training"]["summary"]["percent"] == 100.0
    for headers, params in (
        ({"Accept": "image/svg+xml"}, {}),
        ({}, {"format": "svg"}),
        ({"Accept": "image/svg+xml, application/json;q=0.5"}, {}),
    ):
        chart = requests.get(url, headers=headers, params=params, timeout=60)
        assert chart.status_code == 200
        assert chart.headers["Content-Type"].startswith("image/svg+xml")
        root = ET.fromstring(chart.text)  # noqa: S314 - the SVG our own service drew
        ids = {g.get("id") for g in root.iter(f"{SVG}g")}
        assert {"loss", "eval_loss", "learning_rate"} <= ids
        texts = " ".join(t.text or "" for t in root.iter(f"{SVG}text"))
        assert "completed" in texts
    # JSON wins when asked for first.
    json_first = requests.get(
        url, headers={"Accept": "application/json, image/svg+xml;q=0.1"}, timeout=60
    )
    assert json_first.headers["Content-Type"] == "application/json"


def test_a_job_without_training_lines_draws_gpu_utilisation(
    train_http: FunctionServer, sandbox: Sandbox
) -> None:
    seeded = sandbox.seed(status="TRAINING_JOB_RUNNING", name_prefix="gpu")
    project_id, job_id = seeded["projects"][0]["id"], seeded["job_ids"][0]
    time.sleep(1.1)  # a second of system metrics (its simulated run has just started)
    url = f"{train_http.url}/jobs/{project_id}/{job_id}/metrics"
    assert requests.get(url, timeout=60).json()["training"] is None
    chart = requests.get(url, params={"format": "svg"}, timeout=60)
    root = ET.fromstring(chart.text)  # noqa: S314 - the SVG our own service drew
    ids = {g.get("id") for g in root.iter(f"{SVG}g")}
    assert f"gpu_utilization-{job_id}-multinode-0-0" in ids


def test_unknown_job_is_404_on_both_routes(train_http: FunctionServer, sandbox: Sandbox) -> None:
    project_id, _ = finished_job(sandbox, steps=5)
    for route in ("logs", "metrics"):
        response = requests.get(f"{train_http.url}/jobs/{project_id}/nosuch/{route}", timeout=30)
        assert response.status_code == 404
        assert response.json()["error"]["type"] == "not_found"


@pytest.mark.parametrize(
    ("status", "ours", "error_type"),
    [(429, 503, "upstream_unavailable"), (500, 502, "upstream_error")],
)
def test_baseten_429_and_5xx_map_per_contract(
    train_http: FunctionServer, sandbox: Sandbox, status: int, ours: int, error_type: str
) -> None:
    project_id, job_id = finished_job(sandbox, steps=5)
    sandbox.add_fault(path=r"/(logs|metrics)$", status=status, retry_after=30)
    for route in ("logs", "metrics"):
        response = requests.get(f"{train_http.url}/jobs/{project_id}/{job_id}/{route}", timeout=60)
        assert response.status_code == ours, response.text
        assert response.json()["error"]["type"] == error_type
        if status == 429:
            assert int(response.headers["Retry-After"]) >= 30


def test_log_lines_holding_the_key_come_back_redacted(
    train_http: FunctionServer, sandbox: Sandbox
) -> None:
    project_id, job_id = finished_job(sandbox, steps=5)
    sandbox.append_logs(job_id, [f"oops: Api-Key {API_KEY}", f"raw {API_KEY} here"])
    time.sleep(0.01)
    response = requests.get(
        f"{train_http.url}/jobs/{project_id}/{job_id}/logs", params={"order": "desc"}, timeout=30
    )
    assert API_KEY not in response.text
    messages = [line["message"] for line in response.json()["data"][:2]]
    assert messages == ["raw [REDACTED] here", "oops: Api-Key [REDACTED]"]
    assert API_KEY not in train_http.output()


def test_get_job_adds_progress(train_http: FunctionServer, sandbox: Sandbox) -> None:
    project_id, job_id = finished_job(sandbox, steps=50)
    job = requests.get(f"{train_http.url}/jobs/{project_id}/{job_id}", timeout=30).json()
    assert job["progress"] == {
        "step": 50,
        "total_steps": 50,
        "percent": 100.0,
        "epoch": job["progress"]["epoch"],
        "latest_loss": job["progress"]["latest_loss"],
        "eta_seconds": 0.0,
    }
    seeded = sandbox.seed(status="TRAINING_JOB_CREATED", name_prefix="fresh")
    fresh = seeded["job_ids"][0]
    waiting = requests.get(
        f"{train_http.url}/jobs/{seeded['projects'][0]['id']}/{fresh}", timeout=30
    ).json()
    assert waiting["progress"] is None
    listed = requests.get(f"{train_http.url}/jobs", timeout=30).json()["data"]
    assert all("progress" not in job for job in listed)
