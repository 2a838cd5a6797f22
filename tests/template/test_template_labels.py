"""What carries loss (ft/labels.py), on real tokenizers with real chat templates.

The byte-level tokenizer of ``build_tools_tokenizer`` decodes any run of its tokens
to exactly the text they came from, and its template renders tools, tool calls and
tool results as Qwen2.5's does: so "the tokens that carry loss decode to exactly the
assistant's turns" is checked string for string.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import ft.data
import ft.errors
import ft.labels
import pytest
from template_helpers import build_tokenizer, build_tools_tokenizer, write_jsonl

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None,
    reason="needs transformers: pip install -r requirements-train.txt",
)

END = "<|im_end|>\n"  # how TOOLS_CHAT_TEMPLATE ends every turn

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "jumps",
            "description": "the fox jumps",
            "parameters": {"type": "object", "properties": {"over": {"type": "string"}}},
        },
    }
]


def call(
    name: str = "jumps", arguments: str = '{"over": "dog"}', id_: str = "c1"
) -> dict[str, Any]:
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": arguments}}


@pytest.fixture(scope="module")
def tools_tokenizer() -> Any:
    return build_tools_tokenizer()


def loss_text(tokenizer: Any, out: dict[str, list[int]]) -> str:
    """The text of the tokens that carry loss, in order."""
    assert len(out["input_ids"]) == len(out["labels"])
    kept = [
        tid for tid, label in zip(out["input_ids"], out["labels"], strict=True) if label != -100
    ]
    assert all(
        label in (-100, tid) for tid, label in zip(out["input_ids"], out["labels"], strict=True)
    )
    text: str = tokenizer.decode(kept)
    return text


def label(tokenizer: Any, example: dict[str, Any], **kwargs: Any) -> dict[str, list[int]]:
    return ft.labels.label_example(example, "messages", tokenizer, **kwargs)


# ------------------------------------------------------------------ chat: what carries loss


@pytest.mark.parametrize(
    ("example", "expected"),
    [
        pytest.param(
            {
                "messages": [
                    {"role": "system", "content": "the lazy dog"},
                    {"role": "user", "content": "where is the fox"},
                    {"role": "assistant", "content": "over the hills"},
                ]
            },
            "over the hills" + END,
            id="plain",
        ),
        pytest.param(
            {
                "messages": [
                    {"role": "user", "content": "the quick fox"},
                    {"role": "assistant", "content": "jumps over"},
                    {"role": "user", "content": "and the dog"},
                    {"role": "assistant", "content": "a lazy dog"},
                ]
            },
            "jumps over" + END + "a lazy dog" + END,
            id="multi-turn",
        ),
        pytest.param(
            {
                "messages": [
                    {"role": "user", "content": "the quick fox"},
                    {"role": "assistant", "content": "wrong answer here", "weight": 0},
                    {"role": "user", "content": "try again"},
                    {"role": "assistant", "content": "a lazy dog", "weight": 1},
                ]
            },
            "a lazy dog" + END,
            id="weighted",
        ),
        pytest.param(
            {
                "messages": [
                    {"role": "user", "content": "make the fox jump"},
                    {"role": "assistant", "content": None, "tool_calls": [call()]},
                    {"role": "tool", "tool_call_id": "c1", "content": "the fox jumped"},
                    {"role": "assistant", "content": "it jumps over the dog"},
                ],
                "tools": TOOLS,
            },
            '<tool_call>\n{"name": "jumps", "arguments": {"over": "dog"}}\n</tool_call>'
            + END
            + "it jumps over the dog"
            + END,
            id="tool-calling",
        ),
        pytest.param(
            {
                "messages": [
                    {"role": "user", "content": "two jumps"},
                    {
                        "role": "assistant",
                        "content": "calling",
                        "tool_calls": [call(id_="a"), call(arguments='{"over": "sea"}', id_="b")],
                    },
                    {"role": "tool", "tool_call_id": "a", "content": "done one"},
                    {"role": "tool", "tool_call_id": "b", "content": "done two"},
                    {"role": "assistant", "content": "both done", "weight": 0},
                ],
                "tools": TOOLS,
            },
            "calling\n<tool_call>\n"
            '{"name": "jumps", "arguments": {"over": "dog"}}\n</tool_call>\n<tool_call>\n'
            '{"name": "jumps", "arguments": {"over": "sea"}}\n</tool_call>' + END,
            id="parallel-tool-calls-then-weight-0",
        ),
    ],
)
def test_the_tokens_that_carry_loss_are_exactly_the_weighted_assistant_turns(
    tools_tokenizer: Any, example: dict[str, Any], expected: str
) -> None:
    out = label(tools_tokenizer, example)
    assert loss_text(tools_tokenizer, out) == expected
    # The input is exactly what the chat template renders (the ids TRL would train on).
    messages, _ = ft.labels.chat_messages(example["messages"])
    reference = tools_tokenizer.apply_chat_template(
        messages, tools=example.get("tools"), tokenize=True, return_dict=True
    )["input_ids"]
    assert out["input_ids"] == reference
    # ... and everything else (system, user, tool, the assistant's header) carries none.
    rendered = tools_tokenizer.decode(out["input_ids"])
    assert "<|im_start|>assistant\n" in rendered
    assert "<|im_start|>" not in expected


def test_openai_shapes_are_rendered_as_the_template_expects(tools_tokenizer: Any) -> None:
    """Text-part contents joined, developer as system (the template has no such role),
    names kept, tool call arguments as an object."""
    example = {
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "the lazy dog"}]},
            {
                "role": "user",
                "name": "fox",
                "content": [{"type": "text", "text": "the "}, {"type": "text", "text": "fox"}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "jumps over"}]},
        ]
    }
    out = label(tools_tokenizer, example)
    rendered = tools_tokenizer.decode(out["input_ids"])
    assert rendered.startswith("<|im_start|>system\nthe lazy dog" + END)
    assert "<|im_start|>user\nthe fox" + END in rendered
    assert loss_text(tools_tokenizer, out) == "jumps over" + END
    messages, weights = ft.labels.chat_messages(
        [*example["messages"], {"role": "assistant", "content": None, "tool_calls": [call()]}],
        developer_role=False,
    )
    assert messages[0]["role"] == "system" and messages[1]["name"] == "fox"
    assert messages[3]["tool_calls"][0]["function"]["arguments"] == {"over": "dog"}
    assert weights == [0, 0, 1, 1]


def test_the_renderer_renders_exactly_what_apply_chat_template_does(tools_tokenizer: Any) -> None:
    renderer = ft.labels.ChatRenderer(tools_tokenizer)
    messages, _ = ft.labels.chat_messages(
        [
            {"role": "user", "content": "make the fox jump"},
            {"role": "assistant", "content": None, "tool_calls": [call()]},
            {"role": "tool", "tool_call_id": "c1", "content": "the fox jumped"},
        ]
    )
    for tools in (TOOLS, None):
        for prompt in (True, False):
            assert renderer.render(messages, tools, add_generation_prompt=prompt) == (
                tools_tokenizer.apply_chat_template(
                    messages, tools=tools, tokenize=False, add_generation_prompt=prompt
                )
            )


def test_a_word_level_template_labels_its_assistant_turn() -> None:
    """The tiny model of the other CPU tests: `<|assistant|> … </s> ` per turn."""
    tokenizer = build_tokenizer()
    example = {
        "messages": [
            {"role": "system", "content": "the sea"},
            {"role": "user", "content": "the fox"},
            {"role": "assistant", "content": "a lazy dog"},
        ]
    }
    assert loss_text(tokenizer, label(tokenizer, example)) == "a lazy dog </s>"


def test_train_on_inputs_trains_on_every_token(tools_tokenizer: Any) -> None:
    example = {
        "messages": [
            {"role": "user", "content": "the quick fox"},
            {"role": "assistant", "content": "jumps", "weight": 0},
            {"role": "user", "content": "again"},
            {"role": "assistant", "content": "a lazy dog"},
        ]
    }
    out = label(tools_tokenizer, example, train_on_inputs=True)
    assert out["labels"] == out["input_ids"]


def test_prompt_completion_trains_on_the_completion_and_text_on_everything(
    tools_tokenizer: Any,
) -> None:
    example = {"prompt": "the quick fox", "completion": " jumps over"}
    out = ft.labels.label_example(example, "prompt_completion", tools_tokenizer)
    assert loss_text(tools_tokenizer, out) == " jumps over<|im_end|>"
    assert tools_tokenizer.decode(out["input_ids"]) == "the quick fox jumps over<|im_end|>"
    everything = ft.labels.label_example(
        example, "prompt_completion", tools_tokenizer, train_on_inputs=True
    )
    assert everything["labels"] == everything["input_ids"] == out["input_ids"]
    text = ft.labels.label_example({"text": "the lazy dog"}, "text", tools_tokenizer)
    assert text["labels"] == text["input_ids"]
    assert tools_tokenizer.decode(text["input_ids"]) == "the lazy dog<|im_end|>"


# ------------------------------------------------------------- templates that cannot render it


def test_a_template_that_leaves_out_tools_is_refused() -> None:
    tokenizer = build_tokenizer()  # renders role and content only
    example = {
        "messages": [
            {"role": "user", "content": "the fox"},
            {"role": "assistant", "content": "the dog"},
        ],
        "tools": TOOLS,
    }
    with pytest.raises(ft.errors.TemplateError, match="chat template cannot render tools"):
        label(tokenizer, example)


def test_a_template_that_leaves_out_tool_calls_is_refused() -> None:
    tokenizer = build_tokenizer()
    example = {
        "messages": [
            {"role": "user", "content": "the fox"},
            {"role": "assistant", "content": "the dog", "tool_calls": [call()]},
        ]
    }
    with pytest.raises(ft.errors.TemplateError) as caught:
        label(tokenizer, example)
    assert "chat template cannot render tool calls" in str(caught.value)
    assert "'jumps'" in str(caught.value)


def test_a_template_that_raises_on_tool_messages_is_refused_naming_tool_calls() -> None:
    tokenizer = build_tokenizer(
        "{% for m in messages %}{% if m['role'] == 'tool' %}"
        "{{ raise_exception('Only user and assistant roles are supported') }}{% endif %}"
        "<|{{ m['role'] }}|> {{ m['content'] }} </s> {% endfor %}"
    )
    example = {
        "messages": [
            {"role": "user", "content": "the fox"},
            {"role": "assistant", "content": "jumps"},
            {"role": "tool", "tool_call_id": "c1", "content": "the dog"},
            {"role": "assistant", "content": "over"},
        ]
    }
    with pytest.raises(ft.errors.TemplateError) as caught:
        label(tokenizer, example)
    message = str(caught.value)
    assert "cannot render tool calls" in message
    assert "Only user and assistant roles are supported" in message
    assert "\n" not in message


# ------------------------------------------------------------------------ the whole data set


def test_a_jsonl_file_of_mixed_shapes_is_labelled_through_datasets(
    tools_tokenizer: Any, tmp_path: Path
) -> None:
    """Rows as `datasets` loads them (one schema for all rows: missing keys become null)."""
    from datasets import load_dataset

    rows = [
        {
            "messages": [
                {"role": "user", "content": "the fox"},
                {"role": "assistant", "content": "a dog"},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "jump"}]},
                {"role": "assistant", "content": None, "tool_calls": [call()]},
                {"role": "tool", "tool_call_id": "c1", "content": "jumped"},
                {"role": "assistant", "content": "done", "weight": 0},
            ],
            "tools": TOOLS,
            "parallel_tool_calls": False,
        },
    ]
    loaded = load_dataset("json", data_files=str(write_jsonl(tmp_path / "d.jsonl", rows)))["train"]
    dataset, fmt = ft.data.format_dataset(loaded)
    assert fmt == "messages" and set(dataset.column_names) == {"messages", "tools"}
    labelled = ft.labels.build_labels(
        dataset, fmt, tools_tokenizer, train_on_inputs=False, max_length=4096, name="training data"
    )
    assert set(labelled.column_names) == {"input_ids", "labels"}
    texts = [loss_text(tools_tokenizer, labelled[i]) for i in range(2)]
    assert texts == [
        "a dog" + END,
        '<tool_call>\n{"name": "jumps", "arguments": {"over": "dog"}}\n</tool_call>' + END,
    ]
    # The tools reached the template as they were written (no null members added).
    rendered = tools_tokenizer.decode(labelled[1]["input_ids"])
    assert json.dumps(TOOLS[0]) in rendered


def test_examples_cut_to_max_length_without_a_loss_token_are_dropped(
    tools_tokenizer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from datasets import Dataset

    short = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    long = {
        "messages": [
            {"role": "user", "content": " ".join(["the quick brown fox"] * 40)},
            {"role": "assistant", "content": "b"},
        ]
    }
    dataset = Dataset.from_list([short, long])
    labelled = ft.labels.build_labels(
        dataset, "messages", tools_tokenizer, train_on_inputs=False, max_length=40, name="data"
    )
    assert len(labelled) == 1 and all(len(row) <= 40 for row in labelled["input_ids"])
    assert "dropped 1 of 2 examples of the data" in caplog.text
    with pytest.raises(ft.errors.TemplateError, match="no example of the data has a token"):
        ft.labels.build_labels(
            Dataset.from_list([long]),
            "messages",
            tools_tokenizer,
            train_on_inputs=False,
            max_length=40,
            name="data",
        )


@pytest.mark.parametrize("tools_template", [True, False], ids=["qwen-like", "word-level"])
def test_spans_found_in_one_rendering_match_the_rendering_turn_by_turn(
    tools_template: bool,
) -> None:
    """Plain chats take the fast path (each assistant content found between the header
    its generation prompt shows and its end of turn); it must give exactly the spans
    that rendering the conversation up to each turn gives."""
    tokenizer = build_tools_tokenizer() if tools_template else build_tokenizer()
    renderer = ft.labels.ChatRenderer(tokenizer)
    chats = [
        [
            {"role": "system", "content": "the sea"},
            {"role": "user", "content": "the fox"},
            {"role": "assistant", "content": "the fox"},  # the same words as the user's
            {"role": "user", "content": "assistant"},  # a word of the header
            {"role": "assistant", "content": "jumps", "weight": 0},
            {"role": "user", "content": "again"},
            {"role": "assistant", "content": "a lazy dog"},
        ],
        [{"role": "assistant", "content": "hills"}, {"role": "user", "content": "and"}],
    ]
    for raw in chats:
        messages, weights = ft.labels.chat_messages(raw)
        weighted = [i for i, w in enumerate(weights) if w == 1]
        text = renderer.render(messages)
        found = renderer._found_turns(messages, weighted, text)
        assert found is not None
        assert found == renderer._turn_spans(messages, weighted, None, text)
