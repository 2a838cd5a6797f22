"""training_template/config.py: ``resume_from`` becomes Baseten's ``load_checkpoint_config``."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from template_helpers import EXAMPLE_RUNTIME_CONFIG
from truss_train.loader import import_training_project

Stage = Callable[..., Path]
_names = itertools.count()


def _runtime(stage: Stage, **changes: Any) -> Any:
    config = copy.deepcopy(EXAMPLE_RUNTIME_CONFIG)
    config.update(changes)
    with import_training_project(stage(config, f"staged-{next(_names)}") / "config.py") as project:
        return project.job.runtime


def test_no_resume_from_loads_nothing(stage: Stage) -> None:
    assert _runtime(stage).load_checkpoint_config is None
    assert _runtime(stage, resume_from=None).load_checkpoint_config is None


def test_resume_from_names_the_checkpoint_as_truss_sends_it(stage: Stage) -> None:
    resume = {"training_project_id": "p1", "training_job_id": "j1", "checkpoint_id": "checkpoint-4"}
    runtime = _runtime(stage, resume_from=resume)
    assert runtime.load_checkpoint_config.model_dump() == {
        "enabled": True,
        "checkpoints": [
            {"typ": "baseten_named_checkpoint", "checkpoint_name": "checkpoint-4", "job_id": "j1"}
        ],
        "download_folder": "/tmp/loaded_checkpoints",
    }


def test_a_restart_without_a_checkpoint_loads_nothing(stage: Stage) -> None:
    resume = {"training_project_id": "p1", "training_job_id": "j1", "checkpoint_id": None}
    assert _runtime(stage, resume_from=resume).load_checkpoint_config is None


@pytest.mark.parametrize(
    "resume",
    [
        "checkpoint-4",
        {"training_job_id": "j1", "checkpoint_id": 4},
        {"training_job_id": "", "checkpoint_id": "checkpoint-4"},
        {"checkpoint_id": "checkpoint-4"},
    ],
)
def test_a_malformed_resume_from_fails_the_push_clearly(stage: Stage, resume: Any) -> None:
    with pytest.raises(ValueError, match="resume_from"):
        _runtime(stage, resume_from=resume)
