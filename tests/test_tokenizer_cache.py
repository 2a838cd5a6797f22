"""jobs/tokenizer.py: one fetch per model and process, bounded, failures remembered for a while."""

from __future__ import annotations

import threading
from typing import Any

from finetune_api.files.check import example_text
from finetune_api.jobs.estimate import Tally
from finetune_api.jobs.tokenizer import HubTokenizers, TokenizerCounter
from loopback.hf_hub import tiny_tokenizer_json


def _tokenizer() -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_str(tiny_tokenizer_json(["user assistant hello world"]).decode())


def test_one_fetch_per_model_bounded_and_failures_retried_later() -> None:
    fetched: list[str] = []
    now = [0.0]

    def fetch(model_id: str) -> Any:
        fetched.append(model_id)
        if model_id.startswith("gated/"):
            raise PermissionError("401")
        return _tokenizer()

    hub = HubTokenizers(fetch=fetch, max_models=2, retry_after=60, clock=lambda: now[0])
    assert isinstance(hub("org/a"), TokenizerCounter)
    assert hub("org/a") is hub("org/a")
    assert fetched == ["org/a"]
    hub("org/b")
    hub("org/c")  # org/a, least recently used, goes
    hub("org/a")
    assert fetched == ["org/a", "org/b", "org/c", "org/a"]
    assert hub("gated/x") is None and hub("gated/x") is None
    assert fetched.count("gated/x") == 1
    now[0] = 61.0
    assert hub("gated/x") is None
    assert fetched.count("gated/x") == 2


def test_concurrent_requests_for_one_model_fetch_it_once() -> None:
    fetched: list[str] = []
    gate = threading.Event()

    def fetch(model_id: str) -> Any:
        fetched.append(model_id)
        gate.wait(5)
        return _tokenizer()

    hub = HubTokenizers(fetch=fetch)
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(hub("org/a"))) for _ in range(5)]
    for thread in threads:
        thread.start()
    gate.set()
    for thread in threads:
        thread.join()
    assert fetched == ["org/a"] and len({id(r) for r in results}) == 1


def test_batched_and_single_counts_agree() -> None:
    counter = TokenizerCounter(_tokenizer())
    examples = [
        {
            "messages": [
                {"role": "user", "content": "hello " * n},
                {"role": "assistant", "content": "world"},
            ]
        }
        for n in range(1, 1200)
    ]
    tally = Tally(100, counter)
    for example in examples:
        tally(example)
    tally.flush()
    singles = [counter.count(example) for example in examples]
    assert tally.examples == len(examples) and tally.tokens == sum(singles)
    assert tally.over == sum(t > 100 for t in singles)
    assert singles[0] == len(example_text(examples[0]).replace(":", " : ").split())


def test_out_of_time_the_whole_file_is_counted_by_the_rule() -> None:
    from finetune_api.jobs.estimate import BATCH_EXAMPLES, RuleCounter, rule_tokens

    now = [0.0]
    counter = TokenizerCounter(_tokenizer())

    def slow_clock() -> float:
        now[0] += 1.0  # each batch takes a second
        return now[0]

    examples = [{"text": "hello world " * (n % 40 + 1)} for n in range(BATCH_EXAMPLES * 5)]
    tally = Tally(30, counter, deadline=2.5, clock=slow_clock)
    for example in examples:
        tally(example)
    tally.flush()
    rules = [rule_tokens(example) for example in examples]
    assert isinstance(tally.counter, RuleCounter) and tally.counter.method == "estimate"
    assert tally.examples == len(examples)
    assert tally.tokens == sum(rules) and tally.over == sum(r > 30 for r in rules)
    # With time to spare, the tokenizer counts everything.
    on_time = Tally(30, counter, deadline=1e9, clock=slow_clock)
    for example in examples:
        on_time(example)
    on_time.flush()
    assert on_time.counter is counter and on_time.examples == len(examples)
    assert on_time.tokens == sum(counter.count(example) for example in examples)
