"""Per-request staging of the training template in its own temporary folder.

Each submission gets a fresh copy with ``runtime_config.json`` written beside
``config.py``; the folder is removed whatever happens, so ``/tmp`` (an
in-memory filesystem on Cloud Functions) is left as it was found.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from finetune_api.core.errors import ConfigurationError

RUNTIME_CONFIG_FILE = "runtime_config.json"
CONFIG_FILE = "config.py"
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".git", RUNTIME_CONFIG_FILE)


def check_template(template_dir: Path) -> Path:
    """The template's ``config.py``, or a ConfigurationError saying what is wrong."""
    config = template_dir / CONFIG_FILE
    if not config.is_file():
        raise ConfigurationError(
            f"TRAINING_TEMPLATE_DIR does not hold a {CONFIG_FILE} (looked in {template_dir})"
        )
    return config


@contextlib.contextmanager
def staged_template(template_dir: Path, runtime_config: Mapping[str, Any]) -> Iterator[Path]:
    """Yield the path of ``config.py`` in a private copy of ``template_dir``."""
    check_template(template_dir)
    root = Path(tempfile.mkdtemp(prefix="finetune-stage-"))
    try:
        staged = root / "template"
        shutil.copytree(template_dir, staged, ignore=_IGNORE)
        # Values only ever travel as JSON data, never as Python source.
        (staged / RUNTIME_CONFIG_FILE).write_text(
            json.dumps(runtime_config, indent=2, sort_keys=True), encoding="utf-8"
        )
        yield staged / CONFIG_FILE
    finally:
        shutil.rmtree(root, ignore_errors=True)
