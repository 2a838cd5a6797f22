"""Fixtures for the training template's tests: staging, a tiny local model, runs of train.py."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# The tests import their helpers by module name, whatever pytest's import mode.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from template_helpers import (
    TEMPLATE_DIR,
    RunTrain,
    TrainRun,
    build_tokenizer,
    missing_training_stack,
    prepare_job,
    save_tiny_model,
)

# The template's package (training_template/ft), as train.py finds it beside itself.
sys.path.insert(0, str(TEMPLATE_DIR))


@pytest.fixture(scope="session", autouse=True)
def offline_hugging_face(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No test here reaches the hub, and caches go to a temporary HF_HOME."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("HF_DATASETS_OFFLINE", "1")
        patch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf-home")))
        yield


@pytest.fixture(scope="session")
def training_stack() -> None:
    """Skips a test that really trains when the heavy libraries are not installed."""
    missing = missing_training_stack()
    if missing:
        pytest.skip(
            f"CPU training needs {', '.join(missing)}: pip install -r requirements-train.txt "
            "(torch and the libraries that need it install on Python 3.11 only)"
        )


@pytest.fixture
def stage(tmp_path: Path) -> Callable[..., Path]:
    """Stage the template as the service does: a fresh copy plus runtime_config.json."""

    def _stage(config: dict[str, Any], name: str = "staged") -> Path:
        staged = tmp_path / name
        shutil.copytree(TEMPLATE_DIR, staged, ignore=shutil.ignore_patterns("__pycache__"))
        (staged / "runtime_config.json").write_text(json.dumps(config), encoding="utf-8")
        return staged

    return _stage


@pytest.fixture(scope="session")
def tiny_tokenizer() -> Any:
    if importlib.util.find_spec("transformers") is None:
        pytest.skip("needs transformers: pip install -r requirements-train.txt")
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, training_stack: None) -> Path:
    """A 2-layer, hidden-size-32 Llama and its tokenizer (with a chat template) on disk."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_tools_model(tmp_path_factory: pytest.TempPathFactory, training_stack: None) -> Path:
    """The tiny Llama with the byte-level tokenizer whose chat template renders tools."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama-tools"), tools=True)


@pytest.fixture(scope="session")
def tiny_model_without_chat_template(
    tmp_path_factory: pytest.TempPathFactory, training_stack: None
) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama-plain"), chat_template=None)


@pytest.fixture(scope="module")
def run_train(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunTrain]:
    """Run train.py as the Baseten job does: `python train.py` in the uploaded folder.

    Keyword arguments become environment variables (None removes one; a dict for
    RUNTIME_CONFIG is serialized). BT_CHECKPOINT_DIR defaults to a fresh folder.
    """

    def _run(timeout: float = 240, **env: Any) -> TrainRun:
        app, environ, checkpoints = prepare_job(tmp_path_factory.mktemp("job"), env)
        proc = subprocess.run(
            [sys.executable, "train.py"],
            cwd=app,
            env=environ,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return TrainRun(proc, checkpoints, app)

    yield _run
