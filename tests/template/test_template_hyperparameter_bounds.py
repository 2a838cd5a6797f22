"""Every hyperparameter bound the service accepts is one the trainer accepts.

A request the service takes but the job cannot run is billed for the GPU it
provisions before failing (e.g. a seed past 2**32 - 1 dies in set_seed). Each
bound's extreme value is fed to train.py's own config loader, its seeding and
the trainer configs it builds.
"""

from __future__ import annotations

import json
import math
import typing
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


def _kind(field: Any) -> type:
    """``int``, ``float`` or ``bool`` (an optional one's too: ``dpo_beta`` is ``float | None``)."""
    kinds = [k for k in typing.get_args(field.annotation) or (field.annotation,) if k is not NONE]
    assert len(kinds) == 1, field.annotation
    kind: type = kinds[0]
    return kind


NONE = type(None)
NUMERIC = [n for n, f in schemas.Hyperparameters.model_fields.items() if _kind(f) is not bool]


def _extremes() -> list[tuple[str, Any]]:
    """(name, value) for the lowest and highest value each numeric field accepts."""
    cases = []
    for name in NUMERIC:
        bounds = _bounds(name)
        is_float = _kind(schemas.Hyperparameters.model_fields[name]) is float
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


def _config(name: str, value: Any) -> dict[str, Any]:
    """The runtime config the service makes of a request setting ``name`` to ``value``."""
    method = "dpo" if name == "dpo_beta" else "supervised"
    body = {"dataset_id": "o/d", "model_id": "o/m", "method": method}
    request = schemas.TrainingRequest.model_validate({**body, "hyperparameters": {name: value}})
    hyperparameters = schemas.method_hyperparameters(request)
    return {**EXAMPLE_RUNTIME_CONFIG, "method": method, "hyperparameters": hyperparameters}


def test_every_hyperparameter_has_a_lower_and_an_upper_bound() -> None:
    for name, field in schemas.Hyperparameters.model_fields.items():
        if _kind(field) is bool:  # train_on_inputs: true or false is the whole range
            continue
        bounds = _bounds(name)
        assert {"ge", "gt"} & set(bounds), f"{name} has no lower bound"
        assert {"le", "lt"} & set(bounds), f"{name} has no upper bound"


@pytest.mark.parametrize(("name", "value"), _extremes(), ids=lambda v: str(v)[:12])
def test_extreme_values_pass_the_service_and_the_trainers_loader(name: str, value: Any) -> None:
    config = _config(name, value)
    loaded = ft.config_io.load_runtime_config({"RUNTIME_CONFIG": json.dumps(config)})
    assert getattr(loaded.hyperparameters, name) == value


@pytest.mark.parametrize("value", [True, False])
def test_train_on_inputs_passes_the_service_and_the_trainers_loader(value: bool) -> None:
    config = _config("train_on_inputs", value)
    loaded = ft.config_io.load_runtime_config({"RUNTIME_CONFIG": json.dumps(config)})
    assert loaded.hyperparameters.train_on_inputs is value


@pytest.mark.parametrize(("name", "value"), _extremes(), ids=lambda v: str(v)[:12])
def test_extreme_values_seed_and_configure_the_trainer(
    training_stack: None, tmp_path: Path, name: str, value: Any
) -> None:
    from transformers import set_seed

    config = _config(name, value)
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
