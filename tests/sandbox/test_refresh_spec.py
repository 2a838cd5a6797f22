"""python -m sandbox.refresh_spec: rewrite a vendored copy from a newer spec file."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from sandbox.conformance import SPEC_DIR, SPEC_FILES, Spec, load_document
from sandbox.refresh_spec import RefreshError, main, refresh

TRAINING = "baseten-openapi.yaml"


@pytest.fixture
def spec_dir(tmp_path: Path) -> Path:
    target = tmp_path / "spec"
    target.mkdir()
    for name in SPEC_FILES:
        shutil.copy(SPEC_DIR / name, target / name)
    return target


def _newer(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A 'whole published document': the vendored training part plus changes."""
    doc = copy.deepcopy(load_document(SPEC_DIR / TRAINING))
    doc["paths"]["/v1/training_projects/{training_project_id}/jobs/{training_job_id}/pause"] = {
        "post": {"responses": {"200": {"description": ""}}}
    }
    doc["paths"]["/v1/training_projects"]["get"]["deprecated"] = True
    # Not part of training: cut away, with the component only it uses.
    doc["paths"]["/v1/secrets"] = {
        "get": {
            "responses": {
                "200": {
                    "description": "",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Secrets"}}
                    },
                }
            }
        }
    }
    doc["components"]["schemas"]["Secrets"] = {"type": "object"}
    path = tmp_path / "published.json"
    path.write_text(json.dumps(doc))
    return path, doc


def test_refresh_cuts_the_part_records_provenance_and_reports_changes(
    tmp_path: Path, spec_dir: Path
) -> None:
    new, _ = _newer(tmp_path)
    report = refresh(new, part="training", snapshot_date="2026-12-01", spec_dir=spec_dir)
    assert report[0].startswith(f"wrote {spec_dir / TRAINING} (29 operations")
    assert (
        "added: POST /v1/training_projects/{training_project_id}/jobs/{training_job_id}/pause"
        in report
    )
    assert "now deprecated: GET /v1/training_projects" in report
    written = load_document(spec_dir / TRAINING)
    assert "/v1/secrets" not in written["paths"]
    assert "Secrets" not in written["components"]["schemas"]
    assert written["info"]["x-vendored"]["snapshot_date"] == "2026-12-01"
    assert written["info"]["x-vendored"]["source"] == "https://api.baseten.co/v1/spec"
    text = (spec_dir / TRAINING).read_text()
    assert text.startswith("# Baseten management API, training part, vendored from")
    # The rewritten copy is usable by the sandbox's validator as is.
    spec = Spec({TRAINING: written})
    [op] = [o for o in spec.operations if o.label == "GET /v1/training_projects"]
    assert op.deprecated


def test_the_vendored_copies_match_the_reference_snapshot() -> None:
    for name in SPEC_FILES:
        vendored = load_document(SPEC_DIR / name)
        assert vendored["info"]["x-vendored"]["snapshot_date"] == "2026-08-22"
        assert vendored["info"]["x-vendored"]["source"] == "https://api.baseten.co/v1/spec"
        assert vendored["openapi"].startswith("3.1")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda d: d["paths"].pop("/v1/training_jobs/search"), "drops operations"),
        (lambda d: d.update(openapi="3.0.3"), "OpenAPI 3.1"),
        (
            lambda d: d["components"]["schemas"].pop("TrainingJobV1"),
            "points to nothing",
        ),
    ],
    ids=["drops a served operation", "not 3.1", "dangling reference"],
)
def test_refresh_refuses_and_leaves_the_copy_untouched(
    tmp_path: Path, spec_dir: Path, change: Any, reason: str
) -> None:
    new, doc = _newer(tmp_path)
    change(doc)
    new.write_text(json.dumps(doc))
    before = (spec_dir / TRAINING).read_bytes()
    with pytest.raises(RefreshError, match=reason):
        refresh(new, part="training", snapshot_date="2026-12-01", spec_dir=spec_dir)
    assert (spec_dir / TRAINING).read_bytes() == before
    assert sorted(p.name for p in spec_dir.iterdir()) == sorted(SPEC_FILES)


def test_cli_refuses_a_bad_date_with_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new, _ = _newer(tmp_path)
    assert main([str(new), "--snapshot-date", "yesterday"]) == 1
    assert "YYYY-MM-DD" in capsys.readouterr().err
