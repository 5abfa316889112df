"""How a model writes tool calls: its native format when its chat template has one, else ours.

A chat template that was trained with tools shows it in its text (Hermes/Qwen `<tool_call>`
blocks, Mistral's `[TOOL_CALLS]`, Llama 3.x's bare JSON object), so the format is detected
from the template source. A template with no tool support (the bundled SmolLM2 and Gemma
3 270M) gets a generic JSON envelope, `{"tool_calls": [{"name": …, "arguments": {…}}]}`,
described to the model in a system message.

Every format is "a marker, then JSON call objects in some wrapping"; `ToolCallParser` reads
a reply as it is generated and splits it into content and calls, streaming each call's
arguments as they arrive. `ToolConstraint` is what a runtime needs to force well-formed calls
with a grammar (see `runtimes.llamacpp.tool_grammar`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

WS = " \t\n\r"


@dataclass(frozen=True)
class ToolFormat:
    """One way of writing tool calls. Literal pieces are JSON-ish tokens between which any
    whitespace is allowed; each call is one JSON object `{"name": …, <args_key>: {…}}`."""

    name: str
    native: bool  # the chat template renders `tools` and `tool_calls` itself
    marker: tuple[str, ...]  # the text that starts the calls, e.g. ("<tool_call>",)
    list_open: tuple[str, ...]  # the marker and what follows it before the first call
    call_open: tuple[str, ...]  # before each call
    call_close: tuple[str, ...]  # after each call
    separator: tuple[str, ...]  # between calls (after call_close)
    list_close: tuple[str, ...]  # after the last call
    args_key: str = "arguments"
    anchored: bool = False  # calls only at the very start of the reply
    parallel: bool = True  # the format can hold more than one call
    call_level: int = 0  # JSON nesting at which a call object opens, counted from the marker


HERMES = ToolFormat(
    name="hermes",
    native=True,
    marker=("<tool_call>",),
    list_open=(),
    call_open=("<tool_call>",),
    call_close=("</tool_call>",),
    separator=(),
    list_close=(),
)
MISTRAL = ToolFormat(
    name="mistral",
    native=True,
    marker=("[TOOL_CALLS]",),
    list_open=("[TOOL_CALLS]", "["),
    call_open=(),
    call_close=(),
    separator=(",",),
    list_close=("]",),
    call_level=1,
)
LLAMA3 = ToolFormat(
    name="llama3",
    native=True,
    marker=("{", '"name"'),
    list_open=(),
    call_open=(),
    call_close=(),
    separator=(),
    list_close=(),
    args_key="parameters",
    anchored=True,
    parallel=False,
)
GENERIC = ToolFormat(
    name="generic",
    native=False,
    marker=("{", '"tool_calls"'),
    list_open=("{", '"tool_calls"', ":", "["),
    call_open=(),
    call_close=(),
    separator=(",",),
    list_close=("]", "}"),
    anchored=True,
    call_level=2,
)
FORMATS = {f.name: f for f in (HERMES, MISTRAL, LLAMA3, GENERIC)}


def detect_format(template_source: str | None) -> ToolFormat:
    """The tool format a model's own chat template was written for; GENERIC without one."""
    src = template_source or ""
    if "<tool_call>" in src and "tools" in src:
        return HERMES
    if "[TOOL_CALLS]" in src:
        return MISTRAL
    if "<|start_header_id|>" in src and "tools" in src and "parameters" in src:
        return LLAMA3
    return GENERIC


@dataclass(frozen=True)
class ToolConstraint:
    """What a runtime needs to constrain tool calls: the format, each offered function's name
    and parameter schema (compact JSON), whether the grammar waits for the model to start a
    call (`lazy`, for tool_choice auto) and whether several calls may follow each other."""

    format: ToolFormat
    functions: tuple[tuple[str, str], ...]
    lazy: bool
    parallel: bool


# --- rendering: the conversation as the model's template expects it ---


def template_tools(functions: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Tools as chat templates written for OpenAI-style requests read them."""
    return [{"type": "function", "function": dict(f)} for f in functions]


def native_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Messages for a tool-aware template: call arguments as objects (templates `tojson`
    them), each call also flattened (`name`, `arguments`) as some templates read it."""
    out = []
    for message in messages:
        entry = dict(message)
        calls = message.get("tool_calls")
        if calls:
            entry["tool_calls"] = [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {"name": c["name"], "arguments": _loads_or_keep(c["arguments"])},
                    "name": c["name"],
                    "arguments": _loads_or_keep(c["arguments"]),
                }
                for c in calls
            ]
        out.append(entry)
    return out


def _loads_or_keep(arguments: str) -> Any:
    """Arguments as JSON when they are; a client's text that is not (or nests past Python's
    recursion limit) stays the string it sent."""
    try:
        return json.loads(arguments)
    except (ValueError, RecursionError):
        return arguments


def calls_text(fmt: ToolFormat, calls: Sequence[Mapping[str, Any]]) -> str:
    """Calls written out in `fmt`, as the model itself would have written them."""
    objects = [
        json.dumps({"name": c["name"], fmt.args_key: _loads_or_keep(c["arguments"])}) for c in calls
    ]
    if fmt.call_open:  # each call in its tags (Hermes, Qwen)
        opening, closing = "".join(fmt.call_open), "".join(fmt.call_close)
        return "\n".join(f"{opening}\n{o}\n{closing}" for o in objects)
    if fmt is MISTRAL:
        return "[TOOL_CALLS][" + ", ".join(objects) + "]"
    if fmt is LLAMA3:
        return objects[0] if len(objects) == 1 else "; ".join(objects)
    return '{"tool_calls": [' + ", ".join(objects) + "]}"


Choice = Literal["none", "auto", "required", "named"]


def generic_instructions(
    functions: Sequence[Mapping[str, Any]], choice: Choice, parallel: bool, chosen: str | None
) -> str:
    """The system text that offers tools to a model whose template has no tool support."""
    listed = "\n".join(json.dumps(dict(f), separators=(", ", ": ")) for f in functions)
    shape = '{"tool_calls": [{"name": "<function name>", "arguments": {<arguments>}}]}'
    lines = [
        "You can call these functions:",
        listed,
        f"To call functions, reply with only this JSON and nothing else: {shape}",
    ]
    if not parallel:
        lines.append("Call one function at a time.")
    if choice == "auto":
        lines.append("If no function is needed, answer in plain text.")
    elif choice == "required":
        lines.append("You must call a function now.")
    elif choice == "named":
        lines.append(f"You must call the function {chosen} now.")
    lines.append("Function results come back in messages that start with 'Function result'.")
    return "\n".join(lines)


def generic_messages(
    messages: Sequence[Mapping[str, Any]], instructions: str | None
) -> list[dict[str, Any]]:
    """A tool conversation as plain chat for templates without tool support: the offer in
    the system message, past calls as the assistant's JSON, results as user messages."""
    out: list[dict[str, Any]] = []
    for message in messages:
        role, content = message.get("role"), message.get("content") or ""
        if role == "assistant" and message.get("tool_calls"):
            called = calls_text(GENERIC, message["tool_calls"])
            out.append(
                {"role": "assistant", "content": (content + "\n" if content else "") + called}
            )
        elif role == "tool":
            head = f"Function result (call {message.get('tool_call_id', '?')}"
            head += f", {message['name']})" if message.get("name") else ")"
            out.append({"role": "user", "content": f"{head}:\n{content}"})
        else:
            out.append(
                {k: v for k, v in message.items() if k not in ("tool_calls", "tool_call_id")}
            )
    if instructions:
        if out and out[0].get("role") == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{instructions}"}
        else:
            out.insert(0, {"role": "system", "content": instructions})
    return out
