"""What the model is trained on: examples rendered through the model's chat template."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ft.errors import TemplateError


def render_chat(messages: Sequence[Mapping[str, Any]], tokenizer: Any) -> str:
    """The text a chat example becomes through the tokenizer's chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise TemplateError(
            "the dataset is chat ('messages') but the model's tokenizer has no chat template"
        )
    rendered: str = tokenizer.apply_chat_template(list(messages), tokenize=False)
    return rendered


def preview_example(example: Mapping[str, Any], fmt: str, tokenizer: Any, limit: int = 500) -> str:
    """The start of what the model is trained on for one example (chat rendered)."""
    if fmt == "preference":  # the prompt and the preferred answer, as DPO tokenizes them
        from ft.dpo import preview_row

        return preview_row(example, tokenizer, limit)
    if fmt == "messages":
        text = render_chat(example["messages"], tokenizer)
    elif fmt == "prompt_completion":
        text = example["prompt"] + example["completion"]
    else:
        text = example["text"]
    return str(text)[:limit]
