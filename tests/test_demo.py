"""`make run` keeps working: the demo completes a job end to end and leaves nothing behind."""

from __future__ import annotations

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


def test_make_run_demo_completes_a_job() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "scripts.demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "→ 201" in out and "Done: job completed" in out
    for event in EVENTS:
        assert f"training_job.{event}" in out
    # Then it serves what was trained and asks it one question.
    assert "→ 202" in out and "deployment.building" in out and "deployment.active" in out
    assert "  answer: Hello from " in out and "You said: In one sentence" in out
    assert "→ deployment inactive" in out
    assert _demo_processes() == []
