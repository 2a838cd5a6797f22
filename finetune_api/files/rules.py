"""What one line of a training file must be: the formats and their rules, line by line.

This module is the definition. ``files/check.py`` streams a file through it (and
through a faster path that accepts only what these rules accept); docs/own-data.md
says the same in prose, with an example line for each shape.

Formats (the first valid line decides; every other line must be the same):

- ``chat``: OpenAI's fine-tuning format in full: ``{"messages": [...], "tools"?,
  "parallel_tool_calls"?}``; messages of role ``system``, ``developer``, ``user``,
  ``assistant`` or ``tool``; content a string or a list of ``{"type": "text",
  "text"}`` parts; assistant ``tool_calls`` (then content may be null or absent)
  and ``weight`` 0/1; ``tool`` messages answer a call made earlier in the line.
  At least one assistant message of weight 1 (content or tool calls) per line.
- ``preference``: OpenAI's DPO shape: ``{"input": {"messages", "tools"?,
  "parallel_tool_calls"?}, "preferred_output": [one assistant message],
  "non_preferred_output": [one assistant message]}``; the input ends with a
  ``user`` or ``tool`` message.
- ``text``: ``{"text": "…"}`` (non-empty).
- ``prompt_completion``: ``{"prompt": "…", "completion": "…"}`` (completion non-empty).

An optional key whose value is ``null`` counts as absent (the trainer's loader
reads an absent key as null, so the two cannot mean different things). Keys
this module does not name are ignored. Every reason names where in the line the
rule broke, as ``messages[2].tool_calls[0].function.arguments``.

A line must also be JSON a loader reads the same way everywhere: a key given
twice in one object, a lone UTF-16 surrogate escape (``"\\ud800"``, which is
no character and cannot be written as UTF-8), a number beyond a 64-bit integer
or a double, and objects or arrays nested more than ``MAX_DEPTH`` levels are
line errors.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

FORMATS = ("chat", "text", "prompt_completion", "preference")
ROLES = ("system", "developer", "user", "assistant", "tool")
_ROLE_SET = frozenset(ROLES)
_ROLE_LIST = ", ".join(ROLES[:-1]) + " or " + ROLES[-1]
# A \uD800-\uDFFF escape: only these can leave a lone surrogate after decoding.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abAB]|\\u[dD][c-fC-F]")
# Objects and arrays nested deeper than this are a line error: the trainer's loader
# (Arrow's JSON reader under ``datasets``) gives up at about 63 levels; a tool's
# JSON Schema needs a dozen.
MAX_DEPTH = 32


class LineError(ValueError):
    """Why one line is not a valid example (the message is the reason users see)."""


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return value


class _NumberTooLarge(Exception):
    def __init__(self, literal: str) -> None:
        super().__init__(literal)
        self.literal = literal


_INT64 = 1 << 63


def _int64(literal: str) -> int:
    value = int(literal)
    if not -_INT64 <= value < _INT64:
        raise _NumberTooLarge(literal)
    return value


def _finite(literal: str) -> float:
    value = float(literal)
    if value in (math.inf, -math.inf):
        raise _NumberTooLarge(literal)
    return value


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_pairs, parse_int=_int64, parse_float=_finite)


def _short(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


def loads(text: str) -> Any:
    """``text`` as one JSON value, or LineError: the line-by-line check's only JSON reader.

    Stricter than ``json.loads`` where a trainer's loader needs it: no key twice
    in one object, no lone surrogate in any string or key, no number beyond a
    64-bit integer or a double, nesting at most ``MAX_DEPTH`` levels.
    """
    try:
        value = _DECODER.decode(text)
    except _DuplicateKey as error:
        raise LineError(f"the key {_short(error.key)} appears twice in one object") from None
    except _NumberTooLarge as error:
        raise LineError(
            f"the number {error.literal[:40]} is too large (integers must fit in 64 bits, "
            "other numbers in a double)"
        ) from None
    except RecursionError:
        raise LineError("JSON nested too deeply") from None
    except ValueError:
        raise LineError("not valid JSON") from None
    if text.count("[") + text.count("{") > MAX_DEPTH and _deeper_than(value, MAX_DEPTH):
        raise LineError(f"JSON nested more than {MAX_DEPTH} levels deep")
    if _SURROGATE_ESCAPE.search(text) is not None:
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise LineError(
                "a string holds a lone surrogate escape such as \\ud800 (half of a "
                "UTF-16 pair, no character): not valid Unicode"
            ) from None
        except (RecursionError, ValueError):
            raise LineError("JSON nested too deeply") from None
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests objects and arrays more than ``limit`` levels (level by level)."""
    level = [value]
    for _ in range(limit):
        deeper: list[Any] = []
        for item in level:
            children = item.values() if type(item) is dict else item
            deeper.extend(child for child in children if type(child) in (dict, list))
        if not deeper:
            return False
        level = deeper
    return True


def example_format(value: Any) -> str:
    """The format one decoded line is written in, or LineError saying why it has none."""
    if not isinstance(value, dict):
        kind = "array" if isinstance(value, list) else type(value).__name__
        raise LineError(f"a JSON {kind}, not an object")
    if "messages" in value:
        return "chat"
    if "input" in value or "preferred_output" in value or "non_preferred_output" in value:
        return "preference"
    if "text" in value:
        return "text"
    if "prompt" in value or "completion" in value:
        return "prompt_completion"
    raise LineError(
        "no 'messages' (chat), 'input'/'preferred_output' (preference), 'text' or "
        "'prompt'/'completion' key"
    )


def check_example(value: dict[str, Any], fmt: str) -> None:
    """LineError unless ``value`` is a valid example of ``fmt``."""
    if fmt == "chat":
        _check_chat(value)
    elif fmt == "preference":
        _check_preference(value)
    elif fmt == "text":
        _non_empty_text(value.get("text"), "'text'")
    else:
        if not isinstance(value.get("prompt"), str):
            raise LineError("'prompt' must be a string")
        _non_empty_text(value.get("completion"), "'completion'")


def _non_empty_text(value: Any, where: str) -> None:
    if not isinstance(value, str):
        raise LineError(f"{where} must be a string")
    if not value.strip():
        raise LineError(f"{where} is empty")


# -- chat -------------------------------------------------------------------------------


def _check_chat(value: dict[str, Any]) -> None:
    messages = value.get("messages")
    if not isinstance(messages, list) or not messages:
        raise LineError("'messages' must be a non-empty list")
    tools = _tool_names(value, "")
    calls: set[str] = set()
    assistants = learned = 0
    for index, message in enumerate(messages):
        role = _check_message(message, f"messages[{index}]", tools, calls, weights=True)
        if role == "assistant":
            assistants += 1
            learned += message.get("weight") != 0
    if not assistants:
        raise LineError("no assistant message: nothing to learn from")
    if not learned:
        raise LineError("every assistant message has weight 0: nothing to learn from")


def _tool_names(value: dict[str, Any], prefix: str) -> frozenset[str] | None:
    """The names the line's ``tools`` define (None: the line has no ``tools``)."""
    parallel = value.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise LineError(f"{prefix}parallel_tool_calls must be true or false")
    tools = value.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise LineError(f"{prefix}tools must be a list")
    names: set[str] = set()
    for index, tool in enumerate(tools):
        where = f"{prefix}tools[{index}]"
        if not isinstance(tool, dict):
            raise LineError(f"{where} must be an object")
        if tool.get("type") != "function":
            raise LineError(f'{where}.type must be "function"')
        function = tool.get("function")
        if not isinstance(function, dict):
            raise LineError(f"{where}.function must be an object")
        name = function.get("name")
        if not isinstance(name, str) or not name.strip():
            raise LineError(f"{where}.function.name must be a non-empty string")
        if name in names:
            raise LineError(f"{where}.function.name {_short(name)} is defined twice")
        names.add(name)
        description = function.get("description")
        if description is not None and not isinstance(description, str):
            raise LineError(f"{where}.function.description must be a string")
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise LineError(f"{where}.function.parameters must be a JSON Schema object")
    return frozenset(names)


def _check_message(
    message: Any, where: str, tools: frozenset[str] | None, calls: set[str], *, weights: bool
) -> str:
    """Check one message; record the ids of its tool calls in ``calls``; its role."""
    if not isinstance(message, dict):
        raise LineError(f"{where} must be an object")
    role = message.get("role")
    if role not in _ROLE_SET:
        raise LineError(f"{where}.role must be {_ROLE_LIST}")
    name = message.get("name")
    if name is not None and not isinstance(name, str):
        raise LineError(f"{where}.name must be a string")
    weight = message.get("weight")
    if weight is not None:
        if not weights:
            raise LineError(f"{where}.weight: weights are for chat lines, not preference pairs")
        if role != "assistant":
            raise LineError(f"{where}.weight is only allowed on assistant messages")
        if type(weight) is not int or weight not in (0, 1):
            raise LineError(f"{where}.weight must be 0 or 1, not {json.dumps(weight)}")
    tool_calls = message.get("tool_calls")
    if tool_calls is not None and role != "assistant":
        raise LineError(f"{where}.tool_calls is only allowed on assistant messages")
    call_id = message.get("tool_call_id")
    if role == "tool":
        if not isinstance(call_id, str) or not call_id:
            raise LineError(f"{where}.tool_call_id must name the call this tool message answers")
        if call_id not in calls:
            raise LineError(
                f"{where}.tool_call_id {_short(call_id)} names no tool call made earlier "
                "in this example"
            )
    elif call_id is not None:
        raise LineError(f"{where}.tool_call_id is only allowed on tool messages")
    called = role == "assistant" and _check_calls(tool_calls, where, tools, calls)
    _check_content(message.get("content"), where, called)
    return str(role)


def _check_calls(
    tool_calls: Any, where: str, tools: frozenset[str] | None, calls: set[str]
) -> bool:
    """Check an assistant's tool calls; True when it makes at least one."""
    if tool_calls is None:
        return False
    if not isinstance(tool_calls, list):
        raise LineError(f"{where}.tool_calls must be a list")
    for index, call in enumerate(tool_calls):
        at = f"{where}.tool_calls[{index}]"
        if not isinstance(call, dict):
            raise LineError(f"{at} must be an object")
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            raise LineError(f"{at}.id must be a non-empty string")
        if call_id in calls:
            raise LineError(f"{at}.id {_short(call_id)} is the id of an earlier call too")
        if call.get("type") != "function":
            raise LineError(f'{at}.type must be "function"')
        function = call.get("function")
        if not isinstance(function, dict):
            raise LineError(f"{at}.function must be an object")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise LineError(f"{at}.function.name must be a non-empty string")
        if tools is not None and name not in tools:
            raise LineError(f"{at}.function.name {_short(name)} is not one of the line's tools")
        arguments = function.get("arguments")
        if not isinstance(arguments, str) or not _is_json_object(arguments):
            raise LineError(f"{at}.function.arguments is not a JSON object string")
        calls.add(call_id)
    return bool(tool_calls)


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(loads(text), dict)
    except LineError:
        return False


def _check_content(content: Any, where: str, called: bool) -> None:
    """A message's content: text, or text parts; blank or null only beside tool calls."""
    if called and content is None:
        return
    if isinstance(content, str):
        if not called and not content.strip():
            raise LineError(f"{where}.content is empty")
        return
    if isinstance(content, list):
        if not content and not called:
            raise LineError(f"{where}.content is an empty list")
        for index, part in enumerate(content):
            at = f"{where}.content[{index}]"
            if not isinstance(part, dict):
                raise LineError(f"{at} must be an object")
            kind = part.get("type")
            if kind != "text":
                shown = _short(kind) if isinstance(kind, str) else json.dumps(kind)[:40]
                raise LineError(f'{at} is a part of type {shown}: only "text" parts are accepted')
            if not isinstance(part.get("text"), str):
                raise LineError(f"{at}.text must be a string")
        if not called and not any(part["text"].strip() for part in content):
            raise LineError(f"{where}.content is empty")
        return
    if content is None:
        raise LineError(
            f"{where}.content is missing (only an assistant message with tool_calls may "
            "leave it out)"
        )
    raise LineError(f"{where}.content must be a string or a list of text parts")


# -- preference -------------------------------------------------------------------------


def _check_preference(value: dict[str, Any]) -> None:
    prompt = value.get("input")
    if not isinstance(prompt, dict):
        raise LineError("'input' must be an object holding 'messages'")
    messages = prompt.get("messages")
    if not isinstance(messages, list) or not messages:
        raise LineError("input.messages must be a non-empty list")
    tools = _tool_names(prompt, "input.")
    calls: set[str] = set()
    role = ""
    for index, message in enumerate(messages):
        role = _check_message(message, f"input.messages[{index}]", tools, calls, weights=False)
    if role not in ("user", "tool"):
        raise LineError(
            f"input.messages ends with a{'n' if role[0] in 'aeiou' else ''} {role} message: "
            "it must end with a user or tool message (the outputs answer it)"
        )
    for key in ("preferred_output", "non_preferred_output"):
        output = value.get(key)
        if not isinstance(output, list) or len(output) != 1:
            found = f"{len(output)} messages" if isinstance(output, list) else "no list"
            raise LineError(f"'{key}' must be a list of exactly one assistant message ({found})")
        where = f"{key}[0]"
        if isinstance(output[0], dict) and output[0].get("role") != "assistant":
            raise LineError(f"{where}.role must be assistant")
        _check_message(output[0], where, tools, set(calls), weights=False)


# -- the text an example is trained on, for counting ---------------------------------------


def example_pieces(example: dict[str, Any]) -> tuple[str, ...]:
    """The texts of a valid example that become tokens: one, or a preference pair's
    prompt and both outputs (TRL's DPO trains the prompt with each output, so the dry
    run counts them apart).

    Chat: each message as ``role: content`` (text parts joined), tool calls as
    ``name(arguments)``, and the line's ``tools`` as JSON first (a chat template
    renders them into the prompt). Preference: the input's messages and tools, then
    each output. Text: the text. Prompt/completion: the two joined. Only for examples
    :func:`check_example` accepted.
    """
    if "messages" in example:
        return (_conversation(example["messages"], example.get("tools")),)
    if "input" in example:
        prompt = example["input"]
        return (
            _conversation(prompt["messages"], prompt.get("tools")),
            _conversation(example["preferred_output"], None),
            _conversation(example["non_preferred_output"], None),
        )
    if "text" in example:
        return (str(example["text"]),)
    return (f"{example.get('prompt', '')}{example.get('completion', '')}",)


def example_text(example: dict[str, Any]) -> str:
    """Every text of a valid example that becomes tokens, joined (for counting them)."""
    return "\n".join(example_pieces(example))


def _conversation(messages: list[dict[str, Any]], tools: Any) -> str:
    lines = [json.dumps(tools, ensure_ascii=False)] if tools else []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(part["text"] for part in content)
        text = f"{message['role']}: {content or ''}"
        for call in message.get("tool_calls") or ():
            function = call["function"]
            text += f"\n{function['name']}({function['arguments']})"
        lines.append(text)
    return "\n".join(lines)
