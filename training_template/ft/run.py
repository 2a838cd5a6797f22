"""One training run, start to end: checks and fetches first, then the heavy imports,
the data, the model, the method's trainer, and final/ with its summary."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ft.checkpoints import (
    Checkpoint,
    checkpoint_marker_callback,
    checkpoint_schedule_callback,
    resolve_resume,
)
from ft.config_io import DataFile, RuntimeConfig, checkpoint_dir, hf_token, resolve_eval_samples
from ft.data import fetch_user_files, load_training_data, split_validation
from ft.errors import TemplateError
from ft.evaluation import Evaluation
from ft.labels import preview_example
from ft.launch import expected_optimizer_steps
from ft.methods import method_module
from ft.metrics import emit, finite_losses, metrics_callback, summary_record
from ft.model import load_model, load_tokenizer
from ft.tracking import check_integrations, start_reporting

log = logging.getLogger("train")

SUMMARY_FILE = "training_summary.json"
FINAL_DIR = "final"


@dataclasses.dataclass(frozen=True)
class Prepared:
    """What main() checks and fetches before the heavy imports and any re-launch."""

    resume: Checkpoint | None
    files: dict[str, Path]


def prepare(config: RuntimeConfig, environ: Mapping[str, str]) -> Prepared:
    """The checkpoint to resume from (checked) and the user's files (fetched, verified).

    Either failing stops the job in about a second, before torch is imported.
    """
    resume = resolve_resume(config, environ)
    check_integrations(config, environ)
    return Prepared(resume=resume, files=fetch_user_files(config))


def train(
    config: RuntimeConfig, environ: Mapping[str, str], prepared: Prepared | None = None
) -> dict[str, Any]:
    """Run the fine-tuning; returns the summary written to final/training_summary.json."""
    if prepared is None:
        prepared = prepare(config, environ)
    resume = prepared.resume
    method = method_module(config.method)

    import torch
    from accelerate import PartialState
    from transformers import set_seed

    started = time.monotonic()
    hp = config.hyperparameters
    token = hf_token(environ)
    use_cuda = torch.cuda.is_available()
    bf16 = use_cuda and torch.cuda.is_bf16_supported()
    state = PartialState()
    distributed = state.num_processes > 1
    out_dir = checkpoint_dir(environ)
    log.info(
        "model=%s data=%s device=%s processes=%d bf16=%s hf_token=%s output=%s",
        config.model_id,
        config.data_source,
        "cuda" if use_cuda else "cpu",
        state.num_processes,
        bf16,
        "set" if token else "unset",
        out_dir,
    )
    log.info("hyperparameters %s", json.dumps(dataclasses.asdict(hp)))
    set_seed(hp.seed)

    requested_gpus = (config.raw.get("compute") or {}).get("gpu_count")
    gpus_here = torch.cuda.device_count()
    if use_cuda and isinstance(requested_gpus, int) and requested_gpus != gpus_here:
        log.warning(
            "the request asked for %d GPU(s) per node; this node has %d", requested_gpus, gpus_here
        )

    # Each node downloads once; its other processes then read the local copy / cache.
    with state.local_main_process_first():
        dataset, fmt, eval_dataset = load_training_data(config, token, prepared.files)
        if fmt not in method.FORMATS:
            raise TemplateError(
                f"method {config.method!r} trains on {' or '.join(map(repr, method.FORMATS))} "
                f"data, and this data is {fmt!r}"
            )
        tokenizer = load_tokenizer(config.model_id, token)
        # Fails here, before the model download, when a chat dataset meets a
        # tokenizer without a chat template.
        first_example = preview_example(dataset[0], fmt, tokenizer)
        if eval_dataset is not None:
            if hp.validation_split > 0:
                log.warning("validation_file is the evaluation set; validation_split is ignored")
            log.info("evaluating on the validation_file's %d examples", len(eval_dataset))
        else:
            dataset, eval_dataset = split_validation(dataset, hp.validation_split, hp.seed)
            if eval_dataset is not None:
                log.info(
                    "holding out %d examples for evaluation at each epoch's end", len(eval_dataset)
                )
        held_out = eval_dataset  # as the data has it: the samples' prompts come from it
        # What carries loss, built before the model download: a template that cannot
        # render the data (tool calls, say) stops the job here.
        dataset = method.prepare_dataset(dataset, fmt, tokenizer, config, "training data")
        eval_dataset = method.prepare_dataset(
            eval_dataset, fmt, tokenizer, config, "evaluation data"
        )
        model = load_model(config.model_id, token, use_cuda, bf16)
    # What the job runs with, in its summary and checkpoint marker: 5 by default with a
    # validation set, else none.
    hp = dataclasses.replace(hp, eval_samples=resolve_eval_samples(hp, eval_dataset is not None))
    total = expected_optimizer_steps(len(dataset), hp, state.num_processes)
    log.info(
        "dataset: %d examples, format %r; expecting %d optimizer steps", len(dataset), fmt, total
    )
    if resume is not None:
        if resume.max_steps is not None and resume.max_steps != total:
            log.warning(
                "the checkpoint's run had %d steps in all; this one has %d",
                resume.max_steps,
                total,
            )
        log.info("continuing at step %d of %d", resume.global_step + 1, total)
    log.info("first example starts: %s", json.dumps(first_example[:200]))

    reporter = start_reporting(config) if state.is_main_process else None
    sinks = [reporter] if reporter is not None else []
    metrics = metrics_callback(method.STEP_METRIC_KEYS, sinks)
    marker = {
        "model_id": config.model_id,
        "method": config.method,
        "data": config.data_source,
        "seed": hp.seed,
        "hyperparameters": dataclasses.asdict(hp),
    }
    trainer = method.build_trainer(
        model,
        tokenizer,
        dataset,
        hp,
        out_dir,
        config=config,
        use_cuda=use_cuda,
        bf16=bf16,
        distributed=distributed,
        eval_dataset=eval_dataset,
        callbacks=[metrics, checkpoint_schedule_callback(), checkpoint_marker_callback(marker)],
    )
    # The base model beside the tuned one (ft.evaluation); supervised runs with a
    # validation set.
    evaluation = Evaluation(
        trainer,
        metrics,
        enabled=eval_dataset is not None and config.method == "supervised",
        start_step=resume.global_step if resume else 0,
        start_epoch=resume.epoch if resume else 0.0,
        sinks=sinks,
    )
    evaluation.evaluate_base(total)
    result = trainer.train(resume_from_checkpoint=str(resume.path) if resume else None)
    evaluation.evaluate_tuned_at_end()
    final_dir = out_dir / FINAL_DIR
    trainer.save_model(str(final_dir))  # adapter + tokenizer; every rank must call it
    summary: dict[str, Any] = {}
    if state.is_main_process:
        evaluation.answer_samples(held_out, fmt, tokenizer, hp.eval_samples or 0)
        losses = finite_losses(trainer.state.log_history)
        record = summary_record(
            trainer,
            metrics.last_step,
            round(time.monotonic() - started, 3),
            method.STEP_METRIC_KEYS,
        )
        eval_fields = evaluation.summary_fields()
        record.update(eval_fields)
        summary = {
            "model_id": config.model_id,
            "method": config.method,
            "dataset_id": config.dataset_id,
            "training_file": _file_summary(config.training_file),
            "validation_file": _file_summary(config.validation_file),
            "dataset_format": fmt,
            "num_examples": len(dataset),
            "num_eval_examples": len(eval_dataset) if eval_dataset is not None else 0,
            "first_example": first_example,
            "hyperparameters": dataclasses.asdict(hp),
            "world_size": state.num_processes,
            "device": "cuda" if use_cuda else "cpu",
            "bf16": bf16,
            "resumed_from": _resume_summary(config, resume),
            "global_step": trainer.state.global_step,
            "total_steps": trainer.state.max_steps,
            "epochs": trainer.state.epoch,
            "final_loss": record["final_loss"],
            "best_eval_loss": record["best_eval_loss"],
            # The mean of this run's step losses (transformers' training_loss).
            "train_loss": result.training_loss,
            "losses": losses,
            "log_history": trainer.state.log_history,
            "runtime_seconds": record["runtime_seconds"],
            **eval_fields,
            "samples": evaluation.samples,
        }
        emit(record, sinks)
        if reporter is not None:
            reporter.finish()
        final_dir.mkdir(parents=True, exist_ok=True)
        (final_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str))
        log.info(
            "done: %d steps, final loss %s, adapter in %s",
            trainer.state.global_step,
            record["final_loss"],
            final_dir,
        )
    return summary


def _file_summary(data_file: DataFile | None) -> dict[str, Any] | None:
    if data_file is None:
        return None
    return {"source": data_file.source, "sha256": data_file.sha256, "bytes": data_file.bytes}


def _resume_summary(config: RuntimeConfig, resume: Checkpoint | None) -> dict[str, Any] | None:
    if resume is None:
        return None
    return {
        **(config.resume_from or {}),
        "checkpoint": resume.path.name,
        "global_step": resume.global_step,
    }
