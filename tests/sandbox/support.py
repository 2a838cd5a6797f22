"""Shared helpers of the sandbox tests (fixtures live in ``conftest.py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import requests

from sandbox.conformance import PROBE_HEADER

API_KEY = "sk-sandbox-test-key"
APP_URL = "http://app.sandbox.test"

JobFactory = Callable[..., dict[str, Any]]


class FakeClock:
    """A settable clock in nanoseconds since the epoch, for ``Sandbox(clock=...)``."""

    def __init__(self, start_s: float = 1_800_000_000.0) -> None:
        self.ns = int(start_s * 1_000_000_000)

    def __call__(self) -> int:
        return self.ns

    def advance(self, seconds: float) -> None:
        self.ns += int(seconds * 1_000_000_000)


class Http:
    """Raw HTTP against a sandbox: ``api`` adds the API key, ``control`` does not."""

    def __init__(self, base_url: str, api_key: str) -> None:
        self.base_url = base_url
        self.headers = {"Authorization": f"Api-Key {api_key}"}

    def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
        params: dict[str, str] | None = None,
        probe: bool = False,
    ) -> requests.Response:
        """``probe=True`` marks a request the test means Baseten's spec to refuse."""
        sent = dict(self.headers if headers is None else headers)
        if probe:
            sent[PROBE_HEADER] = "expect-rejection"
        return requests.request(
            method,
            f"{self.base_url}/{path}",
            json=body,
            params=params,
            headers=sent,
            timeout=timeout,
        )

    def control(self, method: str, path: str, body: Any = None) -> requests.Response:
        return requests.request(method, f"{self.base_url}/_sandbox/{path}", json=body, timeout=10)


def job_body(artifact: dict[str, str], **changes: Any) -> dict[str, Any]:
    """A create-job body shaped exactly like truss 0.18.36's, with top-level ``changes``."""
    job: dict[str, Any] = {
        "image": {"base_image": "pytorch/pytorch:2.7.0", "docker_auth": None},
        "compute": {
            "node_count": 1,
            "cpu_count": 4,
            "memory": "64Gi",
            "accelerator": {"accelerator": "H100", "count": 2},
            "availability_model": "dedicated",
        },
        "runtime": {
            "start_commands": ["python train.py"],
            "environment_variables": {
                "MODEL_ID": "Qwen/Qwen3-0.6B",
                "HF_TOKEN": {"name": "hf_access_token"},
            },
            "enable_cache": None,
            "checkpointing_config": {
                "enabled": True,
                "checkpoint_path": None,
                "volume_size_gib": None,
            },
            "load_checkpoint_config": None,
            "cache_config": None,
            "artifacts": [artifact],
        },
        "interactive_session": None,
        "name": None,
        "priority": None,
        "workspace": None,
        "weights": [],
        "enable_baseten_workdir": True,
        "truss_user_env": {"truss_client_version": "0.18.36", "git_info": None},
    }
    job.update(changes)
    return {"training_job": job}
