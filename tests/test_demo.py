"""`make run` keeps working: the demo completes a job end to end and leaves nothing behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from loopback.functions import ROOT

EVENTS = ("submitted", "created", "deploying", "running", "checkpoint_created", "completed")


def _demo_processes() -> list[int]:
    """Processes whose environment names the demo's private TMPDIR (its function servers)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if b"finetune-demo-" in (proc / "environ").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def test_make_run_demo_completes_a_job(tmp_path: Path) -> None:
    env = {**os.environ, "DEMO_OUTPUT_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "scripts.demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "→ 201" in out and "Done: job completed" in out
    # The bundled file is uploaded and checked, then estimated before any job exists.
    assert '"status": "processed"' in out and '"examples": 21' in out
    assert '"tokens_method": "tokenizer"' in out and "(nothing created); estimate:" in out
    assert "no throughput measured yet for openai/gpt-oss-20b on 1x H100" in out
    # After the job, the same dry run has GPU hours from the throughput it measured.
    assert "the median FT_METRICS step rate of 1 completed job(s)" in out
    for event in EVENTS:
        assert f"training_job.{event}" in out
    # Then it serves what was trained and asks it one question.
    assert "→ 202" in out and "deployment.building" in out and "deployment.active" in out
    assert "  answer: Hello from " in out and "You said: In one sentence" in out
    assert "→ deployment inactive" in out
    assert _demo_processes() == []
    # A progress bar from the job's own lines, and the loss curve written where it says.
    bars = re.findall(r"\[[#.]{30}\]\s+(\d+)/(\d+) steps  loss [\d.]+", out)
    assert bars and bars[-1][0] == bars[-1][1]
    # Did it get better? The demo asks GET .../evaluation and prints base beside tuned
    # where the service has the route (branch wt-eval-service), and says so where not.
    import finetune_api

    assert re.search(r"\$ curl http://127\.0\.0\.1:\d+/jobs/\w+/\w+/evaluation", out)
    if hasattr(finetune_api, "job_evaluation"):
        table = re.search(r"eval loss\s+([\d.]+)\s+([\d.]+)\s+(-[\d.]+)", out)
        assert table and float(table[2]) < float(table[1])
        assert "token accuracy" in out and "sample 1 of 5" in out and "    tuned:     " in out
    else:
        assert ": this service has no evaluation to show" in out
    [chart] = tmp_path.glob("loss-curve-*.svg")
    assert f"Loss curve (SVG): {chart}" in out
    assert 'id="loss"' in chart.read_text() and 'id="eval_loss"' in chart.read_text()
