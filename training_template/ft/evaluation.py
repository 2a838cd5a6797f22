"""Did it get better? The base model beside the tuned one, inside the job.

With a validation set:

- before the first step, the **base** model is evaluated on it (the LoRA adapter
  switched off with peft's ``disable_adapter()``: on a fresh run the adapter is still
  zero, on a resumed one it is not): the ``FT_METRICS`` eval line with
  ``"model": "base"`` at the run's starting step;
- the tuned model at each epoch's end (the trainer's ``eval_strategy``) and at the end
  when the last epoch's evaluation did not land on the last step: ``"model": "tuned"``;
- after training, up to ``eval_samples`` held-out prompts (each example up to its last
  weighted assistant turn; the reference is that turn's text) are answered greedily,
  at most SAMPLE_MAX_NEW_TOKENS new tokens, by the base model (adapter off: the same
  weights, no second copy) and by the tuned one: one ``"type": "sample"`` line each.

``eval_loss`` and ``eval_mean_token_accuracy`` are the trainer's: TRL's SFTTrainer
counts exactly the tokens whose label is not -100 (ft.labels), and averages each
evaluation batch's value over the batches, as transformers averages ``eval_loss``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ft.labels import ChatRenderer, _loaded, chat_messages, chat_tools
from ft.metrics import Sink, emit, finite

log = logging.getLogger("train")

# Each sample's answers: greedy, at most this many new tokens.
SAMPLE_MAX_NEW_TOKENS = 256
# Each text of a sample line is cut to this many characters (an ellipsis included): a
# prompt keeps its end (where the question is), the other texts their start.
SAMPLE_TEXT_CHARS = 2000
ELLIPSIS = "…"


@dataclasses.dataclass(frozen=True)
class SamplePrompt:
    """A held-out prompt as the model sees it, and the answer the data gives."""

    text: str  # the rendered prompt (chat: through the chat template, generation prompt on)
    reference: str
    add_special_tokens: bool  # as ft.labels tokenizes this format


def cut(text: str, *, keep_end: bool = False) -> str:
    """``text`` in at most SAMPLE_TEXT_CHARS characters (an ellipsis marks the cut)."""
    if len(text) <= SAMPLE_TEXT_CHARS:
        return text
    if keep_end:
        return ELLIPSIS + text[-(SAMPLE_TEXT_CHARS - 1) :]
    return text[: SAMPLE_TEXT_CHARS - 1] + ELLIPSIS


def _turn_text(message: Mapping[str, Any]) -> str:
    """An assistant turn's text: its content, then its tool calls as JSON."""
    text = str(message.get("content") or "")
    calls = [call["function"] for call in message.get("tool_calls") or ()]
    if calls:
        text += ("\n" if text else "") + json.dumps(calls, ensure_ascii=False)
    return text


def sample_prompt(
    example: Mapping[str, Any], fmt: str, tokenizer: Any, renderer: ChatRenderer | None = None
) -> SamplePrompt | None:
    """The prompt and reference of one held-out example, or None when it has none
    (``text`` rows, a chat without a weighted assistant turn, other formats)."""
    if fmt == "messages":
        renderer = renderer or ChatRenderer(tokenizer)
        messages, weights = chat_messages(
            _loaded(example["messages"]), developer_role=renderer.developer_role
        )
        turns = [i for i, weight in enumerate(weights) if weight == 1]
        if not turns:
            return None
        last = turns[-1]
        text = renderer.render(
            messages[:last], chat_tools(_loaded(example.get("tools"))), add_generation_prompt=True
        )
        return SamplePrompt(text, _turn_text(messages[last]), add_special_tokens=False)
    if fmt == "prompt_completion":
        return SamplePrompt(
            str(example["prompt"]), str(example["completion"]), add_special_tokens=True
        )
    return None


def sample_prompts(dataset: Any, fmt: str, tokenizer: Any, count: int) -> list[SamplePrompt]:
    """The first ``count`` examples of ``dataset`` that have a prompt, in order."""
    if count <= 0 or dataset is None:
        return []
    renderer = ChatRenderer(tokenizer) if fmt == "messages" else None
    prompts: list[SamplePrompt] = []
    for example in dataset:
        if len(prompts) == count:
            break
        try:
            prompt = sample_prompt(example, fmt, tokenizer, renderer)
        except Exception as exc:  # noqa: BLE001 (a template that cannot render it: skip it)
            log.warning("a held-out example cannot be a sample: %s", f"{exc}".splitlines()[0])
            continue
        if prompt is not None:
            prompts.append(prompt)
    if len(prompts) < count:
        log.info(
            "eval_samples asks for %d held-out prompts; the validation set has %d with a "
            "prompt (%s data)",
            count,
            len(prompts),
            fmt,
        )
    return prompts


@contextlib.contextmanager
def base_model(model: Any) -> Iterator[None]:
    """The base model: ``model``'s LoRA adapter switched off inside the block (peft)."""
    with model.disable_adapter():
        yield


def _answer(model: Any, tokenizer: Any, prompt: SamplePrompt) -> str:
    """The model's greedy answer to ``prompt`` (new tokens only, special tokens dropped)."""
    import torch
    from transformers import GenerationConfig

    encoded = tokenizer(
        prompt.text, add_special_tokens=prompt.add_special_tokens, return_tensors="pt"
    )
    device = next(model.parameters()).device
    input_ids = encoded["input_ids"].to(device)
    new_tokens = SAMPLE_MAX_NEW_TOKENS
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None)
    if isinstance(limit, int) and limit > 0:
        new_tokens = min(new_tokens, limit - input_ids.shape[1])
    if new_tokens <= 0:
        return ""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    generation = GenerationConfig(  # type: ignore[no-untyped-call]
        max_new_tokens=new_tokens,
        do_sample=False,
        num_beams=1,
        use_cache=True,
        eos_token_id=eos if eos is not None else tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.inference_mode():
        output = model.generate(
            input_ids=input_ids,
            attention_mask=encoded["attention_mask"].to(device),
            generation_config=generation,
        )
    text: str = tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True)
    return text


class Evaluation:
    """The base and tuned evaluations and the samples of one run (see the module).

    ``callback`` is ft.metrics' callback: it prints every eval line; ``sinks`` receive
    the sample lines too.
    """

    def __init__(
        self,
        trainer: Any,
        callback: Any,
        *,
        enabled: bool,
        start_step: int,
        start_epoch: float | None,
        sinks: Sequence[Sink] = (),
    ) -> None:
        self.trainer = trainer
        self.callback = callback
        self.enabled = enabled
        self.start_step = start_step
        self.start_epoch = start_epoch
        self.sinks = sinks
        self.base: dict[str, Any] | None = None
        self.samples: list[dict[str, Any]] = []

    def evaluate_base(self, total_steps: int) -> None:
        """Evaluate the base model (adapter off) before the first step; every rank."""
        if not self.enabled:
            return
        self.callback.evaluating = {
            "model": "base",
            "step": self.start_step,
            "total_steps": total_steps,
            "epoch": self.start_epoch,
        }
        try:
            with base_model(self.trainer.model):
                self.trainer.evaluate()
        finally:
            self.callback.evaluating = {}
        self.base = self.callback.last_eval  # main process only

    def evaluate_tuned_at_end(self) -> None:
        """Evaluate the tuned model at the last step unless an epoch's end did; every rank
        decides alike (the trainer's log history is the same on each)."""
        if not self.enabled:
            return
        state = self.trainer.state
        done = any(
            "eval_loss" in entry and entry.get("step") == state.global_step
            for entry in state.log_history
        )
        if not done:
            self.trainer.evaluate()

    def answer_samples(self, dataset: Any, fmt: str, tokenizer: Any, count: int) -> None:
        """Answer up to ``count`` held-out prompts with the base and the tuned model and
        print one sample line each (main process only)."""
        prompts = sample_prompts(dataset, fmt, tokenizer, count) if self.enabled else []
        if not prompts:
            return
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        was_training = model.training
        model.eval()
        try:
            with base_model(model):
                base = [_answer(model, tokenizer, prompt) for prompt in prompts]
            tuned = [_answer(model, tokenizer, prompt) for prompt in prompts]
        finally:
            model.train(was_training)
        for index, (prompt, before, after) in enumerate(zip(prompts, base, tuned, strict=True)):
            record = {
                "type": "sample",
                "index": index,
                "prompt": cut(prompt.text, keep_end=True),
                "reference": cut(prompt.reference),
                "base": cut(before),
                "tuned": cut(after),
            }
            self.samples.append(record)
            emit(record, self.sinks)

    def summary_fields(self) -> dict[str, float | None]:
        """What the summary line and training_summary.json add: the base evaluation and
        the last tuned one (null without a validation set)."""
        tuned = next(
            (e for e in reversed(self.trainer.state.log_history) if "eval_loss" in e), None
        )
        base = self.base or {}
        return {
            "base_eval_loss": finite(base.get("eval_loss")),
            "eval_loss": finite(tuned.get("eval_loss")) if tuned else None,
            "base_eval_mean_token_accuracy": finite(base.get("eval_mean_token_accuracy")),
            "eval_mean_token_accuracy": (
                finite(tuned.get("eval_mean_token_accuracy")) if tuned else None
            ),
        }
