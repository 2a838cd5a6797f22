"""``python -m sandbox`` as a process: the listening line, serving, clean exit on signals."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import requests

from loopback.servers import REPO_ROOT, LocalS3, SandboxProcess, wait_for_http


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_process_serves_until_signalled(local_s3: LocalS3, signum: signal.Signals) -> None:
    proc = SandboxProcess("sk-proc", local_s3.url).start()
    try:
        assert proc.first_line == f"sandbox listening on {proc.url}"
        assert proc.url.startswith("http://127.0.0.1:")
        wait_for_http(f"{proc.url}/_sandbox/health", timeout=5)
        headers = {"Authorization": "Api-Key sk-proc"}
        created = requests.post(
            f"{proc.url}/v1/training_projects",
            json={"training_project": {"name": "p"}},
            headers=headers,
            timeout=5,
        )
        assert created.status_code == 200
        creds = requests.get(f"{proc.url}/v1/blobs/credentials/train", headers=headers, timeout=5)
        assert creds.json()["creds"]["endpoint_url"] == local_s3.url
        assert requests.get(f"{proc.url}/v1/training_projects", timeout=5).status_code == 401
    finally:
        assert proc.process is not None
        proc.process.send_signal(signum)
        code = proc.process.wait(timeout=10)
        proc.stop()
    assert code == 0


def test_process_requires_an_api_key() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sandbox", "--port", "0"],
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "--api-key" in result.stderr
    assert result.stdout == ""
