"""Supervised fine-tuning (method ``supervised``): TRL's SFTTrainer on a LoRA adapter."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ft.config_io import Hyperparameters, RuntimeConfig
from ft.labels import build_labels
from ft.metrics import metrics_callback

# What this method trains on, and what its step lines carry besides the common keys.
FORMATS = ("messages", "text", "prompt_completion")
STEP_METRIC_KEYS: tuple[str, ...] = ()

# Training settings that are not request parameters. Change them here.
LORA_TARGET_MODULES = "all-linear"
LR_SCHEDULER = "cosine"
WARMUP_RATIO = 0.03
LOGGING_STEPS = 1


def prepare_dataset(
    dataset: Any, fmt: str, tokenizer: Any, config: RuntimeConfig, name: str = "training data"
) -> Any:
    """``input_ids`` and ``labels`` (see ft.labels): SFTTrainer takes them as they are
    (a dataset with ``input_ids`` is not tokenized again, its ``labels`` are kept)."""
    if dataset is None:
        return None
    hp = config.hyperparameters
    return build_labels(
        dataset,
        fmt,
        tokenizer,
        train_on_inputs=bool(hp.train_on_inputs),
        max_length=hp.max_seq_length,
        name=name,
    )


def build_trainer(
    model: Any,
    tokenizer: Any,
    dataset: Any,
    hp: Hyperparameters,
    output_dir: Path,
    *,
    config: RuntimeConfig | None = None,
    use_cuda: bool,
    bf16: bool,
    distributed: bool,
    eval_dataset: Any = None,
    callbacks: Sequence[Any] = (),
) -> Any:
    """An SFTTrainer with a LoRA adapter, every hyperparameter applied.

    ``callbacks`` replace the default FT_METRICS callback (pass it among them).
    """
    from trl import SFTTrainer  # type: ignore[attr-defined]

    args, peft_config = trainer_configs(
        hp,
        output_dir,
        use_cuda=use_cuda,
        bf16=bf16,
        distributed=distributed,
        evaluate=eval_dataset is not None,
    )
    return lora_trainer(
        SFTTrainer,
        model,
        tokenizer,
        dataset,
        args,
        peft_config,
        eval_dataset=eval_dataset,
        callbacks=list(callbacks) or [metrics_callback()],
    )


def lora_trainer(
    trainer_class: Any,
    model: Any,
    tokenizer: Any,
    dataset: Any,
    args: Any,
    peft_config: Any,
    *,
    eval_dataset: Any,
    callbacks: Sequence[Any],
    **method_settings: Any,
) -> Any:
    """A TRL ``trainer_class`` (SFTTrainer, DPOTrainer) on a LoRA adapter
    (``peft_config``) whose callbacks are exactly ``callbacks``; ``method_settings``
    are the method's own trainer arguments (DPO's ``ref_model``)."""
    from transformers import PrinterCallback

    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=list(callbacks),
        **method_settings,
    )
    trainer.remove_callback(PrinterCallback)  # the FT_METRICS lines replace its prints
    return trainer


def trainer_configs(
    hp: Hyperparameters,
    output_dir: Path,
    *,
    use_cuda: bool,
    bf16: bool,
    distributed: bool,
    evaluate: bool = False,
    config_class: Any = None,
    **method_settings: Any,
) -> tuple[Any, Any]:
    """The method's config and the LoraConfig that carry every hyperparameter to the trainer.

    ``config_class``: the method's TRL config (SFTConfig when ``None``), given the
    transformers TrainingArguments every method shares, ``max_length`` and
    ``method_settings`` (DPO's ``beta``). ``evaluate``: a validation set exists,
    evaluated at each epoch's end.
    """
    if config_class is None:
        from trl import SFTConfig  # type: ignore[attr-defined]

        config_class = SFTConfig
    args = config_class(
        output_dir=str(output_dir),
        num_train_epochs=hp.num_epochs,
        per_device_train_batch_size=hp.batch_size,
        per_device_eval_batch_size=hp.batch_size,
        eval_strategy="epoch" if evaluate else "no",
        include_num_input_tokens_seen="non_padding",
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        learning_rate=hp.learning_rate,
        seed=hp.seed,
        data_seed=hp.seed,
        bf16=bf16,
        fp16=False,
        use_cpu=not use_cuda,
        activation_checkpointing=True,  # a.k.a. gradient checkpointing
        activation_checkpointing_kwargs={"use_reentrant": False},
        lr_scheduler_type=LR_SCHEDULER,
        warmup_steps=WARMUP_RATIO,
        logging_steps=LOGGING_STEPS,
        logging_first_step=True,
        save_strategy="no",  # checkpoint_steps() decides, through a callback
        report_to="none",
        disable_tqdm=True,
        ddp_find_unused_parameters=False if distributed else None,
        max_length=hp.max_seq_length,
        **method_settings,
    )
    return args, lora_config(hp)


def lora_config(hp: Hyperparameters) -> Any:
    """The LoRA adapter every method trains."""
    from peft import LoraConfig

    return LoraConfig(
        r=hp.lora_rank,
        lora_alpha=hp.lora_alpha,
        lora_dropout=hp.lora_dropout,
        target_modules=LORA_TARGET_MODULES,
        bias="none",
        task_type="CAUSAL_LM",
    )
