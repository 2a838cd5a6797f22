"""A caller-named tokenizer can neither end nor stall the worker, nor exhaust its memory
(issue 27, items 1 and 14).

A real ``train_http`` whose ``HF_ENDPOINT`` is a loopback Hub (loopback/hf_hub.py)
serving four ``tokenizer.json`` files: one whose ``Split`` pre-tokenizer holds a
backtracking regex (``tokenizers`` panics on it: a pyo3 ``PanicException``, a
``BaseException``), one whose regex backtracks for ~17 s a line without panicking
(a stall), one larger than ``TOKENIZER_MAX_BYTES``, and an ordinary one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from finetune_api.jobs.estimate import CountFailed, RuleCounter, Tally, rule_tokens
from finetune_api.jobs.tokenizer import WorkerCounter
from loopback.fake_secret_manager import FakeSecretManager
from loopback.functions import FunctionServer, child_pids
from loopback.hf_hub import HfHub, tiny_tokenizer_json
from sandbox import Sandbox
from tests.conftest import function_env

# 335 bytes: onig gives up on this regex ("retry-limit-in-match over") and tokenizers panics.
PANIC = json.dumps(
    {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Split",
            "pattern": {"Regex": "(a|a)*(a|a)*(a|a)*$"},
            "behavior": "Isolated",
            "invert": False,
        },
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": {"[UNK]": 0}, "unk_token": "[UNK]"},
    }
).encode()
# No panic here: onig backtracks for ~17 s on 200 "a"s before a "!" (a stall).
STALL = PANIC.replace(b"(a|a)*(a|a)*(a|a)*$", b"a*a*a*a*\\\\d")
CAP = 16 * 1024
GOOD = tiny_tokenizer_json(["user assistant hello world aaaa b"])
HUGE = tiny_tokenizer_json([" ".join(f"word{n}" for n in range(3000))], vocab_size=4000)
EXAMPLES = [
    {
        "messages": [
            {"role": "user", "content": "a" * 60 + "b"},
            {"role": "assistant", "content": "hello"},
        ]
    }
] * 5


@pytest.fixture(scope="module")
def hub() -> Iterator[HfHub]:
    assert len(GOOD) < CAP < len(HUGE)
    repos = {
        "evil/panic": {"tokenizer.json": PANIC},
        "evil/huge": {"tokenizer.json": HUGE},
        "evil/stall": {"tokenizer.json": STALL},
        "org/tiny": {"tokenizer.json": GOOD},
    }
    with HfHub(repos) as server:
        yield server


@pytest.fixture(scope="module")
def function(
    hub: HfHub,
    sandbox_server: Sandbox,
    secret_manager: FakeSecretManager,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[FunctionServer]:
    tmp = tmp_path_factory.mktemp("hostile-tokenizer")
    env = function_env(
        sandbox_server,
        secret_manager,
        tmp,
        HF_ENDPOINT=hub.url,
        HF_HOME=str(tmp.parent / "hostile-tokenizer-hf-home"),
        TOKENIZER_MAX_BYTES=str(CAP),
        TOKENIZER_BATCH_SECONDS="2",
    )
    with FunctionServer("train_http", env, threads=4) as server:
        yield server
    assert list(tmp.iterdir()) == []  # the scratch download is gone


def _dry_run(function: FunctionServer, file_id: str, model: str) -> dict[str, Any]:
    body = {"model_id": model, "training_file": file_id, "dry_run": True}
    response = requests.post(f"{function.url}/jobs", json=body, timeout=120)
    assert response.status_code == 200, response.text
    estimate: dict[str, Any] = response.json()["estimate"]
    return estimate


def test_a_panicking_tokenizer_leaves_the_worker_serving(
    function: FunctionServer, hub: HfHub, sandbox: Sandbox
) -> None:
    data = "".join(json.dumps(e) + "\n" for e in EXAMPLES).encode()
    file = requests.post(
        f"{function.url}/files",
        files={"file": ("a.jsonl", data)},
        data={"purpose": "fine-tune"},
        timeout=30,
    ).json()
    worker = function.worker_pid()
    estimate = _dry_run(function, file["id"], "evil/panic")
    assert estimate["tokens_method"] == "estimate" and estimate["examples"] == 5
    assert estimate["tokens"] == sum(rule_tokens(e) for e in EXAMPLES)
    # The same worker answers the next requests, and counts with a sound tokenizer.
    assert function.worker_pid() == worker
    assert requests.get(f"{function.url}/files/{file['id']}", timeout=10).status_code == 200
    assert _dry_run(function, file["id"], "org/tiny")["tokens_method"] == "tokenizer"
    # Asked again at once, the bad model is not fetched again (remembered for a while).
    before = len(hub.requests)
    assert _dry_run(function, file["id"], "evil/panic")["tokens_method"] == "estimate"
    assert [p for _, p in hub.requests[before:] if "evil/panic" in p] == []
    assert function.worker_pid() == worker
    assert "Booting worker" not in function.output().split("Booting worker", 1)[-1]
    assert sandbox.jobs() == []


def _counting_processes(function: FunctionServer) -> set[int]:
    found = set()
    for pid in child_pids(function.worker_pid()):
        try:
            if b"tokenizer_worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.add(pid)
        except OSError:
            continue
    return found


def test_a_stalling_tokenizer_is_cut_off_and_its_process_ended(
    function: FunctionServer, sandbox: Sandbox
) -> None:
    stall = [
        {
            "messages": [
                {"role": "user", "content": "a" * 200 + "!"},
                {"role": "assistant", "content": "ok"},
            ]
        }
    ] * 3
    data = "".join(json.dumps(e) + "\n" for e in stall).encode()
    file = requests.post(
        f"{function.url}/files",
        files={"file": ("s.jsonl", data)},
        data={"purpose": "fine-tune"},
        timeout=30,
    ).json()
    worker = function.worker_pid()
    before = _counting_processes(function)
    estimate = _dry_run(function, file["id"], "evil/stall")
    # Left alone the count would end (~17 s a line) and say "tokenizer": it was cut off.
    assert estimate["tokens_method"] == "estimate" and estimate["examples"] == 3
    assert estimate["tokens"] == sum(rule_tokens(e) for e in stall)
    assert function.worker_pid() == worker
    assert _counting_processes(function) <= before  # killed and reaped, not left burning
    assert sandbox.jobs() == []


def test_an_oversized_tokenizer_is_never_downloaded(function: FunctionServer, hub: HfHub) -> None:
    data = "".join(json.dumps(e) + "\n" for e in EXAMPLES).encode()
    file = requests.post(
        f"{function.url}/files",
        files={"file": ("a.jsonl", data)},
        data={"purpose": "fine-tune"},
        timeout=30,
    ).json()
    assert _dry_run(function, file["id"], "evil/huge")["tokens_method"] == "estimate"
    asked = [(method, path) for method, path in hub.requests if "evil/huge" in path]
    assert asked and all(method == "HEAD" for method, _ in asked)  # its size, never its bytes


def test_a_batch_past_its_deadline_kills_the_process_and_the_rule_counts(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_bytes(GOOD)
    counter = WorkerCounter.start(path, load_seconds=30, batch_seconds=30, memory_bytes=2 * 1024**3)
    assert counter.count_batch(["hello world", "user"]) == [2, 1]
    slow = WorkerCounter.start(path, load_seconds=30, batch_seconds=0.01, memory_bytes=2 * 1024**3)
    texts = ["hello world " * 200] * 20_000
    with pytest.raises(CountFailed, match="took too long"):
        slow.count_batch(texts)
    assert slow.broken and slow._process.poll() is not None  # killed, not left running
    examples = [{"text": "hello world " * 200}] * 600
    tally = Tally(64, slow)
    for example in examples:
        tally(example)
    tally.flush()
    assert isinstance(tally.counter, RuleCounter) and tally.examples == 600
    assert tally.tokens == sum(rule_tokens(e) for e in examples)
    counter.close()
