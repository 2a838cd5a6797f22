"""Can the model's chat template render what the data holds? (the dry run's tool check)

A chat line may hold ``tools``, assistant ``tool_calls`` and ``tool`` messages; the
job renders them with the model's own chat template and fails at once when the
template cannot (CONTRACT "The data people already have"). A dry run that loaded
the model's tokenizer says so before anything is paid for: the template (the
repository's ``chat_template.jinja``, else ``tokenizer_config.json``'s
``chat_template``) is rendered on a small probe conversation holding each thing
the data uses, and every probe value must come out in the text.

The template comes from the Hub, so it is untrusted: it is rendered in Jinja's
immutable sandbox (as ``transformers`` renders it), only when at most
:data:`MAX_TEMPLATE_CHARS` long, its output read as a stream and abandoned past
:data:`MAX_OUTPUT_CHARS` or :data:`RENDER_SECONDS`.
"""

from __future__ import annotations

import json
import time
from typing import Any

#: What a line may need of the template, in the order the problem names them.
NEEDS = ("tools", "tool_calls", "tool messages")
MAX_TEMPLATE_CHARS = 256 * 1024
MAX_OUTPUT_CHARS = 256 * 1024
RENDER_SECONDS = 2.0

_FUNCTION = "probe_lookup_order"
_ARGUMENT = "probe-argument-value"
_DESCRIPTION = "probe tool description"
_RESULT = "probe-tool-result"


def tool_needs(example: dict[str, Any]) -> set[str]:
    """Which of :data:`NEEDS` one example (chat or preference) uses."""
    found: set[str] = set()
    holders: list[Any] = [example]
    given = example.get("input")
    if isinstance(given, dict):
        holders.append(given)
    messages: list[Any] = []
    for holder in holders:
        if holder.get("tools"):
            found.add("tools")
        if isinstance(holder.get("messages"), list):
            messages.extend(holder["messages"])
    for key in ("preferred_output", "non_preferred_output"):
        if isinstance(example.get(key), list):
            messages.extend(example[key])
    for message in messages:
        if not isinstance(message, dict):
            continue
        if message.get("tool_calls"):
            found.add("tool_calls")
        if message.get("role") == "tool":
            found.add("tool messages")
    return found


def _probe(needs: set[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """A small conversation holding each thing in ``needs`` (and the tools, when needed)."""
    tools = [
        {
            "type": "function",
            "function": {
                "name": _FUNCTION,
                "description": _DESCRIPTION,
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
            },
        }
    ]
    arguments = json.dumps({"q": _ARGUMENT})
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": _FUNCTION, "arguments": arguments},
    }
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Where is order 7?"}]
    if needs & {"tool_calls", "tool messages"}:
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    if "tool messages" in needs:
        messages.append({"role": "tool", "tool_call_id": "call_1", "content": _RESULT})
    messages.append({"role": "assistant", "content": "It ships today."})
    return messages, tools if "tools" in needs else None


def _environment() -> Any:
    """Jinja's immutable sandbox, set up as transformers renders chat templates."""
    from jinja2 import nodes
    from jinja2.exceptions import TemplateError
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """``{% generation %}…{% endgeneration %}`` (transformers' assistant mask): its body."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            next(parser.stream)
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body)

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    def tojson(value: Any, ensure_ascii: bool = False, indent: Any = None, **_: Any) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent)

    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols]
    )
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = lambda fmt: time.strftime(fmt)
    return environment


def template_problem(template: str | None, needs: set[str], tokens: dict[str, Any]) -> str | None:
    """Why ``template`` cannot render ``needs`` (None: it can, or nothing is needed).

    ``tokens``: the tokenizer config's special tokens (``bos_token``, ``eos_token``)
    the template may print.
    """
    wanted = [need for need in NEEDS if need in needs]
    if not wanted:
        return None
    what = ", ".join(wanted)
    if not template:
        return f"the model has no chat template, so the {what} in the data cannot be rendered"
    if len(template) > MAX_TEMPLATE_CHARS:
        return f"the model's chat template is over {MAX_TEMPLATE_CHARS} characters: not checked"
    messages, tools = _probe(needs)
    deadline = time.monotonic() + RENDER_SECONDS
    try:
        compiled = _environment().from_string(template)
        chunks: list[str] = []
        size = 0
        for chunk in compiled.generate(
            messages=messages,
            tools=tools,
            add_generation_prompt=False,
            **tokens,
        ):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_OUTPUT_CHARS or time.monotonic() > deadline:
                return "the model's chat template did not finish rendering a small conversation"
        rendered = "".join(chunks)
    except Exception as error:  # noqa: BLE001 - the template's own failure is the answer
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        return f"the model's chat template fails on the {what} in the data: {reason}"
    missing = []
    if "tools" in needs and _DESCRIPTION not in rendered:
        missing.append("the tools' definitions")
    if "tool_calls" in needs and (_FUNCTION not in rendered or _ARGUMENT not in rendered):
        missing.append("the assistant's tool calls")
    if "tool messages" in needs and _RESULT not in rendered:
        missing.append("tool messages")
    if missing:
        return f"the model's chat template leaves out {' and '.join(missing)}: the job would fail"
    return None


def special_tokens(config: dict[str, Any]) -> dict[str, Any]:
    """``bos_token`` / ``eos_token`` of a tokenizer config (a string, or an AddedToken dict)."""
    found = {}
    for name in ("bos_token", "eos_token"):
        value = config.get(name)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            found[name] = value
    return found


def chat_template_of(config: dict[str, Any], jinja: str | None, tools: bool) -> str | None:
    """The template transformers would use: the ``.jinja`` file, else the config's (named
    ``tool_use`` when the data has tools and there is one, else ``default``)."""
    if jinja:
        return jinja
    value = config.get("chat_template")
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {
            item.get("name"): item.get("template")
            for item in value
            if isinstance(item, dict) and isinstance(item.get("template"), str)
        }
        if tools and "tool_use" in named:
            return str(named["tool_use"])
        found = named.get("default")
        return str(found) if found is not None else None
    return None


__all__ = ["NEEDS", "chat_template_of", "special_tokens", "template_problem", "tool_needs"]
