"""Preference tuning (method ``dpo``): TRL's DPOTrainer on the LoRA adapter.

The reference model is the base model itself, with the adapter switched off: the
trainer gets the base model and the LoRA config, and no ``ref_model``. TRL wraps the
model in a PeftModel and, for every batch, runs the reference forward pass under
``use_adapter(model, None)`` (peft's ``disable_adapter``), with no gradient. So no
second copy of the model is ever loaded; the extra cost of DPO over supervised
training is that forward pass and the rejected completions in the batch.

Data (format ``preference``, read by ft.data like every format): a ``preference``
file, OpenAI's DPO line ``{"input": {"messages": [...], "tools"?,
"parallel_tool_calls"?}, "preferred_output": [one assistant message],
"non_preferred_output": [one assistant message]}``, or a dataset (``dataset_id``)
with those three columns or TRL's preference columns ``prompt`` / ``chosen`` /
``rejected`` (conversational lists of messages, or plain strings; without
``prompt`` the messages ``chosen`` and ``rejected`` share are the prompt) and an
optional ``tools`` column. The pairs are tokenized here rather than by TRL, through
ft.labels' renderer, so they reach the chat template exactly as supervised chat
does (``chat_messages``: text parts joined, ``developer`` as ``system`` where the
template has no such role, tool call ``arguments`` parsed from their JSON string;
null members dropped, which a datasets row gains from every other row's keys), and
a template that leaves out the tools or tool calls the data has stops the job.

Each pair becomes ``prompt_ids`` (the input rendered with the generation prompt),
``chosen_ids`` and ``rejected_ids`` (what the template adds after it for each
answer, end of turn included), split where the tokenized prompt and
prompt + answer first differ, as TRL does.

Every optimizer step's FT_METRICS line carries ``loss`` and TRL's
``rewards/chosen``, ``rewards/rejected``, ``rewards/margins`` and
``rewards/accuracies`` (see ft.metrics).

Only the standard library is imported at module level.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ft.config_io import Hyperparameters, RuntimeConfig
from ft.errors import TemplateError

log = logging.getLogger("train")

# The data format this method trains on (ft.data.detect_format's name for it).
PREFERENCE_FORMAT = "preference"
# TRL's reward metrics, logged at every step (the FT_METRICS keys, exactly).
REWARD_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")

# The method interface (see ft.methods): the data format it trains on and what its
# step lines carry besides the common keys.
FORMATS = (PREFERENCE_FORMAT,)
STEP_METRIC_KEYS = REWARD_KEYS

OPENAI_COLUMNS = ("input", "preferred_output", "non_preferred_output")
TRL_COLUMNS = ("prompt", "chosen", "rejected")

Conversation = list[dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class PreferencePair:
    """One pair: a prompt and two answers, conversational (lists of messages) or text."""

    prompt: Conversation | str
    chosen: Conversation | str
    rejected: Conversation | str
    tools: list[dict[str, Any]] | None = None

    @property
    def conversational(self) -> bool:
        return isinstance(self.chosen, list)


# ------------------------------------------------------------------------------- rows


def _drop_nulls(value: Any) -> Any:
    """``value`` without null members: a datasets row carries every other row's keys as
    nulls, and a chat template may read a present-but-null ``tool_calls`` as a call."""
    if isinstance(value, Mapping):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _conversation(value: Any, where: str, what: str) -> Conversation:
    """A list of messages, each an object with a role (as given: ft.labels.chat_messages
    normalizes them for the chat template when the pair is tokenized)."""
    if not isinstance(value, list) or not value:
        raise TemplateError(f"{where}: {what} must be a non-empty list of messages")
    for i, message in enumerate(value):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise TemplateError(f"{where}: {what}[{i}] must be an object with a 'role'")
    return [dict(message) for message in value]


def _one_answer(value: Any, where: str, what: str) -> Conversation:
    answer = _conversation(value, where, what)
    if len(answer) != 1 or answer[0]["role"] != "assistant":
        raise TemplateError(f"{where}: {what} must hold exactly one assistant message")
    return answer


def _tools(value: Any, where: str) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    if isinstance(value, str):  # a tools column stored as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise TemplateError(f"{where}: 'tools' is not JSON") from None
    if not isinstance(value, list) or not all(isinstance(tool, Mapping) for tool in value):
        raise TemplateError(f"{where}: 'tools' must be a list of tool objects")
    return [dict(tool) for tool in value] or None


def pair_from_openai(row: Mapping[str, Any], where: str) -> PreferencePair:
    """OpenAI's DPO line: input.messages (+ tools), preferred_output, non_preferred_output."""
    source = row.get("input")
    if not isinstance(source, Mapping):
        raise TemplateError(f"{where}: 'input' must be an object with 'messages'")
    prompt = _conversation(source.get("messages"), where, "input.messages")
    if prompt[-1]["role"] not in ("user", "tool"):
        raise TemplateError(f"{where}: input.messages must end with a user or tool message")
    return PreferencePair(
        prompt=prompt,
        chosen=_one_answer(row.get("preferred_output"), where, "preferred_output"),
        rejected=_one_answer(row.get("non_preferred_output"), where, "non_preferred_output"),
        tools=_tools(source.get("tools"), where),
    )


def pair_from_trl(row: Mapping[str, Any], where: str) -> PreferencePair:
    """TRL's preference row: prompt (optional) / chosen / rejected, text or messages."""
    chosen, rejected, prompt = row.get("chosen"), row.get("rejected"), row.get("prompt")
    tools = _tools(row.get("tools"), where)
    if isinstance(chosen, str) and isinstance(rejected, str):
        if not isinstance(prompt, str):
            raise TemplateError(f"{where}: text 'chosen' / 'rejected' need a text 'prompt'")
        if tools:
            raise TemplateError(f"{where}: 'tools' need conversational rows (lists of messages)")
        return PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected)
    chosen_messages = _conversation(chosen, where, "chosen")
    rejected_messages = _conversation(rejected, where, "rejected")
    if prompt is None:  # implicit prompt: the messages chosen and rejected share
        shared = 0
        for left, right in zip(chosen_messages, rejected_messages, strict=False):
            if left != right:
                break
            shared += 1
        shared = min(shared, len(chosen_messages) - 1, len(rejected_messages) - 1)
        if shared == 0:
            raise TemplateError(f"{where}: no 'prompt', and 'chosen' and 'rejected' share none")
        prompt_messages = chosen_messages[:shared]
        chosen_messages, rejected_messages = chosen_messages[shared:], rejected_messages[shared:]
    else:
        prompt_messages = _conversation(prompt, where, "prompt")
    return PreferencePair(
        prompt=prompt_messages, chosen=chosen_messages, rejected=rejected_messages, tools=tools
    )


def preference_columns(columns: Iterable[str]) -> list[str]:
    """The columns of preference pairs a dataset has (what a dpo job reads), or []."""
    names = list(columns)
    if set(OPENAI_COLUMNS) <= set(names):
        return list(OPENAI_COLUMNS)
    if {"chosen", "rejected"} <= set(names):
        return [c for c in (*TRL_COLUMNS, "tools") if c in names]
    return []


def preference_shape(columns: Iterable[str]) -> str:
    """'openai' or 'trl': which preference columns a dataset has; else a TemplateError."""
    names = set(columns)
    if set(OPENAI_COLUMNS) <= names:
        return "openai"
    if {"chosen", "rejected"} <= names:
        return "trl"
    found = ", ".join(repr(c) for c in sorted(names)) or "none"
    raise TemplateError(
        "a dpo job trains on preference pairs: columns 'input', 'preferred_output' and "
        "'non_preferred_output' (OpenAI's DPO format), or 'prompt', 'chosen' and 'rejected' "
        f"(TRL's), found columns: {found}"
    )


def pairs_from_dataset_rows(rows: Sequence[Mapping[str, Any]], name: str) -> list[PreferencePair]:
    """The pairs of rows (as a dataset gives them) with preference columns."""
    shape = preference_shape(rows[0].keys()) if rows else "openai"
    return pairs_from_rows((_drop_nulls(row) for row in rows), shape, name)


def pairs_from_rows(
    rows: Iterable[Mapping[str, Any]], shape: str, name: str
) -> list[PreferencePair]:
    convert = pair_from_openai if shape == "openai" else pair_from_trl
    return [convert(row, f"{name} row {i + 1}") for i, row in enumerate(rows)]


def pairs_from_dataset(dataset: Any, name: str = "training split") -> list[PreferencePair]:
    """The pairs of a hub or local dataset (``dataset_id``), its columns already
    selected by ft.data.format_dataset."""
    pairs = pairs_from_dataset_rows(dataset, name)
    if not pairs:
        raise TemplateError(f"the dataset's {name} has no preference pairs")
    return pairs


# ------------------------------------------------------------------------- tokens


def _common_prefix(left: Sequence[int], right: Sequence[int]) -> int:
    n = 0
    for a, b in zip(left, right, strict=False):
        if a != b:
            break
        n += 1
    return n


def pair_renderer(tokenizer: Any) -> Any:
    """The chat renderer of ft.labels for ``tokenizer`` (one per dataset)."""
    from ft.labels import ChatRenderer

    if not getattr(tokenizer, "chat_template", None):
        raise TemplateError(
            "the preference pairs are chat messages but the model's tokenizer has no chat template"
        )
    return ChatRenderer(tokenizer)


def _rendered_ids(
    pair: PreferencePair, renderer: Any, where: str
) -> tuple[list[int], list[int], list[int]]:
    """Token ids of the prompt (with the generation prompt), prompt + chosen and prompt +
    rejected, rendered as supervised chat is (ft.labels: the same message normalization,
    the same checks that the template shows the tools and tool calls the data has)."""
    from ft.labels import chat_messages, chat_tools, tokens_with_labels

    tokenizer = renderer.tokenizer
    role = renderer.developer_role
    prompt, _ = chat_messages(pair.prompt, developer_role=role)  # type: ignore[arg-type]
    chosen, _ = chat_messages(pair.chosen, developer_role=role)  # type: ignore[arg-type]
    rejected, _ = chat_messages(pair.rejected, developer_role=role)  # type: ignore[arg-type]
    tools = chat_tools(pair.tools)
    texts = []
    try:
        prompt_text = renderer.render(prompt, tools, add_generation_prompt=True)
        for answer in (chosen, rejected):
            messages = [*prompt, *answer]
            text = renderer.render(messages, tools)
            renderer.check_tools(messages, tools, text)
            if any("tool_calls" in m or m["role"] == "tool" for m in messages):
                # the answer's calls must show in what it adds after the prompt
                answer_span = {len(prompt): (min(len(prompt_text), len(text)), len(text))}
                renderer.check_tool_calls(messages, answer_span, text)
            texts.append(text)
    except TemplateError as exc:
        raise TemplateError(f"{where}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 (jinja raises anything a template raises)
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise TemplateError(
            f"{where}: the model's chat template cannot render it ({reason})"
        ) from None

    def ids(text: str) -> list[int]:
        return tokens_with_labels(tokenizer, text, None)["input_ids"]

    return ids(prompt_text), ids(texts[0]), ids(texts[1])


def tokenize_pair(
    pair: PreferencePair, tokenizer: Any, where: str, renderer: Any = None
) -> dict[str, list[int]]:
    """``prompt_ids``, ``chosen_ids`` and ``rejected_ids`` of one pair.

    The answers start where the tokenized prompt and prompt + answer first differ
    (a chat template may render the generation prompt differently from the start of
    an assistant turn), as TRL splits them; text pairs end with the tokenizer's EOS,
    as TRL adds it.
    """
    if pair.conversational:
        renderer = renderer or pair_renderer(tokenizer)
        prompt_ids, with_chosen, with_rejected = _rendered_ids(pair, renderer, where)
    else:
        eos = tokenizer.eos_token or ""

        def ids(text: str) -> list[int]:
            return list(tokenizer(text)["input_ids"])

        def ended(text: str) -> str:
            return text if text.endswith(eos) else text + eos

        prompt_ids = ids(str(pair.prompt))
        with_chosen = ids(str(pair.prompt) + ended(str(pair.chosen)))
        with_rejected = ids(str(pair.prompt) + ended(str(pair.rejected)))
    start = min(_common_prefix(prompt_ids, with_chosen), _common_prefix(prompt_ids, with_rejected))
    chosen_ids, rejected_ids = with_chosen[start:], with_rejected[start:]
    if not chosen_ids or not rejected_ids:
        raise TemplateError(f"{where}: an answer renders to no tokens")
    return {
        "prompt_ids": prompt_ids[:start],
        "chosen_ids": chosen_ids,
        "rejected_ids": rejected_ids,
    }


def preference_dataset(
    pairs: Sequence[PreferencePair], tokenizer: Any, max_length: int, name: str = "training data"
) -> Any:
    """A datasets.Dataset of ``prompt_ids`` / ``chosen_ids`` / ``rejected_ids``.

    A pair whose prompt alone fills ``max_length`` would train on nothing (the
    collator keeps the first ``max_length`` tokens): it is dropped, with a warning.
    """
    from datasets import Dataset

    columns: dict[str, list[list[int]]] = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": []}
    dropped = 0
    renderer = pair_renderer(tokenizer) if pairs and pairs[0].conversational else None
    for i, pair in enumerate(pairs):
        tokens = tokenize_pair(pair, tokenizer, f"{name} pair {i + 1}", renderer)
        if len(tokens["prompt_ids"]) >= max_length:
            dropped += 1
            continue
        for key, value in tokens.items():
            columns[key].append(value)
    if dropped:
        log.warning(
            "%s: dropped %d of %d preference pairs whose prompt alone is at least "
            "max_seq_length (%d) tokens",
            name,
            dropped,
            len(pairs),
            max_length,
        )
    if not columns["prompt_ids"]:
        raise TemplateError(
            f"{name}: every preference pair's prompt is at least max_seq_length ({max_length}) "
            "tokens long; raise max_seq_length"
        )
    return Dataset.from_dict(columns)


def preview_pair(example: Mapping[str, Any], tokenizer: Any, limit: int = 500) -> str:
    """The start of the first pair as trained on: prompt and preferred answer, decoded."""
    text = tokenizer.decode(list(example["prompt_ids"]) + list(example["chosen_ids"]))
    return str(text)[:limit]


# ------------------------------------------------------------------------- trainer


def dpo_trainer_class() -> Any:
    """TRL's DPOTrainer for pairs this module already tokenized."""
    from trl import DPOTrainer  # type: ignore[attr-defined]

    class PretokenizedDPOTrainer(DPOTrainer):  # type: ignore[misc]
        """Takes ``prompt_ids`` / ``chosen_ids`` / ``rejected_ids`` as they are (see
        preference_dataset); everything else is TRL's DPOTrainer."""

        def _prepare_dataset(self, dataset: Any, *_: Any, **__: Any) -> Any:
            return dataset

    return PretokenizedDPOTrainer


def prepare_dataset(
    dataset: Any, fmt: str, tokenizer: Any, config: RuntimeConfig, name: str = "training data"
) -> Any:
    """The pairs of a formatted ``preference`` dataset as the tokens DPOTrainer reads
    (``None`` passes through); ``name`` says which data it is in messages."""
    if dataset is None:
        return None
    hp = config.hyperparameters
    pairs = pairs_from_dataset(dataset, name)
    return preference_dataset(pairs, tokenizer, hp.max_seq_length, name)


def preview_row(example: Mapping[str, Any], tokenizer: Any, limit: int = 500) -> str:
    """The start of one preference row as trained on: its prompt and preferred answer."""
    [pair] = pairs_from_dataset_rows([example], "the first preference pair")
    return preview_pair(
        tokenize_pair(pair, tokenizer, "the first preference pair"), tokenizer, limit
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
    """DPOTrainer on a new LoRA adapter over ``model``, the base model as the reference.

    ``model`` is the plain base model and the LoRA config goes in as ``peft_config``
    with no ``ref_model``: TRL wraps the model itself and takes the reference
    log-probabilities with the adapter disabled, so one copy of the weights serves
    both. Every setting is the supervised run's (ft.sft.trainer_configs) plus
    ``beta`` (``hp.dpo_beta``); TRL's other DPO settings keep their defaults (sigmoid
    loss; dropout off, so that the policy and the reference agree; the reference
    computed batch by batch).
    """
    from trl import DPOConfig  # type: ignore[attr-defined]

    from ft.metrics import metrics_callback
    from ft.sft import lora_trainer, trainer_configs

    beta = hp.dpo_beta  # resolved by ft.config_io for dpo (default 0.1)
    if hp.lora_dropout > 0:
        log.info(
            "dpo: dropout is off (TRL's disable_dropout, so the policy and its reference "
            "agree); lora_dropout %s is recorded in the adapter config but not applied",
            hp.lora_dropout,
        )
    args, peft_config = trainer_configs(
        hp,
        output_dir,
        use_cuda=use_cuda,
        bf16=bf16,
        distributed=distributed,
        evaluate=eval_dataset is not None,
        config_class=DPOConfig,
        beta=beta,
    )
    trainer = lora_trainer(
        dpo_trainer_class(),
        model,
        tokenizer,
        dataset,
        args,
        peft_config,
        eval_dataset=eval_dataset,
        callbacks=list(callbacks) or [metrics_callback(STEP_METRIC_KEYS)],
        ref_model=None,
    )
    if trainer.ref_model is not None:  # TRL's contract for a PEFT model; a guard, not a path
        raise RuntimeError("DPOTrainer loaded a second copy of the model as its reference")
    log.info("dpo: beta %s; the reference is the base model (the adapter disabled)", beta)
    return trainer
