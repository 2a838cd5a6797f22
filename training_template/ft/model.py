"""The base model and its tokenizer."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any


def _quant_method(model_config: Any) -> str | None:
    quant = getattr(model_config, "quantization_config", None)
    if isinstance(quant, Mapping):
        return quant.get("quant_method")
    return getattr(quant, "quant_method", None)


def load_tokenizer(model_id: str, token: str | None) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_id, token=token)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(model_id: str, token: str | None, use_cuda: bool, bf16: bool) -> Any:
    """The base model: bf16 weights on capable GPUs, fp32 on the CPU."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model_config = AutoConfig.from_pretrained(model_id, token=token)
    kwargs: dict[str, Any] = {"token": token, "dtype": torch.bfloat16 if bf16 else torch.float32}
    if _quant_method(model_config) == "mxfp4":
        # e.g. openai/gpt-oss-*: LoRA trains on the weights dequantized to bf16.
        from transformers import Mxfp4Config  # type: ignore[attr-defined]

        kwargs["quantization_config"] = Mxfp4Config(dequantize=True)
        kwargs["dtype"] = torch.bfloat16
    if use_cuda:
        # Straight onto this process's GPU (one process per GPU under torchrun).
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    model = AutoModelForCausalLM.from_pretrained(model_id, **kwargs)
    model.config.use_cache = False  # incompatible with gradient checkpointing
    return model
