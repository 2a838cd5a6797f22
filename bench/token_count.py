"""The dry run's token count vs the tokenizer alone over the same texts.

A byte-level BPE tokenizer (8,000 tokens, the kind most chat models ship) is
trained here with the ``tokenizers`` library on the benchmark's own support
chats; ``examples`` chats (~1 kB each, as in ``bench.file_check``) make the file.

* **ours**: what a dry run does with a training file's bytes once they arrive:
  ``JsonlCheck`` with ``on_example=Tally(...)`` and the model tokenizer's
  ``WorkerCounter`` (``finetune_api.jobs.tokenizer``: the tokenizer runs in a
  process of its own, texts and counts cross a pipe as JSON lines), then
  ``tally.flush()``: the check, each example's text (``example_text``), batched
  counting and the tally of examples over ``max_seq_length``. The worker is
  started once (as once per model and instance in the service);
  ``worker_start_ms`` is that start (python -I, import tokenizers, load the file).
* **baseline**: the tokenizer alone over the same texts, already built:
  ``encode_batch_fast`` on batches of the same size (``BATCH_EXAMPLES``) in one
  loop, summing the lengths.

Both count the same number of tokens (checked). The ratio is ours / baseline
throughput (goal ≥ 0.5); medians of ``runs`` interleaved runs.

Run alone: ``python -m bench.token_count``.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench.file_check import example_lines


def _tokenizer(lines: list[bytes]) -> Any:
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from finetune_api.files.check import example_text

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # type: ignore[assignment]
    tokenizer.decoder = decoders.ByteLevel()  # type: ignore[assignment]
    trainer = trainers.BpeTrainer(vocab_size=8000, special_tokens=["<s>"])  # type: ignore[call-arg]
    texts = [example_text(json.loads(line)) for line in lines[:2000]]
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def run(examples: int = 50_000, runs: int = 5) -> dict[str, Any]:
    import json
    import random
    import shutil
    import tempfile
    from pathlib import Path

    from finetune_api.files.check import JsonlCheck, example_text
    from finetune_api.jobs.estimate import BATCH_EXAMPLES, Tally
    from finetune_api.jobs.tokenizer import WorkerCounter

    pool = example_lines(4000)
    rng = random.Random(7)
    lines = [pool[rng.randrange(len(pool))] for _ in range(examples)]
    data = b"".join(lines)
    tokenizer = _tokenizer(pool)
    texts = [example_text(json.loads(line)) for line in lines]
    scratch = Path(tempfile.mkdtemp(prefix="bench-tokenizer-"))
    (scratch / "tokenizer.json").write_text(tokenizer.to_str(), encoding="utf-8")
    started = time.perf_counter()
    worker = WorkerCounter.start(
        scratch / "tokenizer.json", load_seconds=60, batch_seconds=60, memory_bytes=2 * 1024**3
    )
    worker_start_ms = round((time.perf_counter() - started) * 1000, 1)
    shutil.rmtree(scratch)

    def ours() -> tuple[float, int]:
        started = time.perf_counter()
        tally = Tally(2048, worker)
        check = JsonlCheck(on_example=tally)
        for start in range(0, len(data), 8192):
            check.feed(data[start : start + 8192])
        check.finish()
        tally.flush()
        return time.perf_counter() - started, tally.tokens

    def baseline() -> tuple[float, int]:
        started = time.perf_counter()
        total = 0
        for start in range(0, len(texts), BATCH_EXAMPLES):
            batch = tokenizer.encode_batch_fast(texts[start : start + BATCH_EXAMPLES])
            total += sum(map(len, batch))
        return time.perf_counter() - started, total

    ours(), baseline()  # warm-up
    ours_s: list[float] = []
    base_s: list[float] = []
    tokens = set()
    for index in range(runs):
        for kind in ("ours", "baseline") if index % 2 else ("baseline", "ours"):
            seconds, counted = ours() if kind == "ours" else baseline()
            (ours_s if kind == "ours" else base_s).append(seconds)
            tokens.add(counted)
    worker.close()
    assert len(tokens) == 1, f"ours and the baseline counted differently: {tokens}"
    ours_m, base_m = statistics.median(ours_s), statistics.median(base_s)
    return {
        "examples": examples,
        "bytes": len(data),
        "tokens": tokens.pop(),
        "ours_seconds": round(ours_m, 3),
        "baseline_seconds": round(base_m, 3),
        "ours_examples_per_s": round(examples / ours_m),
        "baseline_examples_per_s": round(examples / base_m),
        "ratio": round(base_m / ours_m, 2),
        "worker_start_ms": worker_start_ms,
        "samples": {"ours": ours_s, "baseline": base_s},
    }


if __name__ == "__main__":
    import json as _json

    print(_json.dumps({k: v for k, v in run().items() if k != "samples"}, indent=2))
