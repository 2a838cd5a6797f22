"""Start-up stays light: truss loads only for a submit, pydantic only when validating,
matplotlib only to draw a chart."""

from __future__ import annotations

import json
import subprocess
import sys

from loopback.functions import ROOT

PROBE = r"""
import json, sys
import functions_framework
app = functions_framework.create_app("train_http", "main.py")
client = app.test_client()
after_start = {m: m in sys.modules for m in ("truss", "truss_train", "pydantic")}
assert client.get("/healthz").status_code == 200
after_health = {m: m in sys.modules for m in ("truss", "truss_train", "pydantic")}
# A read route talks to Baseten (here: nothing listens) but never needs truss.
status = client.get("/jobs/p1/j1").status_code
assert client.get("/deployments/m1/d1").status_code == 503
after_read = {m: m in sys.modules for m in ("truss", "truss_train", "matplotlib")}
# The metrics route (JSON) fails the same way, and never loads the plotting library.
metrics_status = client.get("/jobs/p1/j1/metrics").status_code
after_metrics = "matplotlib" in sys.modules
# The OpenAI-compatible surface loads on its first /v1/ request only, and never the SDK.
V1 = ("finetune_api.edge.openai_routes", "finetune_api.compat.jobs", "finetune_api.compat.chat",
      "finetune_api.files.uploads", "openai")
before_v1 = {m: m in sys.modules for m in V1}
v1_status = client.get("/v1/fine_tuning/jobs/ftjob-nope").status_code
after_v1 = {m: m in sys.modules for m in V1}
seen = {"start": after_start, "health": after_health, "read": after_read, "status": status,
        "metrics": [metrics_status, after_metrics], "start_mpl": "matplotlib" in sys.modules,
        "before_v1": before_v1, "after_v1": after_v1, "v1_status": v1_status}
print(json.dumps(seen))
"""


def test_truss_and_pydantic_are_not_imported_at_start() -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "BASETEN_API_KEY": "not-a-real-key-123",
        "BASETEN_API_URL": "http://127.0.0.1:9",
        "BASETEN_MAX_RETRIES": "0",
        "BASETEN_TIMEOUT_SECONDS": "1",
    }
    command = [sys.executable, "-c", PROBE]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["start"] == {"truss": False, "truss_train": False, "pydantic": False}
    assert seen["health"] == {"truss": False, "truss_train": False, "pydantic": False}
    assert seen["read"] == {"truss": False, "truss_train": False, "matplotlib": False}
    assert seen["metrics"] == [503, False]
    assert seen["status"] == 503
    assert not any(seen["before_v1"].values()), seen["before_v1"]
    assert seen["v1_status"] == 404
    assert seen["after_v1"]["finetune_api.edge.openai_routes"]
    assert not seen["after_v1"]["openai"]
