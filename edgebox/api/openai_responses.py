"""The OpenAI Responses API as a layer over chat completions: wire models and pure translations.

`to_chat_body` turns a Responses create request (plus the stored items of the conversation it
continues) into a /v1/chat/completions body; `chat_to_response` turns the chat completion back
into a Responses object; `ResponseEventStream` turns chat.completion.chunk dicts into the
Responses stream events. The node runs them around its own chat path; the router reuses them.

Hosted tool types (web_search, local_shell, namespace, custom, …) are accepted and never
offered to the model: agents such as the Codex CLI send them on every request.
"""

from __future__ import annotations

import json
from typing import Any

from edgebox.api.errors import APIError
from edgebox.api.responses_events import ResponseEventStream, event_bytes
from edgebox.api.responses_wire import (
    AllowedToolsChoice,
    CallOutputItem,
    CustomToolCallItem,
    FunctionCallItem,
    FunctionToolChoice,
    HostedToolChoice,
    MediaContent,
    MessageItem,
    RefusalContent,
    ResponseCreateRequest,
    call_item,
    finished,
    message_item,
    new_id,
    response_shell,
)

__all__ = [
    "ResponseCreateRequest",
    "ResponseEventStream",
    "chat_to_response",
    "event_bytes",
    "function_tools",
    "input_items",
    "new_id",
    "output_text",
    "responses_param",
    "to_chat_body",
]

# --- requests: Responses input → chat completions body ---


def _bad(message: str, param: str, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def _texts(parts: list[Any], param: str) -> tuple[list[dict[str, Any]], str]:
    """(normalised parts, their text); media parts are refused: this layer reads text only."""
    out: list[dict[str, Any]] = []
    for j, part in enumerate(parts):
        if isinstance(part, MediaContent):
            raise _bad(
                f"this model reads text only; '{part.type}' content is not supported",
                f"{param}[{j}].type",
                "unsupported_content",
            )
        if isinstance(part, RefusalContent):
            out.append({"type": "refusal", "refusal": part.refusal})
        else:
            out.append({"type": part.type, "text": part.text})
    return out, "".join(p.get("text") or p.get("refusal") or "" for p in out)


def input_items(req: ResponseCreateRequest) -> list[dict[str, Any]]:
    """This request's input as stored items (ids given, text parts typed); dropped kinds left
    out. 400 naming `input[i]…` for content the model cannot read."""
    out: list[dict[str, Any]] = []
    for i, item in enumerate(req.input):
        if isinstance(item, MessageItem):
            parts, _ = _texts(item.content, f"input[{i}].content")
            if item.role == "assistant":
                parts = [{**p, "type": "output_text"} if "text" in p else p for p in parts]
            out.append(
                {"type": "message", "id": item.id or new_id("msg"), "role": item.role}
                | {"status": "completed", "content": parts}
            )
        elif isinstance(item, FunctionCallItem | CustomToolCallItem):
            out.append(item.model_dump(exclude_none=True) | {"id": item.id or new_id("fc")})
        elif isinstance(item, CallOutputItem):
            _, text = _texts(item.output, f"input[{i}].output")
            out.append(
                {"type": item.type, "id": item.id or new_id("fco"), "call_id": item.call_id}
                | {"output": text}
            )
    return out


def _call(item: dict[str, Any]) -> dict[str, Any]:
    arguments = item.get("arguments")
    if item["type"] == "custom_tool_call":
        arguments = json.dumps({"input": item.get("input", "")})
    function = {"name": item["name"], "arguments": arguments or "{}"}
    return {"id": item["call_id"], "type": "function", "function": function}


def chat_messages(items: list[dict[str, Any]], instructions: str | None) -> list[dict[str, Any]]:
    """The conversation as chat messages: calls folded into the assistant message before them,
    call outputs as `tool` messages, consecutive messages of one role joined (templates such
    as Gemma's insist that roles alternate)."""
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    for item in items:
        kind = item.get("type")
        last = messages[-1] if messages else None
        if kind == "message":
            role = "system" if item["role"] == "developer" else item["role"]
            text = "".join(p.get("text") or p.get("refusal") or "" for p in item["content"])
            if last and last["role"] == role and role != "tool" and not last.get("tool_calls"):
                last["content"] = f"{last['content']}\n\n{text}" if last["content"] else text
            else:
                messages.append({"role": role, "content": text})
        elif kind in ("function_call", "custom_tool_call"):
            if last and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(_call(item))
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [_call(item)]})
        elif kind in ("function_call_output", "custom_tool_call_output"):
            messages.append(
                {"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]}
            )
    return messages


def function_tools(req: ResponseCreateRequest) -> list[tuple[int, dict[str, Any]]]:
    """(index in `tools`, chat tool) for each function tool; hosted types are left out."""
    out = []
    for i, tool in enumerate(req.tools or []):
        if tool.type != "function":
            continue
        if not tool.name:
            raise _bad(
                "a function tool needs a 'name'", f"tools[{i}].name", "missing_required_parameter"
            )
        fn: dict[str, Any] = {"name": tool.name}
        for key in ("description", "parameters", "strict"):
            if getattr(tool, key) is not None:
                fn[key] = getattr(tool, key)
        out.append((i, {"type": "function", "function": fn}))
    return out


def _tool_choice(req: ResponseCreateRequest, offered: bool) -> Any:
    choice = req.tool_choice
    if isinstance(choice, AllowedToolsChoice):
        choice = choice.mode
    if choice is None or (not offered and choice in ("auto", "none")):
        return None
    if isinstance(choice, FunctionToolChoice):
        return {"type": "function", "function": {"name": choice.name}}
    if isinstance(choice, HostedToolChoice):
        raise _bad(
            f"tool_choice '{choice.type[:40]}' names a hosted tool, which this server cannot "
            "run; use 'auto', 'required', 'none' or a function",
            "tool_choice.type",
            "unsupported_value",
        )
    if not offered and choice == "required":
        raise _bad("tool_choice 'required' needs at least one function tool", "tool_choice")
    return choice


def _response_format(req: ResponseCreateRequest) -> dict[str, Any] | None:
    fmt = req.text.format if req.text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    if fmt.schema_ is None:
        raise _bad(
            "text.format of type json_schema needs a 'schema'",
            "text.format.schema",
            "missing_required_parameter",
        )
    spec = {"name": fmt.name or "response", "schema": fmt.schema_, "strict": fmt.strict}
    return {"type": "json_schema", "json_schema": spec}


def to_chat_body(req: ResponseCreateRequest, history_items: list[dict[str, Any]]) -> dict[str, Any]:
    """The /v1/chat/completions body for the whole conversation: `history_items` (the stored
    items `previous_response_id` continues, outputs included) then this request's input."""
    messages = chat_messages(history_items + input_items(req), req.instructions)
    if not messages:
        raise _bad("'input' is empty: send at least one message", "input")
    body: dict[str, Any] = {"model": req.model, "messages": messages, "stream": req.stream}
    tools = [tool for _, tool in function_tools(req)]
    if tools:
        body["tools"] = tools
        if req.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = req.parallel_tool_calls
    choice = _tool_choice(req, bool(tools))
    optional = {
        "tool_choice": choice,
        "response_format": _response_format(req),
        "max_tokens": req.max_output_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    if req.stream:
        body["stream_options"] = {"include_usage": True}
    return body


def responses_param(param: str | None, req: ResponseCreateRequest) -> str | None:
    """A chat-completions field named in an error, as the Responses request spells it."""
    if param is None:
        return None
    head, _, rest = param.partition(".")
    if head.startswith("messages"):
        return "input"
    if head.startswith("response_format"):
        return "text.format"
    if head == "max_tokens":
        return "max_output_tokens"
    if param == "tool_choice.function.name":
        return "tool_choice.name"
    if head.startswith("tools[") and head.endswith("]"):
        index = int(head[6:-1]) if head[6:-1].isdigit() else -1
        given = [i for i, _ in function_tools(req)]
        if 0 <= index < len(given):
            field = rest.removeprefix("function").lstrip(".")
            return f"tools[{given[index]}]" + (f".{field}" if field else "")
    return param


def chat_to_response(
    chat_completion: dict[str, Any],
    req: ResponseCreateRequest,
    response_id: str,
    created_at: int,
    node_limit: int | None = None,
) -> dict[str, Any]:
    """The Responses object for a (non-streamed) chat completion of `to_chat_body(req, …)`;
    `node_limit`: the answering node's `--max-tokens`, when it set the limit (see `finished`)."""
    response = response_shell(req, response_id, created_at, "completed")
    choice = (chat_completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    calls = message.get("tool_calls") or []
    text = message.get("content") or ""
    if text or not calls:
        response["output"].append(message_item(text))
    response["output"].extend(call_item(call) for call in calls)
    usage = chat_completion.get("usage")
    return finished(response, choice.get("finish_reason"), usage, node_limit)


def output_text(response: dict[str, Any]) -> str:
    """All output_text of a Responses object, joined (what the SDK's `output_text` gives)."""
    return "".join(
        part.get("text", "")
        for item in response.get("output", [])
        if item.get("type") == "message"
        for part in item.get("content", [])
        if part.get("type") == "output_text"
    )
