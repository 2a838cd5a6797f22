"""Start-up stays light: truss loads only for a submit, pydantic only when validating,
matplotlib only to draw a chart, tokenizers and huggingface_hub only for a dry run's count."""

from __future__ import annotations

import json
import subprocess
import sys

from loopback.functions import ROOT

PROBE = r"""
import json, sys
HEAVY = ("truss", "truss_train", "pydantic", "tokenizers", "huggingface_hub")
import functions_framework
app = functions_framework.create_app("train_http", "main.py")
client = app.test_client()
after_start = {m: m in sys.modules for m in HEAVY}
assert client.get("/healthz").status_code == 200
after_health = {m: m in sys.modules for m in HEAVY}
# A read route talks to Baseten (here: nothing listens) but never needs truss.
status = client.get("/jobs/p1/j1").status_code
assert client.get("/deployments/m1/d1").status_code == 503
after_read = {m: m in sys.modules for m in ("truss", "truss_train", "matplotlib")}
# The metrics route (JSON) fails the same way, and never loads the plotting library.
metrics_status = client.get("/jobs/p1/j1/metrics").status_code
after_metrics = "matplotlib" in sys.modules
# A plain submit (a hub dataset, no dry run) loads truss but never the tokenizer stack.
plain = {"dataset_id": "org/data", "model_id": "org/m"}
submit_status = client.post("/jobs", json=plain).status_code
after_submit = {"tokenizers": "tokenizers" in sys.modules}
# The OpenAI-compatible surface loads on its first /v1/ request only, and never the SDK.
V1 = ("finetune_api.edge.openai_routes", "finetune_api.compat.jobs", "finetune_api.compat.chat",
      "finetune_api.files.uploads", "openai")
before_v1 = {m: m in sys.modules for m in V1}
v1_status = client.get("/v1/fine_tuning/jobs/ftjob-nope").status_code
after_v1 = {m: m in sys.modules for m in V1}
seen = {"start": after_start, "health": after_health, "read": after_read, "status": status,
        "metrics": [metrics_status, after_metrics], "start_mpl": "matplotlib" in sys.modules,
        "submit": [submit_status, after_submit],
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
    heavy = ("truss", "truss_train", "pydantic", "tokenizers", "huggingface_hub")
    nothing = dict.fromkeys(heavy, False)
    assert seen["start"] == nothing
    assert seen["health"] == nothing
    assert seen["read"] == {"truss": False, "truss_train": False, "matplotlib": False}
    assert seen["metrics"] == [503, False]
    assert seen["status"] == 503
    assert not any(seen["before_v1"].values()), seen["before_v1"]
    assert seen["v1_status"] == 404
    assert seen["after_v1"]["finetune_api.edge.openai_routes"]
    assert not seen["after_v1"]["openai"]
    # The submit fails at Baseten (nothing listens); tokenizers stayed out (truss itself
    # loads huggingface_hub on a submit, so that one is only checked at start).
    assert seen["submit"][0] >= 400
    assert seen["submit"][1] == {"tokenizers": False}
