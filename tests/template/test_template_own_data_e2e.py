"""Issue 20's proof: upload a file, submit it, and run the job Baseten would run, on the CPU.

Everything up to the job is real: train_http under functions-framework takes the
upload and the submission, truss pushes to the sandbox, the archive lands in moto
S3. The job is then run exactly as Baseten would run it: the pushed archive
unpacked as the working directory, the job's recorded environment variables,
``BT_CHECKPOINT_DIR``, ``python train.py``. Mocked, because it cannot run here:
the GPU (a tiny model on the CPU) and the Hub (``MODEL_ID`` names a local tiny
model instead of the id the request named; no other variable is touched).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import requests

from loopback.functions import FunctionServer
from loopback.servers import LocalS3
from sandbox import Sandbox
from tests.template.template_helpers import job_environment


def chat(i: int) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": f"Where is order {i}?"},
            {"role": "assistant", "content": f"Order {i} ships tomorrow, tracking T{i:04d}."},
        ]
    }


def test_the_job_trains_on_exactly_the_uploaded_examples(
    train_http: FunctionServer, sandbox: Sandbox, s3: LocalS3, tiny_model: Path, tmp_path: Path
) -> None:
    train_rows = [chat(i) for i in range(8)]
    eval_rows = [chat(100 + i) for i in range(3)]
    uploaded = {}
    for name, rows in (("train.jsonl", train_rows), ("eval.jsonl", eval_rows)):
        data = "".join(json.dumps(row) + "\n" for row in rows).encode()
        answer = requests.post(
            f"{train_http.url}/files",
            files={"file": (name, data)},
            data={"purpose": "fine-tune"},
            timeout=30,
        )
        assert answer.status_code == 201 and answer.json()["status"] == "processed"
        uploaded[name] = answer.json()
    body = {
        "model_id": "acme/tiny-llama",
        "training_file": uploaded["train.jsonl"]["id"],
        "validation_file": uploaded["eval.jsonl"]["id"],
        "hyperparameters": {
            "batch_size": 2,
            "gradient_accumulation_steps": 1,
            "max_seq_length": 64,
            "num_epochs": 1,
        },
    }
    response = requests.post(f"{train_http.url}/jobs", json=body, timeout=60)
    assert response.status_code == 201, response.text

    # What Baseten hands the job: the pushed archive and the job's environment.
    [recorded] = sandbox.jobs()
    runtime = recorded["request"]["runtime"]
    [artifact] = runtime["artifacts"]
    blob = s3.client().get_object(Bucket=artifact["s3_bucket"], Key=artifact["s3_key"])
    app = tmp_path / "app"
    packed = blob["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(packed)) as archive:
        archive.extractall(app, filter="data")
    # The template's package travels with train.py, and the upload stays small.
    archived = {p.relative_to(app).as_posix() for p in app.rglob("*") if p.is_file()}
    assert {"train.py", "config.py", "ft/__init__.py", "ft/labels.py", "ft/run.py"} <= archived
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in archived)
    assert len(packed) < 200_000, len(packed)
    variables = {k: v for k, v in runtime["environment_variables"].items() if isinstance(v, str)}
    assert "DATASET_ID" not in variables
    environ = job_environment(
        tmp_path / "hf-home",
        {**variables, "MODEL_ID": str(tiny_model), "BT_CHECKPOINT_DIR": str(tmp_path / "ckpt")},
    )
    done = subprocess.run(
        [sys.executable, "train.py"],
        cwd=app,
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "ckpt" / "final" / "training_summary.json").read_text())
    assert summary["dataset_id"] is None and summary["dataset_format"] == "messages"
    assert summary["num_examples"] == 8 and summary["num_eval_examples"] == 3
    assert summary["training_file"]["sha256"] == uploaded["train.jsonl"]["sha256"]
    assert summary["validation_file"]["sha256"] == uploaded["eval.jsonl"]["sha256"]
    assert summary["global_step"] == summary["total_steps"] == 4  # 8 examples / batch 2
    assert "Order 0 ships tomorrow" in json.dumps(summary["first_example"])
    assert summary["best_eval_loss"] is not None  # eval_loss computed on the validation file
