"""Every hyperparameter bound the service accepts is one the trainer accepts.

A request the service takes but the job cannot run is billed for the GPU it
provisions before failing (e.g. a seed past 2**32 - 1 dies in set_seed). Each
bound's extreme value is fed to train.py's own config loader, its seeding and
the trainer configs it builds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import ft.config_io
import ft.sft
import pytest
from template_helpers import EXAMPLE_RUNTIME_CONFIG

schemas = pytest.importorskip("finetune_api.core.schemas")


def _bounds(name: str) -> dict[str, Any]:
    bounds: dict[str, Any] = {}
    for item in schemas.Hyperparameters.model_fields[name].metadata:
        for key in ("ge", "gt", "le", "lt"):
            if getattr(item, key, None) is not None:
                bounds[key] = getattr(item, key)
    return bounds


def _extremes() -> list[tuple[str, Any]]:
    """(name, value) for the lowest and highest value each field accepts."""
    cases = []
    for name, field in schemas.Hyperparameters.model_fields.items():
        bounds = _bounds(name)
        is_float = field.annotation is float
        if "ge" in bounds:
            low = bounds["ge"]
        else:
            low = math.nextafter(bounds["gt"], math.inf) if is_float else bounds["gt"] + 1
        if "le" in bounds:
            high = bounds["le"]
        else:
            high = math.nextafter(bounds["lt"], -math.inf) if is_float else bounds["lt"] - 1
        cases += [(name, low), (name, high)]
    return cases


def test_every_hyperparameter_has_a_lower_and_an_upper_bound() -> None:
    for name in schemas.Hyperparameters.model_fields:
        bounds = _bounds(name)
        assert {"ge", "gt"} & set(bounds), f"{name} has no lower bound"
        assert {"le", "lt"} & set(bounds), f"{name} has no upper bound"


@pytest.mark.parametrize(("name", "value"), _extremes(), ids=lambda v: str(v)[:12])
def test_extreme_values_pass_the_service_and_the_trainers_loader(name: str, value: Any) -> None:
    accepted = schemas.Hyperparameters.model_validate({name: value}).model_dump()
    config = {**EXAMPLE_RUNTIME_CONFIG, "hyperparameters": accepted}
    loaded = ft.config_io.load_runtime_config({"RUNTIME_CONFIG": json.dumps(config)})
    assert getattr(loaded.hyperparameters, name) == value


@pytest.mark.parametrize(("name", "value"), _extremes(), ids=lambda v: str(v)[:12])
def test_extreme_values_seed_and_configure_the_trainer(
    training_stack: None, tmp_path: Path, name: str, value: Any
) -> None:
    from transformers import set_seed

    accepted = schemas.Hyperparameters.model_validate({name: value}).model_dump()
    config = {**EXAMPLE_RUNTIME_CONFIG, "hyperparameters": accepted}
    hp = ft.config_io.load_runtime_config({"RUNTIME_CONFIG": json.dumps(config)}).hyperparameters
    set_seed(hp.seed)  # what train() does first
    args, lora = ft.sft.trainer_configs(hp, tmp_path, use_cuda=False, bf16=False, distributed=False)
    assert (args.seed, args.learning_rate, lora.r, lora.lora_dropout) == (
        hp.seed,
        hp.learning_rate,
        hp.lora_rank,
        hp.lora_dropout,
    )


def test_a_seed_past_numpys_range_is_refused_by_the_service() -> None:
    for seed in (2**32, 18446744073709551616):
        with pytest.raises(schemas.ValidationError):
            schemas.Hyperparameters.model_validate({"seed": seed})
