"""What carries loss: each example becomes ``input_ids`` and ``labels`` (-100: no loss).

- chat (``messages``): the example is rendered once through the model's own chat
  template (``tools`` included) and tokenized; the tokens of the assistant messages of
  weight 1 (their content, their tool calls and the end of their turn) carry loss, and
  nothing of system, developer, user or tool messages, nor the assistant's header
  (what a generation prompt adds) nor assistant messages of weight 0.
- ``prompt_completion``: the completion (and the end-of-sequence token).
- ``text``: every token.
- ``train_on_inputs``: every token, whatever the format.

A turn's span is found by rendering the conversation up to it: the text of
``messages[:i]`` with the generation prompt is where assistant message ``i`` starts, the
text of ``messages[:i + 1]`` where it ends; characters map to tokens through the fast
tokenizer's offsets. So any chat template works, without ``{% generation %}`` markers.
"""

from __future__ import annotations

import bisect
import json
import logging
from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any

from ft.errors import TemplateError

log = logging.getLogger("train")

IGNORE_INDEX = -100  # the label of a token that carries no loss
_first = itemgetter(0)


# --------------------------------------------------------------------------- messages


def _text(content: Any, where: str) -> str:
    """A message's content as a string: text parts joined, null as empty."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind != "text" or not isinstance(part.get("text"), str):
                raise TemplateError(
                    f"{where}: content part of type {kind!r} is not supported (only 'text' parts)"
                )
            texts.append(part["text"])
        return "".join(texts)
    raise TemplateError(f"{where}: content must be a string or a list of text parts")


def _arguments(value: Any, where: str) -> Any:
    """A tool call's ``arguments``: OpenAI's JSON string, parsed (templates expect a dict)."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise TemplateError(f"{where}: arguments are not valid JSON") from None
    return {} if value is None else value


def _tool_calls(calls: Any, where: str) -> list[dict[str, Any]]:
    normalized = []
    for k, call in enumerate(calls):
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise TemplateError(f"{where}.tool_calls[{k}] must name a function")
        entry: dict[str, Any] = {
            "type": call.get("type") or "function",
            "function": {
                "name": function["name"],
                "arguments": _arguments(function.get("arguments"), f"{where}.tool_calls[{k}]"),
            },
        }
        if call.get("id") is not None:
            entry["id"] = call["id"]
        normalized.append(entry)
    return normalized


def chat_messages(
    raw: Sequence[Mapping[str, Any]], *, developer_role: bool = True
) -> tuple[list[dict[str, Any]], list[int]]:
    """(messages as a chat template takes them, each message's weight).

    Keys whose value is null are absent (a dataset's rows share one schema, so a
    user message may hold ``tool_calls: None``); ``developer`` becomes ``system``
    unless the template knows the role; content parts are joined; tool call
    arguments are parsed from their JSON string. Weights: 1 unless an assistant
    message says 0; other roles 0.
    """
    messages: list[dict[str, Any]] = []
    weights: list[int] = []
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise TemplateError(f"{where} must be an object with a 'role'")
        role = message["role"]
        if role == "developer" and not developer_role:
            role = "system"
        out: dict[str, Any] = {"role": role, "content": _text(message.get("content"), where)}
        for key in ("name", "tool_call_id"):
            if message.get(key) is not None:
                out[key] = message[key]
        if message.get("tool_calls"):
            out["tool_calls"] = _tool_calls(message["tool_calls"], where)
        weight = message.get("weight")
        weights.append((1 if weight is None else int(weight)) if role == "assistant" else 0)
        messages.append(out)
    return messages, weights


def chat_tools(raw: Any) -> list[dict[str, Any]] | None:
    """``tools`` as the template takes them (null members dropped), or None."""
    if not raw:
        return None
    tools = []
    for tool in raw:
        tool = {k: v for k, v in tool.items() if v is not None}
        if isinstance(tool.get("function"), Mapping):
            tool["function"] = {k: v for k, v in tool["function"].items() if v is not None}
        tools.append(tool)
    return tools


def _loaded(value: Any) -> Any:
    """A column value that may hold JSON text (as TRL allows for ``tools``)."""
    return json.loads(value) if isinstance(value, str) else value


# --------------------------------------------------------------------------- labels


class ChatRenderer:
    """Renders chats through one tokenizer's template and labels their tokens."""

    def __init__(self, tokenizer: Any) -> None:
        template = getattr(tokenizer, "chat_template", None)
        if not template:
            raise TemplateError(
                "the dataset is chat ('messages') but the model's tokenizer has no chat template"
            )
        self.tokenizer = tokenizer
        self.template_text = template if isinstance(template, str) else json.dumps(template)
        self.developer_role = "developer" in self.template_text
        self._tools_checked = False
        self._compiled: dict[bool, Any] = {}
        self._wrapping: tuple[str, str] | None = None
        self._probed = False
        self._special_tokens = dict(getattr(tokenizer, "special_tokens_map", {}) or {})

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        *,
        add_generation_prompt: bool = False,
    ) -> str:
        """What ``apply_chat_template(messages, tools=tools, tokenize=False)`` returns for
        messages as chat_messages() makes them, rendered straight through the compiled
        template (a conversation is rendered several times here, so the per-call work
        of apply_chat_template is skipped); apply_chat_template itself when the compiled
        template is out of reach."""
        compiled = self._template(tools is not None)
        if compiled is None:
            rendered: str = self.tokenizer.apply_chat_template(
                list(messages),
                tools=tools,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
            )
            return rendered
        text: str = compiled.render(
            messages=messages,
            tools=tools,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **self._special_tokens,
        )
        return text

    def _template(self, with_tools: bool) -> Any:
        if with_tools not in self._compiled:
            try:
                from transformers.utils.chat_template_utils import _compile_jinja_template

                chosen = self.tokenizer.get_chat_template(None, [] if with_tools else None)
                self._compiled[with_tools] = _compile_jinja_template(chosen)
            except (ImportError, AttributeError, TypeError):
                self._compiled[with_tools] = None
        return self._compiled[with_tools]

    def label(
        self, raw_messages: Any, raw_tools: Any = None, *, train_on_inputs: bool = False
    ) -> dict[str, list[int]]:
        """``input_ids`` and ``labels`` of one chat example."""
        messages, weights = chat_messages(_loaded(raw_messages), developer_role=self.developer_role)
        tools = chat_tools(_loaded(raw_tools))
        uses_tools = bool(tools) or any("tool_calls" in m or m["role"] == "tool" for m in messages)
        weighted = [] if train_on_inputs else [i for i, w in enumerate(weights) if w == 1]
        calling = [i for i, m in enumerate(messages) if "tool_calls" in m]
        try:
            text = self.render(messages, tools)
            self.check_tools(messages, tools, text)
            turns = None if uses_tools else self._found_turns(messages, weighted, text)
            if turns is None:
                turns = self._turn_spans(messages, sorted({*weighted, *calling}), tools, text)
            if uses_tools:
                self.check_tool_calls(messages, turns, text)
        except TemplateError:
            raise
        except Exception as exc:  # noqa: BLE001 (jinja and templates raise anything)
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            if uses_tools:
                raise TemplateError(
                    "the model's chat template cannot render tool calls (tools, tool_calls or "
                    f"tool messages), and the data has them: {reason}"
                ) from None
            raise TemplateError(
                f"the model's chat template cannot render a chat example: {reason}"
            ) from None
        spans = [turns[i] for i in weighted if turns[i][1] > turns[i][0]]
        return tokens_with_labels(self.tokenizer, text, None if train_on_inputs else spans)

    def _found_turns(
        self, messages: list[dict[str, Any]], weighted: list[int], text: str
    ) -> dict[int, tuple[int, int]] | None:
        """The turn spans without rendering again, when the template wraps an assistant
        message's content the way its generation prompt and a final answer show (the
        common case: a header, the content verbatim, an end-of-turn): each content is
        found in order, with exactly that header before it and that ending after it.
        None when anything differs (then the spans come from rendering up to each turn)."""
        wrapping = self._assistant_wrapping()
        if wrapping is None:
            return None
        header, ending = wrapping
        spans: dict[int, tuple[int, int]] = {}
        cursor = 0
        for i, message in enumerate(messages):
            content = message["content"]
            if message["role"] != "assistant" or i not in weighted:
                if content:
                    found = text.find(content, cursor)
                    if found < 0:
                        return None
                    cursor = found + len(content)
                continue
            if not content:
                return None
            found = text.find(header + content + ending, cursor)
            if found < 0:
                return None
            start = found + len(header)
            cursor = start + len(content) + len(ending)
            spans[i] = (start, cursor)
        return spans

    def _assistant_wrapping(self) -> tuple[str, str] | None:
        """(header, ending): what the generation prompt adds, and what follows a final
        assistant message's content; None when the template does not show them plainly."""
        if not self._probed:
            self._probed = True
            user = {"role": "user", "content": "\u27e6probe question\u27e7"}
            answer = "\u27e6probe answer\u27e7"
            try:
                bare = self.render([user])
                prompted = self.render([user], add_generation_prompt=True)
                full = self.render([user, {"role": "assistant", "content": answer}])
            except Exception:  # noqa: BLE001 (a template may refuse the probe)
                return None
            header = prompted[len(bare) :]
            if prompted.startswith(bare) and header and full.startswith(prompted + answer):
                self._wrapping = (header, full[len(prompted) + len(answer) :])
        return self._wrapping

    def _turn_spans(
        self,
        messages: list[dict[str, Any]],
        indices: list[int],
        tools: list[dict[str, Any]] | None,
        text: str,
    ) -> dict[int, tuple[int, int]]:
        """{i: (start, end)}: the characters of ``text`` that assistant message ``i``
        adds after its header (what the generation prompt renders)."""
        spans = {}
        for i in indices:
            last = i == len(messages) - 1
            end = len(text) if last else self._boundary(messages[: i + 1], tools, text)
            if i > 0:
                start = self._boundary(messages[:i], tools, text, add_generation_prompt=True)
            else:  # nothing before it to render: it starts after the first assistant header
                wrapping = self._assistant_wrapping()
                found = text.find(wrapping[0]) if wrapping else -1
                start = found + len(wrapping[0]) if wrapping and found >= 0 else 0
            spans[i] = (start, max(start, end))
        return spans

    def _boundary(
        self,
        prefix: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        text: str,
        *,
        add_generation_prompt: bool = False,
    ) -> int:
        """Where the rendering of ``prefix`` ends inside ``text``: its length when it is a
        prefix of it (templates render a conversation's start the same way whatever
        follows), else the length of what the two share."""
        rendered = self.render(prefix, tools, add_generation_prompt=add_generation_prompt)
        if text.startswith(rendered):
            return len(rendered)
        shared = 0
        for a, b in zip(rendered, text, strict=False):
            if a != b:
                break
            shared += 1
        return shared

    def check_tools(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, text: str
    ) -> None:
        """The template shows the tools to the model (checked once per job, when there
        are tools)."""
        if not tools or self._tools_checked:
            return
        if self.render(messages, None) == text:
            raise TemplateError(
                "the model's chat template cannot render tools: the data has 'tools', and the "
                "template renders the conversation the same with or without them; use a model "
                "whose chat template supports tools"
            )
        self._tools_checked = True

    def check_tool_calls(
        self, messages: list[dict[str, Any]], turns: Mapping[int, tuple[int, int]], text: str
    ) -> None:
        """Each tool call's function name appears in its own turn, each tool result in
        the text."""
        for i, message in enumerate(messages):
            start, end = turns.get(i, (0, len(text)))
            for call in message.get("tool_calls", ()):
                name = call["function"]["name"]
                if name not in text[start:end]:
                    raise TemplateError(
                        "the model's chat template cannot render tool calls: the data has "
                        f"'tool_calls' (a call to {name!r}) and the template leaves them out of "
                        "the assistant's turn; use a model whose chat template supports tool calls"
                    )
            if message["role"] == "tool" and message["content"] not in text:
                raise TemplateError(
                    "the model's chat template cannot render tool messages: the data has a "
                    "'tool' message and the template leaves it out; use a model whose chat "
                    "template supports tool calls"
                )


def tokens_with_labels(
    tokenizer: Any, text: str, spans: Sequence[tuple[int, int]] | None, *, add_special: bool = False
) -> dict[str, list[int]]:
    """Tokenize ``text``; a token carries loss when it starts inside one of ``spans``
    (character ranges, in order), every token when ``spans`` is None."""
    if spans is None:
        ids: list[int] = tokenizer(text, add_special_tokens=add_special)["input_ids"]
        return {"input_ids": ids, "labels": list(ids)}
    backend = getattr(tokenizer, "backend_tokenizer", None) if not add_special else None
    if backend is not None:
        # The Rust tokenizer that tokenizer(text) calls, for its ids and offsets at once.
        encoding = backend.encode(text, add_special_tokens=False)
        ids = encoding.ids
        offsets = encoding.offsets
    elif getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
        ids = encoded["input_ids"]
        offsets = encoded["offset_mapping"]
    else:  # a slow tokenizer: where each span starts and ends, counted in tokens
        ids = tokenizer(text, add_special_tokens=add_special)["input_ids"]
        return {"input_ids": ids, "labels": _labels_by_prefix(tokenizer, text, ids, spans)}
    # Token starts only grow: each span is the run of tokens that start inside it.
    labels = [IGNORE_INDEX] * len(ids)
    for start, end in spans:
        first = bisect.bisect_left(offsets, start, key=_first)
        last = bisect.bisect_left(offsets, end, lo=first, key=_first)
        labels[first:last] = ids[first:last]
    return {"input_ids": list(ids), "labels": labels}


def _labels_by_prefix(
    tokenizer: Any, text: str, ids: list[int], spans: Sequence[tuple[int, int]]
) -> list[int]:
    labels = [IGNORE_INDEX] * len(ids)
    for start, end in spans:
        first = len(tokenizer(text[:start], add_special_tokens=False)["input_ids"])
        last = len(tokenizer(text[:end], add_special_tokens=False)["input_ids"])
        for t in range(first, min(last, len(ids))):
            labels[t] = ids[t]
    return labels


# --------------------------------------------------------------------------- examples


def _with_eos(text: str, tokenizer: Any) -> str:
    eos = getattr(tokenizer, "eos_token", None)
    return text if not eos or text.endswith(eos) else text + eos


def label_example(
    example: Mapping[str, Any],
    fmt: str,
    tokenizer: Any,
    *,
    train_on_inputs: bool = False,
    renderer: ChatRenderer | None = None,
) -> dict[str, list[int]]:
    """``input_ids`` and ``labels`` of one example of format ``fmt`` (see the module)."""
    if fmt == "messages":
        renderer = renderer or ChatRenderer(tokenizer)
        return renderer.label(
            example["messages"], example.get("tools"), train_on_inputs=train_on_inputs
        )
    if fmt == "prompt_completion":
        # As TRL tokenizes plain text: the tokenizer's special tokens, an EOS at the end.
        prompt = example["prompt"]
        text = _with_eos(prompt + example["completion"], tokenizer)
        spans = None if train_on_inputs else [(len(prompt), len(text))]
        return tokens_with_labels(tokenizer, text, spans, add_special=True)
    return tokens_with_labels(
        tokenizer, _with_eos(example["text"], tokenizer), None, add_special=True
    )


def build_labels(
    dataset: Any, fmt: str, tokenizer: Any, *, train_on_inputs: bool, max_length: int, name: str
) -> Any:
    """The dataset as ``input_ids`` / ``labels``, cut to ``max_length`` tokens (the start
    kept); examples left without a token that carries loss are dropped (with a warning)."""
    renderer = ChatRenderer(tokenizer) if fmt == "messages" else None

    def _label(example: Mapping[str, Any]) -> dict[str, list[int]]:
        out = label_example(
            example, fmt, tokenizer, train_on_inputs=train_on_inputs, renderer=renderer
        )
        return {key: value[:max_length] for key, value in out.items()}

    labelled = dataset.map(_label, remove_columns=list(dataset.column_names))
    kept = labelled.filter(lambda example: any(x != IGNORE_INDEX for x in example["labels"]))
    if len(kept) == 0:
        raise TemplateError(
            f"no example of the {name} has a token that carries loss within max_seq_length "
            f"{max_length}"
        )
    if len(kept) < len(labelled):
        log.warning(
            "dropped %d of %d examples of the %s: no token that carries loss within "
            "max_seq_length %d",
            len(labelled) - len(kept),
            len(labelled),
            name,
            max_length,
        )
    return kept


# --------------------------------------------------------------------------- preview


def render_chat(messages: Sequence[Mapping[str, Any]], tokenizer: Any, tools: Any = None) -> str:
    """The text a chat example becomes through the tokenizer's chat template."""
    renderer = ChatRenderer(tokenizer)
    normalized, _ = chat_messages(_loaded(messages), developer_role=renderer.developer_role)
    return renderer.render(normalized, chat_tools(_loaded(tools)))


def preview_example(example: Mapping[str, Any], fmt: str, tokenizer: Any, limit: int = 500) -> str:
    """The start of what the model is trained on for one example (chat rendered)."""
    if fmt == "preference":  # the prompt and the preferred answer, as DPO tokenizes them
        from ft.dpo import preview_row

        return preview_row(example, tokenizer, limit)
    if fmt == "messages":
        text = render_chat(example["messages"], tokenizer, example.get("tools"))
    elif fmt == "prompt_completion":
        text = example["prompt"] + example["completion"]
    else:
        text = example["text"]
    return str(text)[:limit]
