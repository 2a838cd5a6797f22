"""Building the labels (what carries loss) vs rendering and tokenizing without them.

The examples are ``bench.file_check``'s support chats (a system prompt, 1-3
user/assistant turns, ~1 kB); every fourth one also calls a tool (``tools``, an
assistant ``tool_calls`` turn, a ``tool`` result) before its last answer. The
tokenizer is a byte-level BPE (8,000 tokens) trained here on those chats, with
Qwen2.5's chat template (tools, tool calls and tool results rendered).

* **ours**: ``ft.labels.label_example`` on each example, as the template builds its
  training data: OpenAI's shapes normalized, the conversation rendered, the
  boundary of each weight-1 assistant turn found by rendering up to it, tokenized,
  labels set.
* **baseline**: the same examples rendered and tokenized without labels the way
  TRL's SFTTrainer tokenizes chat data (and the template did before it built
  labels): the same normalization, then ``tokenizer.apply_chat_template(messages,
  tools=tools, tokenize=True, return_dict=True)``.
* **floor** (shown, no goal): the least work that renders and tokenizes, one
  direct render of the compiled template and the Rust tokenizer's ``encode``.

Both give the same ``input_ids`` (checked). The ratio is ours / baseline time
(goal ≤ 1.3); medians of ``runs`` interleaved runs.

Run alone: ``python -m bench.labels``.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.file_check import example_lines

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "training_template"

# Qwen2.5-Instruct's chat template (tools, tool calls, tool results).
QWEN25_TEMPLATE = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n        {{- messages[0]['content'] }}\n"
    "    {%- else %}\n        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.' }}\n    {%- endif %}\n"
    '    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user '
    "query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n"
    '<tools>" }}\n'
    '    {%- for tool in tools %}\n        {{- "\\n" }}\n        {{- tool | tojson }}\n'
    "    {%- endfor %}\n"
    '    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name '
    'and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": '
    '<function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}\n'
    "{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "    {%- else %}\n        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. "
    "You are a helpful assistant.<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n"
    "{%- for message in messages %}\n"
    '    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or '
    '(message.role == "assistant" and not message.tool_calls) %}\n'
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + "
    "'\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n            {{- '\\n' + message.content }}\n"
    "        {%- endif %}\n        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n"
    '            {{- \'\\n<tool_call>\\n{"name": "\' }}\n            {{- tool_call.name }}\n'
    '            {{- \'", "arguments": \' }}\n            {{- tool_call.arguments | tojson }}\n'
    "            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    '    {%- elif message.role == "tool" %}\n'
    '        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}\n'
    "            {{- '<|im_start|>user' }}\n        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    '        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}\n'
    "            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n"
    "{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup_order",
            "description": "Find an order by its number.",
            "parameters": {
                "type": "object",
                "properties": {"order_id": {"type": "string"}},
                "required": ["order_id"],
            },
        },
    }
]


def examples(count: int) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in example_lines(count)]
    for i, row in enumerate(rows):
        if i % 4 == 3:  # a tool call before the last answer
            call = {
                "id": f"call_{i}",
                "type": "function",
                "function": {"name": "lookup_order", "arguments": json.dumps({"order_id": str(i)})},
            }
            last = row["messages"].pop()
            row["messages"] += [
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": f"call_{i}", "content": f"Order {i}: shipped."},
                last,
            ]
            row["tools"] = TOOLS
    return rows


def _tokenizer(rows: list[dict[str, Any]]) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # type: ignore[assignment]
    backend.decoder = decoders.ByteLevel()  # type: ignore[assignment]
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(  # type: ignore[call-arg]
        vocab_size=8000,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    texts = [m["content"] or "" for row in rows[:2000] for m in row["messages"]]
    backend.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",  # noqa: S106 (a token, not a password)
        pad_token="<|endoftext|>",  # noqa: S106
    )
    tokenizer.chat_template = QWEN25_TEMPLATE
    return tokenizer


def run(examples_count: int = 1500, runs: int = 11) -> dict[str, Any]:
    if str(TEMPLATE_DIR) not in sys.path:
        sys.path.insert(0, str(TEMPLATE_DIR))
    from ft.labels import ChatRenderer, chat_messages, chat_tools, label_example

    rows = examples(examples_count)
    tokenizer = _tokenizer(rows)
    renderer = ChatRenderer(tokenizer)
    rust = tokenizer.backend_tokenizer

    def ours() -> tuple[float, list[list[int]]]:
        started = time.perf_counter()
        out = [label_example(row, "messages", tokenizer, renderer=renderer) for row in rows]
        return time.perf_counter() - started, [o["input_ids"] for o in out]

    def baseline() -> tuple[float, list[list[int]]]:
        started = time.perf_counter()
        out = []
        for row in rows:
            messages, _ = chat_messages(row["messages"], developer_role=renderer.developer_role)
            encoded = tokenizer.apply_chat_template(
                messages, tools=chat_tools(row.get("tools")), tokenize=True, return_dict=True
            )
            out.append(encoded["input_ids"])
        return time.perf_counter() - started, out

    def floor() -> tuple[float, list[list[int]]]:
        started = time.perf_counter()
        out = []
        for row in rows:
            messages, _ = chat_messages(row["messages"], developer_role=renderer.developer_role)
            text = renderer.render(messages, chat_tools(row.get("tools")))
            out.append(rust.encode(text, add_special_tokens=False).ids)
        return time.perf_counter() - started, out

    kinds = {"ours": ours, "baseline": baseline, "floor": floor}
    reference = None
    for fn in kinds.values():  # warm-up, and the same ids from all three
        ids = fn()[1]
        assert reference is None or ids == reference, "the ids differ"
        reference = ids
    seconds: dict[str, list[float]] = {kind: [] for kind in kinds}
    for index in range(runs):
        order = list(kinds) if index % 2 else list(reversed(kinds))
        for kind in order:
            seconds[kind].append(kinds[kind]()[0])
    median = {kind: statistics.median(values) for kind, values in seconds.items()}
    tokens = sum(map(len, reference or []))
    weighted_turns = sum(1 for row in rows for m in row["messages"] if m["role"] == "assistant")
    return {
        "examples": examples_count,
        "tool_examples": sum(1 for row in rows if "tools" in row),
        "assistant_turns": weighted_turns,
        "tokens": tokens,
        "ours_seconds": round(median["ours"], 3),
        "baseline_seconds": round(median["baseline"], 3),
        "floor_seconds": round(median["floor"], 3),
        "ours_us_per_example": round(median["ours"] / examples_count * 1e6),
        "baseline_us_per_example": round(median["baseline"] / examples_count * 1e6),
        "floor_us_per_example": round(median["floor"] / examples_count * 1e6),
        "ratio": round(median["ours"] / median["baseline"], 2),
        "ratio_to_floor": round(median["ours"] / median["floor"], 2),
        "samples": seconds,
    }


if __name__ == "__main__":
    print(json.dumps({k: v for k, v in run().items() if k != "samples"}, indent=2))
