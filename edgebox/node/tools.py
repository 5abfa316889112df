"""Tool calling on /v1/chat/completions: the request checked, the plan, the reply reshaped.

`tool_plan` refuses bad tool input with a 400 naming the field before anything runs, and
decides how calls are made: the model's own format when its template has one, else the
generic JSON envelope (`runtimes.tool_format`), forced by a grammar for tool_choice
`required` or a named function, and by a lazy grammar (engaged once the model starts a
call) for `auto`. `with_tool_calls` turns a choice's generated text into content and
`ToolCallEvent`s, which the handlers shape into `message.tool_calls` or `delta.tool_calls`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from edgebox.api.errors import APIError
from edgebox.api.protocol import ChatCompletionRequest
from edgebox.runtimes.base import (
    Event,
    GrammarError,
    Runtime,
    SamplingParams,
    TokenEvent,
    ToolSchemaError,
)
from edgebox.runtimes.grammar_limits import grammar_schema, schema_problem
from edgebox.runtimes.tool_format import (
    GENERIC,
    Choice,
    ToolConstraint,
    ToolFormat,
    generic_instructions,
    generic_messages,
    native_messages,
    template_tools,
)
from edgebox.runtimes.tool_parse import ArgsDelta, CallStart, ContentDelta, Delta, ToolCallParser

MAX_TOOLS = 128  # as OpenAI allows
MAX_TOOLS_CHARS = 256 * 1024  # all definitions as compact JSON; each schema: grammar_limits
EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class ToolPlan:
    """How one request's tool calls are offered, constrained and read back."""

    choice: Choice  # "auto", "required" or "named" ("none" makes no plan)
    format: ToolFormat
    functions: tuple[dict[str, Any], ...]  # every function of the request, OpenAI's shape
    constraint: ToolConstraint | None  # None: the runtime cannot constrain (auto only)
    parallel: bool
    chosen: str | None = None  # the function tool_choice names


def tool_format_of(runtime: object) -> ToolFormat:
    return getattr(runtime, "tool_format", GENERIC)


def tool_plan(runtime: Runtime, body: ChatCompletionRequest) -> ToolPlan | None:
    """The request's tool plan, or None when no tool may be called; 400s for bad input."""
    choice = body.tool_choice
    if not body.tools:
        if choice is not None and choice != "none":
            raise _bad("'tool_choice' is only allowed when 'tools' are given", "tool_choice")
        if body.parallel_tool_calls is not None and body.tools is None:
            raise _bad(
                "'parallel_tool_calls' is only allowed when 'tools' are given",
                "parallel_tool_calls",
            )
        return None
    functions = _checked_functions(body)
    if choice == "none":
        return None
    kind: Choice = "auto" if choice is None else "named" if not isinstance(choice, str) else choice
    offered, chosen = functions, None
    if not isinstance(choice, str) and choice is not None:
        chosen = choice.function.name
        offered = [f for f in functions if f["name"] == chosen]
        if not offered:
            names = ", ".join(f["name"] for f in functions)
            raise _bad(
                f"tool_choice names the function '{choice.function.name}', which is not "
                f"among the tools (given: {names})",
                "tool_choice.function.name",
            )
    _check_no_other_constraint(body)
    if kind != "auto" and not runtime.capabilities.grammar:
        raise _bad(
            f"tool_choice '{kind}' needs constrained decoding, which this model's runtime "
            "does not have; use 'auto'",
            "tool_choice",
            code="unsupported_value",
        )
    fmt, parallel = tool_format_of(runtime), body.parallel_tool_calls is not False
    constraint = None
    if runtime.capabilities.grammar:
        schemas = tuple(
            (f["name"], _compact(grammar_schema(f.get("parameters", EMPTY_PARAMETERS))))
            for f in offered
        )
        # a named function is called once, as OpenAI's models do when one is forced
        once = kind == "named" or not parallel
        constraint = ToolConstraint(fmt, schemas, lazy=kind == "auto", parallel=not once)
    return ToolPlan(kind, fmt, tuple(functions), constraint, parallel, chosen)


def _checked_functions(body: ChatCompletionRequest) -> list[dict[str, Any]]:
    assert body.tools is not None
    if len(body.tools) > MAX_TOOLS:
        raise _bad(f"{len(body.tools)} tools given; at most {MAX_TOOLS} are allowed", "tools")
    functions: list[dict[str, Any]] = []
    total = 0
    for i, tool in enumerate(body.tools):
        if tool.type != "function":
            raise _bad(
                f"tool type '{tool.type[:40]}' is not supported; only 'function' tools are",
                f"tools[{i}].type",
                code="unsupported_value",
            )
        if tool.function is None:
            raise _bad(
                "a function tool needs a 'function' object",
                f"tools[{i}].function",
                code="missing_required_parameter",
            )
        fn = tool.function
        if any(f["name"] == fn.name for f in functions):
            raise _bad(f"two tools are named '{fn.name}'", f"tools[{i}].function.name")
        entry: dict[str, Any] = {"name": fn.name}
        if fn.description:
            entry["description"] = fn.description
        if fn.parameters is not None:
            _check_parameters(fn.parameters, f"tools[{i}].function.parameters")
            entry["parameters"] = fn.parameters
        total += len(json.dumps(entry, separators=(",", ":")))
        functions.append(entry)
    if total > MAX_TOOLS_CHARS:
        raise _bad(f"the tools are {total} characters; at most {MAX_TOOLS_CHARS} allowed", "tools")
    return functions


def _check_parameters(schema: dict[str, Any], param: str) -> None:
    """A parameters schema must describe an object; its size and nesting are bounded."""
    relaxed = grammar_schema(schema)
    problem = schema_problem(relaxed, _compact(relaxed))
    if problem:
        raise _bad(problem, param)
    kind = schema.get("type", "object")
    if kind != "object":
        raise _bad(f"parameters must be a JSON schema of type 'object', not {kind!r}", param)
    for key, expected in (("properties", dict), ("required", list), ("$defs", dict)):
        if key in schema and not isinstance(schema[key], expected):
            raise _bad(f"'{key}' in the parameters schema must be a {expected.__name__}", param)
    required = schema.get("required", [])
    if not all(isinstance(r, str) for r in required):
        raise _bad("'required' in the parameters schema must list property names", param)


def _check_no_other_constraint(body: ChatCompletionRequest) -> None:
    fmt = body.response_format
    if body.grammar or (fmt is not None and fmt.type != "text"):
        field = "grammar" if body.grammar else "response_format"
        raise _bad(
            f"'{field}' cannot be combined with tool calling yet; send tool_choice 'none' or "
            f"leave out '{field}'",
            field,
            code="unsupported_value",
        )


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _bad(message: str, param: str, *, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def tool_param(plan: ToolPlan, index: int) -> str:
    """The request field a grammar problem of the `index`th constrained function is about."""
    names = [f["name"] for f in plan.functions]
    if plan.constraint is None or index >= len(plan.constraint.functions):
        return "tools"
    name = plan.constraint.functions[index][0]
    return f"tools[{names.index(name)}].function.parameters" if name in names else "tools"


# --- the conversation, as the model's template reads it ---


def check_tool_messages(body: ChatCompletionRequest) -> None:
    for i, message in enumerate(body.messages):
        if message.role == "tool" and not message.tool_call_id:
            raise _bad(
                "a tool message needs the 'tool_call_id' of the call it answers",
                f"messages[{i}].tool_call_id",
                code="missing_required_parameter",
            )
        if message.tool_calls and message.role != "assistant":
            raise _bad("only assistant messages carry tool_calls", f"messages[{i}].tool_calls")


def template_input(
    fmt: ToolFormat, messages: list[dict[str, Any]], plan: ToolPlan | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """(messages, tools for the template): native formats get both in the template's own
    context; others a plain-text conversation with the offer in the system message."""
    if fmt.native:
        tools = template_tools(plan.functions) if plan is not None else None
        return native_messages(messages), tools
    offer = None
    if plan is not None:
        offer = generic_instructions(plan.functions, plan.choice, plan.parallel, plan.chosen)
    return generic_messages(messages, offer), None


# --- the reply: content and calls ---


@dataclass(frozen=True)
class ToolCallEvent:
    """Part of one call of a choice: its first event has the id and name, then arguments."""

    call: int  # the call's index within its choice
    id: str | None
    name: str | None
    arguments: str

    def delta(self) -> dict[str, Any]:
        """This part as OpenAI streams it in `delta.tool_calls`."""
        if self.id is not None:
            function = {"name": self.name, "arguments": self.arguments}
            return {"index": self.call, "id": self.id, "type": "function", "function": function}
        return {"index": self.call, "function": {"arguments": self.arguments}}


def _events(deltas: Sequence[Delta]) -> list[ToolCallEvent]:
    out = []
    for d in deltas:
        if isinstance(d, CallStart):
            out.append(ToolCallEvent(d.index, "call_" + uuid.uuid4().hex[:24], d.name, ""))
        elif isinstance(d, ArgsDelta) and d.text:
            out.append(ToolCallEvent(d.index, None, None, d.text))
    return out


def _content(deltas: Sequence[Delta]) -> str:
    return "".join(d.text for d in deltas if isinstance(d, ContentDelta))


async def with_tool_calls(
    events: AsyncIterator[tuple[int, Event]], fmt: ToolFormat
) -> AsyncIterator[tuple[int, Event | ToolCallEvent]]:
    """Each choice's events with its text split: content stays in the token events (their
    log-probabilities kept), call markup becomes `ToolCallEvent`s."""
    parsers: dict[int, ToolCallParser] = {}
    async for index, event in events:
        parser = parsers.setdefault(index, ToolCallParser(fmt))
        if isinstance(event, TokenEvent):
            deltas = parser.feed(event.text)
            yield index, replace(event, text=_content(deltas))
            for call in _events(deltas):
                yield index, call
        else:
            deltas = parser.feed(event.text) + parser.finish()
            for call in _events(deltas):
                yield index, call
            yield index, replace(event, text=_content(deltas))


def add_call(calls: list[dict[str, Any]], event: ToolCallEvent) -> None:
    """Collect a non-streamed choice's `message.tool_calls`."""
    if event.id is not None:
        function = {"name": event.name, "arguments": event.arguments}
        calls.append({"id": event.id, "type": "function", "function": function})
    else:
        calls[event.call]["function"]["arguments"] += event.arguments


def prepare_tools(runtime: Runtime, plan: ToolPlan | None) -> None:
    """Blocking: compile the calls' grammar now, so a schema it cannot take is a 400 naming
    the tool's parameters, and submitting later parses nothing."""
    prepare = getattr(runtime, "prepare_sampling", None)
    if plan is None or plan.constraint is None or prepare is None:
        return
    try:
        prepare(SamplingParams(tools=plan.constraint))
    except ToolSchemaError as exc:
        raise _bad(str(exc), tool_param(plan, exc.index)) from exc
    except GrammarError as exc:
        raise _bad(f"the tools cannot be turned into a grammar: {exc}", "tools") from exc
