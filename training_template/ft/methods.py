"""The training methods, chosen by runtime_config.json's ``method``.

A method is a module of this package that provides:

- ``FORMATS``: the dataset formats it trains on (as ``ft.data.detect_format`` names them);
- ``STEP_METRIC_KEYS``: keys of the trainer's logs that its ``FT_METRICS`` step lines
  carry besides the common ones (``ft.metrics.metrics_callback``);
- ``prepare_dataset(dataset, fmt, tokenizer, config, name) -> dataset``: the rows its
  trainer reads, built before the model is loaded (``None`` passes through; ``name``
  says which data it is in messages);
- ``build_trainer(model, tokenizer, dataset, hp, output_dir, *, config, use_cuda, bf16,
  distributed, eval_dataset, callbacks) -> trainer``: a transformers Trainer on a LoRA
  adapter whose callbacks are exactly ``callbacks``.

``ft.run.train`` does everything else (data, model, checkpoints, resume, final/).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ft.errors import TemplateError

# method name (runtime_config.json) -> module of this package
METHODS = {"supervised": "sft", "dpo": "dpo"}
DEFAULT_METHOD = "supervised"


def method_module(name: str) -> ModuleType:
    """The module that implements ``name``; a TemplateError for a method not built in."""
    module = METHODS.get(name)
    if module is None:
        raise TemplateError(
            f"RUNTIME_CONFIG: method {name!r} is not supported by this template; "
            f"it runs {', '.join(METHODS)}"
        )
    return importlib.import_module(f"ft.{module}")
