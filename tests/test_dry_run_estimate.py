"""The dry run's estimate end to end: upload, count with the model's tokenizer, create nothing.

Two ``train_http`` processes share the session's sandbox: one whose
``HF_ENDPOINT`` is a loopback Hub (``loopback/hf_hub.py``) serving a real
``tokenizer.json`` for ``MODEL``, one whose ``HF_ENDPOINT`` is a closed port
(the Hub unreachable).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from loopback.fake_secret_manager import FakeSecretManager
from loopback.functions import FunctionServer
from loopback.hf_hub import HfHub, tiny_tokenizer_json
from loopback.servers import free_port
from sandbox import Sandbox
from tests.conftest import function_env

MODEL = "org/tiny-chat"
WORDS = ["password", "reset", "order", "refund", "shipping", "account", "invoice", "help"]
MAX_SEQ = 16


def chat(words: int, answer: str = "Sure, here is how.") -> dict[str, Any]:
    user = " ".join(WORDS[i % len(WORDS)] for i in range(words))
    turns = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return {"messages": turns}


def word_tokens(example: dict[str, Any]) -> int:
    """What the loopback tokenizer counts: words and runs of punctuation of the joined turns."""
    text = "\n".join(f"{m['role']}: {m['content']}" for m in example["messages"])
    return len(re.findall(r"\w+|[^\w\s]+", text))


# user: <n words> / assistant: Sure , here is how . -> n + 2 + 2 + 6 tokens
EXAMPLES = [chat(n) for n in (1, 3, 5, 6, 7, 20, 40, 2)]


# A chat template that renders tools and tool calls (as Qwen's and Llama's do), and one
# that prints only role and content (many base models' templates).
TOOL_TEMPLATE = (
    "{% if tools %}<|system|>You may call: {% for t in tools %}{{ t.function | tojson }}"
    "{% endfor %}\n{% endif %}{% for m in messages %}<|{{ m.role }}|>"
    "{% if m.content %}{{ m.content }}{% endif %}{% for c in m.tool_calls or [] %}"
    "<call>{{ c.function.name }} {{ c.function.arguments }}</call>{% endfor %}\n{% endfor %}"
)
PLAIN_TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
TOOL_MODEL, PLAIN_MODEL = "org/tool-chat", "org/plain-chat"


@pytest.fixture(scope="module")
def hub() -> Iterator[HfHub]:
    corpus = [" ".join(WORDS), "user assistant system Sure here is how"]
    tokenizer = tiny_tokenizer_json(corpus)
    repos = {
        MODEL: {"tokenizer.json": tokenizer},
        TOOL_MODEL: {
            "tokenizer.json": tokenizer,
            "tokenizer_config.json": json.dumps({"chat_template": TOOL_TEMPLATE}).encode(),
        },
        PLAIN_MODEL: {
            "tokenizer.json": tokenizer,
            "chat_template.jinja": PLAIN_TEMPLATE.encode(),
        },
    }
    with HfHub(repos) as server:
        yield server


def _server(
    sandbox: Sandbox, secrets: FakeSecretManager, root: Path, name: str, endpoint: str
) -> FunctionServer:
    tmp = root / name
    tmp.mkdir()
    env = function_env(
        sandbox, secrets, tmp, HF_ENDPOINT=endpoint, HF_HOME=str(root / f"{name}-hf-home")
    )
    return FunctionServer("train_http", env, threads=8)  # started by the with-block


@pytest.fixture(scope="module")
def functions(
    hub: HfHub,
    sandbox_server: Sandbox,
    secret_manager: FakeSecretManager,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, FunctionServer]]:
    root = tmp_path_factory.mktemp("dry-run")
    with (
        _server(sandbox_server, secret_manager, root, "hub", hub.url) as with_hub,
        _server(
            sandbox_server, secret_manager, root, "nohub", f"http://127.0.0.1:{free_port()}"
        ) as without,
    ):
        yield {"hub": with_hub, "nohub": without}


def upload(function: FunctionServer, examples: list[dict[str, Any]]) -> dict[str, Any]:
    body = "".join(json.dumps(e) + "\n" for e in examples).encode()
    response = requests.post(
        f"{function.url}/files",
        files={"file": ("chats.jsonl", body, "application/jsonl")},
        data={"purpose": "fine-tune"},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    record: dict[str, Any] = response.json()
    assert record["status"] == "processed", record
    return record


def dry_run(function: FunctionServer, **fields: Any) -> dict[str, Any]:
    body = {
        "model_id": MODEL,
        "hyperparameters": {"num_epochs": 3, "max_seq_length": MAX_SEQ},
        "compute": {"accelerator": "H100", "gpu_count": 1},
        "dry_run": True,
        **fields,
    }
    response = requests.post(f"{function.url}/jobs", json=body, timeout=60)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    assert answer["dry_run"] is True
    return answer


def test_the_models_tokenizer_counts_exactly(
    functions: dict[str, FunctionServer], hub: HfHub, sandbox: Sandbox
) -> None:
    function = functions["hub"]
    record = upload(function, EXAMPLES)
    jobs_before = len(sandbox.jobs())
    estimate = dry_run(function, training_file=record["id"])["estimate"]
    tokens = [word_tokens(e) for e in EXAMPLES]
    assert estimate["tokens_method"] == "tokenizer"
    assert estimate["examples"] == len(EXAMPLES)
    assert estimate["tokens"] == sum(tokens)
    assert estimate["examples_over_max_seq_length"] == sum(t > MAX_SEQ for t in tokens) == 3
    assert estimate["trained_tokens"] == sum(tokens) * 3
    # No earlier job of this model: nothing to ground GPU hours or a cost on.
    assert estimate["gpu_hours"] is None and estimate["cost_usd"] is None
    assert "no throughput measured yet" in estimate["cost_basis"]
    assert len(sandbox.jobs()) == jobs_before == 0
    # The tokenizer was fetched from the loopback Hub, and once per process.
    fetched = [path for method, path in hub.requests if path.endswith("/tokenizer.json")]
    assert f"/{MODEL}/resolve/main/tokenizer.json" in fetched
    count = len(fetched)
    dry_run(function, training_file=record["id"])
    assert len([p for _, p in hub.requests if p.endswith("/tokenizer.json")]) == count


def test_without_the_hub_tokens_are_estimated_by_the_rule(
    functions: dict[str, FunctionServer], sandbox: Sandbox
) -> None:
    function = functions["nohub"]
    record = upload(function, EXAMPLES)
    started = time.monotonic()
    estimate = dry_run(function, training_file=record["id"])["estimate"]
    assert time.monotonic() - started < 30
    rule = [
        -(-len("\n".join(f"{m['role']}: {m['content']}" for m in e["messages"]).encode()) // 4)
        for e in EXAMPLES
    ]
    assert estimate["tokens_method"] == "estimate"
    assert estimate["tokens"] == sum(rule)
    assert estimate["examples_over_max_seq_length"] == sum(t > MAX_SEQ for t in rule)
    assert estimate["trained_tokens"] == sum(rule) * 3
    assert estimate["gpu_hours"] is None and estimate["cost_usd"] is None
    assert sandbox.jobs() == []


def test_a_model_without_a_tokenizer_on_the_hub_is_estimated(
    functions: dict[str, FunctionServer], sandbox: Sandbox
) -> None:
    function = functions["hub"]
    record = upload(function, EXAMPLES)
    estimate = dry_run(function, training_file=record["id"], model_id="org/not-on-the-hub")[
        "estimate"
    ]
    assert estimate["tokens_method"] == "estimate"
    assert estimate["examples"] == len(EXAMPLES)


def _completed_job(function: FunctionServer, sandbox: Sandbox, record: dict[str, Any]) -> str:
    body = {
        "model_id": MODEL,
        "training_file": record["id"],
        "hyperparameters": {"num_epochs": 1},
        "compute": {"accelerator": "H100", "gpu_count": 1},
    }
    response = requests.post(f"{function.url}/jobs", json=body, timeout=120)
    assert response.status_code == 201, response.text
    job = response.json()
    job_id: str = job["training_job_id"]
    for _ in range(20):
        if sandbox.advance(job_id, steps=1)[0]["current_status"] == "TRAINING_JOB_RUNNING":
            break
    sandbox.set_status(job_id, "TRAINING_JOB_COMPLETED")
    return job_id


def test_gpu_hours_from_earlier_jobs_of_the_model_and_no_invented_price(
    functions: dict[str, FunctionServer], sandbox: Sandbox
) -> None:
    function = functions["hub"]
    record = upload(function, EXAMPLES)
    job_id = _completed_job(function, sandbox, record)
    jobs = len(sandbox.jobs())
    estimate = dry_run(function, training_file=record["id"])["estimate"]
    assert len(sandbox.jobs()) == jobs == 1  # the dry run created nothing
    # The sandbox's template run prints ~4000 tokens/s (± 5 %) per GPU on each step line.
    basis = estimate["cost_basis"]
    rate = float(re.search(r"throughput ([\d.]+) tokens/s", basis).group(1))  # type: ignore[union-attr]
    assert 3800 <= rate <= 4200 and job_id in basis
    assert estimate["gpu_hours"] == float(f"{estimate['trained_tokens'] / rate / 3600:.4g}")
    assert estimate["cost_usd"] is None and "no price" in basis
    # Another accelerator has no history.
    other = dry_run(
        function, training_file=record["id"], compute={"accelerator": "A100", "gpu_count": 1}
    )["estimate"]
    assert other["gpu_hours"] is None and "no throughput measured yet" in other["cost_basis"]


def pair(prompt_words: int, preferred: str, rejected: str) -> dict[str, Any]:
    user = " ".join(WORDS[i % len(WORDS)] for i in range(prompt_words))
    return {
        "input": {
            "messages": [{"role": "system", "content": "help"}, {"role": "user", "content": user}]
        },
        "preferred_output": [{"role": "assistant", "content": preferred}],
        "non_preferred_output": [{"role": "assistant", "content": rejected}],
    }


def turns_tokens(messages: list[dict[str, Any]]) -> int:
    return word_tokens({"messages": messages})


def test_a_preference_file_counts_the_prompt_and_both_outputs(
    functions: dict[str, FunctionServer], sandbox: Sandbox
) -> None:
    """Tokens: prompt + preferred + non-preferred; over max_seq_length: the prompt with the
    longer output (each is its own sequence in DPO)."""
    examples = [
        pair(2, "Sure, here is how.", "No."),
        pair(4, "Sure.", "Sure, here is how. Sure, here is how."),
        pair(9, "Sure, here is how.", "Sure, here is how."),
        pair(1, "Sure.", "No."),
    ]
    for name, method in (("hub", "tokenizer"), ("nohub", "estimate")):
        function = functions[name]
        record = upload(function, examples)
        assert record["validation"]["format"] == "preference"
        answer = dry_run(function, training_file=record["id"], method="dpo")
        estimate = answer["estimate"]
        assert answer["request"]["method"] == "dpo"
        assert answer["request"]["hyperparameters"]["dpo_beta"] == 0.1
        if method == "tokenizer":
            pieces = [
                [
                    turns_tokens(e["input"]["messages"]),
                    turns_tokens(e["preferred_output"]),
                    turns_tokens(e["non_preferred_output"]),
                ]
                for e in examples
            ]
        else:
            pieces = [
                [
                    -(-len(text.encode()) // 4)
                    for text in (
                        "\n".join(f"{m['role']}: {m['content']}" for m in messages)
                        for messages in (
                            e["input"]["messages"],
                            e["preferred_output"],
                            e["non_preferred_output"],
                        )
                    )
                ]
                for e in examples
            ]
        assert estimate["tokens_method"] == method
        assert estimate["examples"] == len(examples)
        assert estimate["tokens"] == sum(map(sum, pieces))
        longest = [p + max(c, r) for p, c, r in pieces]
        assert estimate["examples_over_max_seq_length"] == sum(t > MAX_SEQ for t in longest)
        assert 0 < estimate["examples_over_max_seq_length"] < len(examples)
        assert estimate["trained_tokens"] == estimate["tokens"] * 3
        # Supervised throughput is not a DPO run's: no GPU hours are invented.
        assert estimate["gpu_hours"] is None and "DPO" in estimate["cost_basis"]
    assert sandbox.jobs() == []


def tool_pair() -> dict[str, Any]:
    """A preference pair whose prompt holds tools, a tool call and the tool's answer."""
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "order_status", "arguments": json.dumps({"order": "7"})},
    }
    return {
        "input": {
            "tools": [{"type": "function", "function": {"name": "order_status"}}],
            "messages": [
                {"role": "user", "content": "order 7?"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "shipped"},
            ],
        },
        "preferred_output": [{"role": "assistant", "content": "It shipped."}],
        "non_preferred_output": [{"role": "assistant", "content": "No idea."}],
    }


def test_a_dry_run_says_when_the_chat_template_cannot_render_the_tools(
    functions: dict[str, FunctionServer], hub: HfHub, sandbox: Sandbox
) -> None:
    function = functions["hub"]
    tools = upload(function, [tool_pair()] * 3)
    plain = upload(function, [pair(2, "Sure.", "No.")] * 3)

    def problem(model_id: str, record: dict[str, Any]) -> Any:
        estimate = dry_run(function, model_id=model_id, training_file=record["id"], method="dpo")[
            "estimate"
        ]
        assert estimate["tokens_method"] == "tokenizer"
        return estimate["chat_template_problem"]

    said = problem(PLAIN_MODEL, tools)
    assert "leaves out the tools' definitions and the assistant's tool calls" in said
    assert "tool messages" not in said  # it prints every content, the tool's answer too
    # A template that renders them, data without tools, and a model without a
    # template file (nothing to check) say nothing.
    assert problem(TOOL_MODEL, tools) is None
    assert problem(PLAIN_MODEL, plain) is None
    assert problem(MODEL, tools) is None
    fetched = {path for _, path in hub.requests}
    assert f"/{PLAIN_MODEL}/resolve/main/chat_template.jinja" in fetched
    assert f"/{TOOL_MODEL}/resolve/main/tokenizer_config.json" in fetched
    assert sandbox.jobs() == []
