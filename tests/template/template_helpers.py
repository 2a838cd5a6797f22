"""Helpers for the training template's tests (imported by conftest.py and the tests).

Nothing here downloads anything: the tiny model and its tokenizer are built from a
config and a vocabulary of test words, and the datasets are written by the tests.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TEMPLATE_DIR = REPO / "training_template"

TRAINING_STACK = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "tokenizers")

# The tiny model's whole vocabulary; the datasets are made of these words.
WORDS = [
    *("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while"),
    *("seven", "bright", "stars", "shine", "above", "quiet", "hills", "and", "rivers"),
    *("run", "to", "wide", "sea"),
]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|> {{ message['content'] }} </s> "
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]

# A chat template that renders tools, tool calls and tool results the way Qwen2.5's
# does (its structure, a shorter default system prompt), for the tool-calling tests.
TOOLS_CHAT_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}"
    "{%- else %}{{- 'You are a helpful assistant.' }}{%- endif %}"
    "{{- '\\n\\n# Tools\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools><|im_end|>\\n' }}"
    "{%- else %}{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first)"
    " or (message.role == 'assistant' and not message.tool_calls) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == 'assistant' %}{{- '<|im_start|>' + message.role }}"
    "{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}"
    "{%- for tool_call in message.tool_calls %}"
    "{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}"
    '{{- \'\\n<tool_call>\\n{"name": "\' }}{{- tool_call.name }}'
    "{{- '\", \"arguments\": ' }}{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}"
    "{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != 'tool') %}"
    "{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}"
    "{%- if loop.last or (messages[loop.index0 + 1].role != 'tool') %}"
    "{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
TOOLS_INITIALIZER_RANGE = 0.3
TOOLS_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

EXAMPLE_RUNTIME_CONFIG: dict[str, Any] = {
    "dataset_id": "HuggingFaceH4/Multilingual-Thinking",
    "model_id": "openai/gpt-oss-20b",
    "project_name": "ft-openai-gpt-oss-20b",
    "job_name": "gpt-oss-20b-20261127-060000-ik-0123456789abcdef0123",
    "hyperparameters": {
        "learning_rate": 0.0002,
        "num_epochs": 1,
        "batch_size": 4,
        "gradient_accumulation_steps": 4,
        "max_seq_length": 2048,
        "lora_rank": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.05,
        "seed": 42,
        "validation_split": 0.0,
        "train_on_inputs": False,
        "dpo_beta": None,
    },
    "method": "supervised",
    "compute": {"accelerator": None, "gpu_count": None, "node_count": None},
    "hf_token_secret_name": "hf_access_token",
}


def sentence(i: int, length: int = 16) -> str:
    """A deterministic sentence of `length` vocabulary words (one token each)."""
    return " ".join(WORDS[(i * 3 + k) % len(WORDS)] for k in range(length))


def missing_training_stack() -> list[str]:
    return [name for name in TRAINING_STACK if importlib.util.find_spec(name) is None]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def build_tokenizer(chat_template: str | None = CHAT_TEMPLATE) -> Any:
    """A word-level PreTrainedTokenizerFast over WORDS, trained offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(
        [" ".join(WORDS)], trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS)
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def build_tools_tokenizer() -> Any:
    """A byte-level BPE tokenizer (decoding any run of its tokens gives back the exact
    text) with TOOLS_CHAT_TEMPLATE, trained offline on the test words and the template's
    own text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    corpus = [
        " ".join(WORDS),
        "You are a helpful assistant. system user assistant tool",
        '<tools> </tools> <tool_call> </tool_call> <tool_response> </tool_response> {"name": '
        '"arguments": {"type": "function", "function": "parameters" "description" "object"',
    ]
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=TOOLS_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = TOOLS_CHAT_TEMPLATE
    return tokenizer


def save_tiny_model(
    directory: Path, chat_template: str | None = CHAT_TEMPLATE, *, tools: bool = False
) -> Path:
    """A 2-layer, hidden-size-32 Llama with its tokenizer, saved like a hub model
    (``tools``: the byte-level tokenizer whose chat template renders tools)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tools_tokenizer() if tools else build_tokenizer(chat_template)
    tokenizer.save_pretrained(directory)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # Larger output weights for the 400-token vocabulary: with the default 0.02 a
        # hidden size of 32 cannot make any token likely, so no loss could fall far.
        **({"initializer_range": TOOLS_INITIALIZER_RANGE} if tools else {}),
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


def save_tiny_gpt_oss(directory: Path) -> Path:
    """The recipe's architecture (openai/gpt-oss: mixture of experts, attention sinks), tiny."""
    from transformers import GptOssConfig, GptOssForCausalLM

    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(directory)
    config = GptOssConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=256,
        sliding_window=16,
        layer_types=["sliding_attention", "full_attention"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    GptOssForCausalLM(config).save_pretrained(directory)
    return directory


class TrainRun:
    """The outcome of one `python train.py` in a copy of the template."""

    def __init__(
        self,
        proc: subprocess.CompletedProcess[str],
        checkpoint_dir: Path,
        app_dir: Path | None = None,
    ) -> None:
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.checkpoint_dir = checkpoint_dir
        self.final_dir = checkpoint_dir / "final"
        self.app_dir = app_dir  # the job's working directory (the uploaded template)

    @property
    def summary(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((self.final_dir / "training_summary.json").read_text())
        return loaded

    @property
    def metrics(self) -> list[dict[str, Any]]:
        """The records of train.py's FT_METRICS lines on stdout, read by the service's parser."""
        from finetune_api.insights.training_metrics import parse_line

        return [record for line in self.stdout.splitlines() if (record := parse_line(line))]

    @property
    def progress(self) -> list[dict[str, Any]]:
        """The step records (one per optimizer step)."""
        return [record for record in self.metrics if record["type"] == "step"]

    @property
    def summary_line(self) -> dict[str, Any]:
        """The one FT_METRICS summary record."""
        [record] = [record for record in self.metrics if record["type"] == "summary"]
        return record

    @property
    def error_line(self) -> str:
        return self.stderr.strip().splitlines()[-1] if self.stderr.strip() else ""

    def describe(self) -> str:
        return f"rc={self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


RunTrain = Callable[..., TrainRun]

# Variables of the outer environment that would change what a run of train.py does.
_JOB_VARIABLES = {
    "HF_TOKEN",
    "RUNTIME_CONFIG",
    "MODEL_ID",
    "DATASET_ID",
    "LOCAL_RANK",
    "RANK",
    "WORLD_SIZE",
}


def job_environment(hf_home: Path, overrides: dict[str, str | None]) -> dict[str, str]:
    """This process's environment without job variables, offline, plus `overrides`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in _JOB_VARIABLES and not key.startswith(("BT_", "PYTEST_"))
    }
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "HF_HOME": str(hf_home),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    # A tiny model trains fastest on one thread, and it keeps parallel test workers
    # from oversubscribing the cores.
    env.setdefault("OMP_NUM_THREADS", "1")
    # A job's container has a /tmp of its own: what the job leaves there (wandb's import-time
    # folders, which trl makes it import; a run killed on purpose cleans nothing) stays
    # beside the test's files, never in this machine's /tmp.
    job_tmp = hf_home.parent / f"{hf_home.name}-tmp"
    job_tmp.mkdir(exist_ok=True)
    env["TMPDIR"] = str(job_tmp)
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def prepare_job(workdir: Path, env: dict[str, Any]) -> tuple[Path, dict[str, str], Path]:
    """A job's working area as Baseten lays it out: the uploaded template in
    ``workdir/app`` (the job's working directory), its environment, and its
    BT_CHECKPOINT_DIR (``workdir/checkpoints`` unless ``env`` names one).

    Returns (app folder, environment, checkpoint folder).
    """
    app = workdir / "app"
    shutil.copytree(TEMPLATE_DIR, app, ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(env)
    if isinstance(env.get("RUNTIME_CONFIG"), dict):
        env["RUNTIME_CONFIG"] = json.dumps(env["RUNTIME_CONFIG"])
    env.setdefault("BT_CHECKPOINT_DIR", str(workdir / "checkpoints"))
    overrides = {key: (None if value is None else str(value)) for key, value in env.items()}
    checkpoints = Path(env["BT_CHECKPOINT_DIR"] or workdir / "checkpoints")
    return app, job_environment(workdir / "hf-home", overrides), checkpoints
