"""Drawing a chart leaves TMPDIR as it found it, even where matplotlib has no config dir."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import os, tempfile
from finetune_api.insights import chart
answer = {
    "training_job_id": "j1", "job_name": "tmp-check", "status": "running",
    "training": {"steps": [{"step": 1, "loss": 2.5, "learning_rate": 1e-4},
                           {"step": 2, "loss": 1.25, "learning_rate": 1e-4}],
                 "evaluations": []},
    "system": {"nodes": []},
}
svg = chart.render_svg(answer)
assert svg.lstrip().startswith("<?xml") and "</svg>" in svg, svg[:200]
# Checked inside the process: matplotlib removes its own temporary dir only at exit.
print("drawn", len(svg), "left:", sorted(os.listdir(tempfile.gettempdir())))
"""


def test_chart_leaves_tmpdir_as_found_when_home_is_unwritable(tmp_path: Path) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    unwritable_home = tmp_path / "a-file"
    unwritable_home.write_text("not a directory, so no config dir can be made under it")
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(unwritable_home),
        "TMPDIR": str(tmpdir),
        "PYTHONPATH": str(ROOT),
    }
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("drawn")
    assert result.stdout.rstrip().endswith("left: []"), result.stdout
    assert list(tmpdir.iterdir()) == []
