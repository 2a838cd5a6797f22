"""What a job would cost before it starts: examples, tokens, trained tokens, GPU hours, dollars.

Counted, never invented: tokens come from the model's own tokenizer when it can
be fetched (``tokens_method: "tokenizer"``), otherwise from the documented rule
(``"estimate"``: one token per 4 UTF-8 bytes of text, rounded up per example).
GPU hours and cost are ``null`` unless this service measured the throughput of
earlier jobs of the same model and accelerator, and knows the price; then
``cost_basis`` says where each number came from, else why there is none.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from finetune_api.files.check import example_pieces
from finetune_api.jobs.chat_template import NEEDS, tool_needs

BYTES_PER_TOKEN = 4


def text_rule_tokens(text: str) -> int:
    return max(1, math.ceil(len(text.encode("utf-8")) / BYTES_PER_TOKEN))


def rule_tokens(example: dict[str, Any]) -> int:
    return sum(text_rule_tokens(piece) for piece in example_pieces(example))


def sizes(counts: list[int]) -> tuple[int, int]:
    """(tokens, longest sequence) of one example's piece counts: a single text, or a
    preference pair's prompt + preferred + non-preferred (its longest: the prompt with
    the longer output)."""
    if len(counts) == 3:
        prompt, chosen, rejected = counts
        return prompt + chosen + rejected, prompt + max(chosen, rejected)
    return sum(counts), sum(counts)


class TokenCounter(Protocol):
    method: str

    def count(self, example: dict[str, Any]) -> int: ...


class CountFailed(Exception):
    """The model's tokenizer could not count a batch (it crashed, hung or was refused)."""


@dataclass
class RuleCounter:
    method: str = "estimate"

    def count(self, example: dict[str, Any]) -> int:
        return rule_tokens(example)

    def count_pieces(self, example: dict[str, Any]) -> list[int]:
        return [text_rule_tokens(piece) for piece in example_pieces(example)]


# model_id -> a counter (the tokenizer's, or None when it cannot be fetched)
TokenizerSource = Callable[[str], TokenCounter | None]
# (model_id, accelerator, gpu_count) -> (tokens per second, basis) or (None, reason)
ThroughputSource = Callable[[str, str, int], tuple[float | None, str]]
# (accelerator, gpu_count) -> (USD per hour, basis) or (None, reason)
PriceSource = Callable[[str, int], tuple[float | None, str]]


# Examples whose texts a batching counter encodes in one call (and their characters at most).
BATCH_EXAMPLES = 512
BATCH_CHARS = 4 * 1024 * 1024
# How long the model's tokenizer may count before the dry run answers by the rule instead:
# half of train_http's 120 s timeout (deploy.sh), so a very large file still gets an answer.
TOKENIZER_SECONDS = 60.0


def significant(value: float, digits: int = 4) -> float:
    """``value`` to ``digits`` significant digits (a small job's GPU hours are not 0.0)."""
    return float(f"{value:.{digits}g}")


@dataclass
class Tally:
    """Counts examples, tokens and examples over ``max_seq_length``; call :meth:`flush` at the end.

    A counter with ``count_batch(texts) -> [tokens]`` (the model's tokenizer) gets
    the texts in batches of at most ``BATCH_EXAMPLES`` examples or ``BATCH_CHARS``
    characters, so memory stays bounded however large the file. Beside it the
    rule's counts are kept; once ``deadline`` (``clock()`` time) has passed, the
    tokenizer stops and every figure is the rule's (``counter`` becomes the
    :class:`RuleCounter`, so the answer says ``"estimate"``): one method for the
    whole file, never a mix.
    """

    max_seq_length: int
    counter: TokenCounter
    deadline: float | None = None
    clock: Callable[[], float] = time.monotonic
    examples: int = 0
    tokens: int = 0
    over: int = 0
    _texts: list[str] = field(default_factory=list)
    _shapes: list[int] = field(default_factory=list)  # texts per waiting example
    #: what the examples need the chat template to render (tools, tool_calls, tool messages)
    needs: set[str] = field(default_factory=set)
    _chars: int = 0
    _rule_tokens: int = 0
    _rule_over: int = 0

    def __call__(self, example: dict[str, Any]) -> None:
        if len(self.needs) < len(NEEDS):
            self.needs |= tool_needs(example)
        batch = getattr(self.counter, "count_batch", None)
        if batch is None:
            count_pieces = getattr(self.counter, "count_pieces", None)
            if count_pieces is not None:
                self._add(*sizes(count_pieces(example)))
            else:
                tokens = self.counter.count(example)
                self._add(tokens, tokens)
            return
        pieces = example_pieces(example)
        rule, rule_longest = sizes([text_rule_tokens(piece) for piece in pieces])
        self._rule_tokens += rule
        self._rule_over += rule_longest > self.max_seq_length
        self._texts.extend(pieces)
        self._shapes.append(len(pieces))
        self._chars += sum(map(len, pieces))
        if len(self._shapes) >= BATCH_EXAMPLES or self._chars >= BATCH_CHARS:
            self.flush()

    def flush(self) -> None:
        """Count the texts still waiting for a batch."""
        if not self._texts:
            return
        texts, self._texts, self._chars = self._texts, [], 0
        shapes, self._shapes = self._shapes, []
        try:
            counts = self.counter.count_batch(texts)  # type: ignore[attr-defined]
        except CountFailed:
            # The tokenizer failed: the rule for the whole file, as when out of time.
            self.examples += len(shapes)
            self.tokens, self.over = self._rule_tokens, self._rule_over
            self.counter = RuleCounter()
            return
        start = 0
        for shape in shapes:
            self._add(*sizes(counts[start : start + shape]))
            start += shape
        if self.deadline is not None and self.clock() > self.deadline:
            # Out of time: the rule's counts of every example so far, and the rule from here.
            self.tokens, self.over = self._rule_tokens, self._rule_over
            self.counter = RuleCounter()

    def _add(self, tokens: int, longest: int) -> None:
        self.examples += 1
        self.tokens += tokens
        self.over += longest > self.max_seq_length


def estimate(
    tally: Tally | None,
    *,
    num_epochs: int,
    model_id: str,
    accelerator: str,
    gpu_count: int,
    throughput: ThroughputSource | None = None,
    price: PriceSource | None = None,
    method: str = "supervised",
    chat_template_problem: str | None = None,
) -> dict[str, Any]:
    """The ``estimate`` object of a dry run (CONTRACT "Your own data").

    ``method`` ``dpo``: tokens are the prompt and both outputs; GPU hours and cost
    stay null, since the throughput measured is of supervised runs and a DPO step
    also runs the reference pass (the base model, adapter disabled) on both outputs.
    """
    if tally is None:  # a hub dataset: its rows are not ours to read here
        return {
            "examples": None,
            "tokens": None,
            "tokens_method": None,
            "examples_over_max_seq_length": None,
            "trained_tokens": None,
            "gpu_hours": None,
            "cost_usd": None,
            "cost_basis": "a Hugging Face dataset is not counted before the job: "
            "upload it as a training_file to get an estimate",
            "chat_template_problem": None,
        }
    trained = tally.tokens * num_epochs
    rate, rate_basis = (
        throughput(model_id, accelerator, gpu_count)
        if throughput
        else (None, "no throughput measured yet for this model and accelerator")
    )
    if method == "dpo":
        rate, rate_basis = (
            None,
            "no DPO throughput measured: the throughput known is of supervised runs, and a "
            "DPO step also runs the reference pass on both outputs",
        )
    gpu_hours = cost = None
    basis = rate_basis
    if rate:
        gpu_hours = significant(trained / rate / 3600 * gpu_count)
        hourly, price_basis = price(accelerator, gpu_count) if price else (None, "no price known")
        basis = f"{rate_basis}; {price_basis}"
        if hourly is not None:
            cost = round(trained / rate / 3600 * hourly, 2)
    return {
        "examples": tally.examples,
        "tokens": tally.tokens,
        "tokens_method": tally.counter.method,
        "examples_over_max_seq_length": tally.over,
        "trained_tokens": trained,
        "gpu_hours": gpu_hours,
        "cost_usd": cost,
        "cost_basis": basis,
        "chat_template_problem": chat_template_problem,
    }
