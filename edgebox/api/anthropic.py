"""The Anthropic Messages API as a translation over chat completions.

Pure functions over the wire models of `api.anthropic_wire`: a Messages request to a
chat-completions body, a chat completion back to a Message, chat chunks to Anthropic's stream
events, and errors in Anthropic's shape. The node runs them around its own chat path; the
router around a node or a cloud upstream that speaks only chat completions.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from edgebox.api.anthropic_wire import (
    CountTokensRequest,
    MediaBlock,
    Message,
    MessagesRequest,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
)
from edgebox.api.errors import APIError, as_api_error, from_validation_error

__all__ = [
    "CountTokensRequest",
    "MessageEventStream",
    "MessagesRequest",
    "anthropic_error",
    "chat_to_message",
    "from_api_error",
    "from_openai_error",
    "is_messages_path",
    "messages_aware_error_handler",
    "parse_request",
    "sse_event",
    "to_chat_body",
]

UNSUPPORTED_MEDIA = "image input is not supported by this model"
WireRequest = TypeVar("WireRequest", bound=CountTokensRequest)


def parse_request(model: type[WireRequest], data: Any) -> WireRequest:
    """A Messages (or count_tokens) body validated; a 400 naming the bad field otherwise."""
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc) from exc


# --- request: Messages -> chat completions ---


def to_chat_body(req: CountTokensRequest) -> dict[str, Any]:
    """The chat-completions body that asks the same of a model; 400s name the Messages field."""
    messages = _system_messages(req.system)
    seen: set[str] = set()  # tool_use ids so far, which tool_result blocks must answer
    for i, message in enumerate(req.messages):
        messages.extend(_chat_messages(message, i, seen))
    body: dict[str, Any] = {"model": req.model, "messages": messages}
    body.update(_tool_fields(req))
    if isinstance(req, MessagesRequest):
        body.update(_sampling_fields(req))
    return body


# Claude Code's first system block is attribution metadata for Anthropic's billing, not
# instructions; tiny models read it aloud, so it never reaches the prompt.
BILLING_HEADER = "x-anthropic-billing-header:"


def _system_messages(system: str | list[TextBlock] | None) -> list[dict[str, Any]]:
    blocks = [system] if isinstance(system, str) else [b.text for b in system or []]
    text = "\n\n".join(b for b in blocks if not b.startswith(BILLING_HEADER))
    return [{"role": "system", "content": text}] if text else []


def _chat_messages(message: Message, i: int, seen: set[str]) -> list[dict[str, Any]]:
    """One Messages entry as chat messages: tool results become `tool` messages (before the
    user's text, as the API orders them), tool uses the assistant's `tool_calls`."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    for j, block in enumerate(message.content):
        where = f"messages[{i}].content[{j}]"
        if isinstance(block, MediaBlock):
            raise _bad(f"{UNSUPPORTED_MEDIA}: '{block.type}' blocks are refused", f"{where}.type")
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolUseBlock):
            _expect_role(message, "assistant", where)
            seen.add(block.id)
            arguments = json.dumps(block.input, separators=(",", ":"))
            function = {"name": block.name, "arguments": arguments}
            calls.append({"id": block.id, "type": "function", "function": function})
        elif isinstance(block, ToolResultBlock):
            _expect_role(message, "user", where)
            if block.tool_use_id not in seen:
                raise _bad(
                    f"tool_result answers '{block.tool_use_id[:64]}', which no earlier "
                    "tool_use block has as its id",
                    f"{where}.tool_use_id",
                )
            out.append(
                {
                    "role": "tool",
                    "tool_call_id": block.tool_use_id,
                    "content": _result(block, where),
                }
            )
    if texts or calls or not out:
        entry: dict[str, Any] = {"role": message.role, "content": "".join(texts)}
        if calls:
            entry["tool_calls"] = calls
        out.append(entry)
    return out


def _result(block: ToolResultBlock, where: str) -> str:
    parts = block.content or []
    for k, part in enumerate(parts):
        if isinstance(part, MediaBlock):
            raise _bad(UNSUPPORTED_MEDIA, f"{where}.content[{k}].type")
    text = "\n".join(p.text for p in parts if isinstance(p, TextBlock))
    return f"Error: {text}" if block.is_error else text


def _expect_role(message: Message, role: str, where: str) -> None:
    if message.role != role:
        raise _bad(f"only {role} messages may carry this block", f"{where}.type")


def _tool_fields(req: CountTokensRequest) -> dict[str, Any]:
    """Custom tools as function tools; server tools (web search, bash, ...) not offered."""
    tools = []
    for i, tool in enumerate(req.tools or []):
        if tool.type not in (None, "custom"):
            continue
        if tool.input_schema is None:
            raise _bad("a custom tool needs an 'input_schema'", f"tools[{i}].input_schema")
        function: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
        if tool.description:
            function["description"] = tool.description
        tools.append({"type": "function", "function": function})
    choice = req.tool_choice
    if not tools:
        if choice is not None and choice.type in ("any", "tool"):
            raise _bad(f"tool_choice '{choice.type}' needs custom tools", "tool_choice")
        return {}
    out: dict[str, Any] = {"tools": tools}
    if choice is None:
        return out
    if choice.type == "tool":
        if not choice.name:
            raise _bad("tool_choice 'tool' needs the tool's 'name'", "tool_choice.name")
        out["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    else:
        out["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
    if choice.disable_parallel_tool_use and choice.type != "none":
        out["parallel_tool_calls"] = False
    return out


def _sampling_fields(req: MessagesRequest) -> dict[str, Any]:
    out: dict[str, Any] = {"max_tokens": req.max_tokens, "stream": req.stream}
    if req.stream:
        out["stream_options"] = {"include_usage": True}
    for name in ("temperature", "top_p", "top_k"):
        value = getattr(req, name)
        if value is not None:
            out[name] = value
    if req.stop_sequences:
        out["stop"] = req.stop_sequences
    if req.metadata is not None and req.metadata.user_id:
        out["user"] = req.metadata.user_id
    return out


def _bad(message: str, param: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_value")


# --- response: chat completion -> Message ---


def tool_use_id(call_id: str | None) -> str:
    """A chat call id as Anthropic spells tool_use ids (`toolu_…`); ours kept as they are."""
    call_id = call_id or ""
    if call_id.startswith("toolu_"):
        return call_id
    return "toolu_" + (call_id.removeprefix("call_") or "0")


def tool_input(arguments: str | None) -> dict[str, Any]:
    """A call's JSON arguments as the `input` object (an empty object when they are not one)."""
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def stop_reason(
    finish: str | None, matched: Any, req: CountTokensRequest
) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) from a choice's finish_reason and the stop string that
    ended it (`stop_reason` in the choice, as vLLM and edgebox report it)."""
    if finish == "length":
        return "max_tokens", None
    if finish == "tool_calls":
        return "tool_use", None
    stops = getattr(req, "stop_sequences", None) or []
    if isinstance(matched, str) and matched in stops:
        return "stop_sequence", matched
    return "end_turn", None


def message_usage(usage: dict[str, Any] | None) -> dict[str, Any]:
    """Chat usage as Anthropic counts it: input_tokens excludes what the cache served."""
    usage = usage or {}
    prompt = int(usage.get("prompt_tokens") or 0)
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return {
        "input_tokens": prompt - cached,
        "output_tokens": int(usage.get("completion_tokens") or 0),
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
    }


def chat_to_message(
    chat_completion: dict[str, Any], req: CountTokensRequest, message_id: str
) -> dict[str, Any]:
    """A chat completion (one choice) as the Messages API's response body."""
    choice = (chat_completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": tool_use_id(call.get("id")),
                "name": function.get("name", ""),
                "input": tool_input(function.get("arguments")),
            }
        )
    reason, sequence = stop_reason(choice.get("finish_reason"), choice.get("stop_reason"), req)
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": req.model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": message_usage(chat_completion.get("usage")),
    }


# --- errors ---

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_CONTEXT = re.compile(r"context is (\d+) tokens per request, but the prompt is (\d+) tokens")


def anthropic_error(status: int, type: str | None, message: str) -> dict[str, Any]:
    """An error body in Anthropic's shape; `type` None: the one Anthropic uses for `status`."""
    kind = type or ERROR_TYPES.get(
        status, "api_error" if status >= 500 else "invalid_request_error"
    )
    return {"type": "error", "error": {"type": kind, "message": message}}


MESSAGES_PATH = "/v1/messages"


def is_messages_path(path: str) -> bool:
    """/v1/messages and what is under it: the routes whose errors take Anthropic's shape."""
    return path == MESSAGES_PATH or path.startswith(MESSAGES_PATH + "/")


async def messages_aware_error_handler(request: Request, exc: Exception) -> Response:
    """One handler for every exception: Anthropic's shape under /v1/messages (validation,
    404, 413, overload, ...), OpenAI's everywhere else."""
    error = as_api_error(request, exc)
    if not is_messages_path(request.url.path):
        return error.response()
    return JSONResponse(from_api_error(error), status_code=error.status, headers=error.headers)


def from_api_error(error: APIError) -> dict[str, Any]:
    """An edgebox error as Anthropic's (see `from_openai_error`)."""
    return from_openai_error(error.status, error.body())


def from_openai_error(status: int, body: Any) -> dict[str, Any]:
    """An OpenAI-shaped error body as Anthropic's; a context overflow says "prompt is too
    long: N tokens > M maximum", the words Claude Code looks for before compacting."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return anthropic_error(status, None, str(error or "the request failed"))
    message = str(error.get("message") or "the request failed")
    param = error.get("param")
    if error.get("code") == "context_length_exceeded":
        found = _CONTEXT.search(message)
        if found:
            message = f"prompt is too long: {found[2]} tokens > {found[1]} maximum"
        else:
            message = f"prompt is too long: {message}"
    elif param and status == 400 and str(param) not in message:
        message = f"{param}: {message}"
    return anthropic_error(status, None, message)


# --- streaming: chat chunks -> Anthropic events ---


def sse_event(event: dict[str, Any]) -> bytes:
    """One event as Anthropic frames it: its type on the `event:` line, then its JSON."""
    data = json.dumps(event, separators=(",", ":"))
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


class MessageEventStream:
    """Feed `chat.completion.chunk` dicts (choice 0), get the Messages stream's events.

    message_start (then a ping) comes before the first block; text and tool calls each open
    a content block, closed when another begins or the stream ends; `finish()` sends
    message_delta (stop_reason, usage) and message_stop; `error()` the error event."""

    def __init__(self, req: CountTokensRequest, message_id: str, input_tokens: int = 0) -> None:
        self.req = req
        self.message_id = message_id
        self.input_tokens = input_tokens
        self.started = False
        self.finished = False
        self._block = -1  # index of the open block, -1 for none
        self._open: str | None = None  # "text" or "tool_use"
        self._calls: dict[int, int] = {}  # chat call index -> block index
        self._finish: str | None = None
        self._matched: Any = None
        self._usage: dict[str, Any] | None = None

    def start(self) -> list[dict[str, Any]]:
        if self.started:
            return []
        self.started = True
        usage = {**message_usage(None), "input_tokens": self.input_tokens}
        message: dict[str, Any] = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.req.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }
        return [{"type": "message_start", "message": message}, {"type": "ping"}]

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """The events one chat chunk makes (an OpenAI error chunk makes the error event)."""
        if self.finished:
            return []
        if "error" in chunk:  # a sequence failed mid-stream
            self.finished = True
            return [from_openai_error(500, chunk)]
        events = self.start()
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) == 0:
                events.extend(self._choice(choice))
        return events

    def _choice(self, choice: dict[str, Any]) -> list[dict[str, Any]]:
        delta = choice.get("delta") or {}
        events: list[dict[str, Any]] = []
        if delta.get("content"):
            if self._open != "text":
                events.extend(self._open_block({"type": "text", "text": ""}, "text"))
            text_delta = {"type": "text_delta", "text": delta["content"]}
            events.append(self._delta(text_delta))
        for call in delta.get("tool_calls") or []:
            events.extend(self._call(call))
        if choice.get("finish_reason"):
            self._finish = choice["finish_reason"]
            self._matched = choice.get("stop_reason")
        return events

    def _call(self, call: dict[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        function = call.get("function") or {}
        index = int(call.get("index", 0))
        if call.get("id") is not None or index not in self._calls:
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": tool_use_id(call.get("id")),
                "name": function.get("name") or "",
                "input": {},
            }
            events.extend(self._open_block(block, "tool_use"))
            self._calls[index] = self._block
        if function.get("arguments") and self._calls[index] == self._block:
            json_delta = {"type": "input_json_delta", "partial_json": function["arguments"]}
            events.append(self._delta(json_delta))
        return events

    def _open_block(self, block: dict[str, Any], kind: str) -> list[dict[str, Any]]:
        events = self._close_block()
        self._block += 1
        self._open = kind
        start = {"type": "content_block_start", "index": self._block, "content_block": block}
        return [*events, start]

    def _close_block(self) -> list[dict[str, Any]]:
        if self._open is None:
            return []
        self._open = None
        return [{"type": "content_block_stop", "index": self._block}]

    def _delta(self, delta: dict[str, Any]) -> dict[str, Any]:
        return {"type": "content_block_delta", "index": self._block, "delta": delta}

    def finish(self) -> list[dict[str, Any]]:
        """The closing events, once the chat stream has ended."""
        if self.finished:
            return []
        events = [*self.start(), *self._close_block()]
        self.finished = True
        reason, sequence = stop_reason(self._finish, self._matched, self.req)
        usage = message_usage(self._usage)
        if self._usage is None:
            usage["input_tokens"] = self.input_tokens
        delta = {"stop_reason": reason, "stop_sequence": sequence}
        events.append({"type": "message_delta", "delta": delta, "usage": usage})
        events.append({"type": "message_stop"})
        return events

    def error(self, status: int, type: str | None, message: str) -> list[dict[str, Any]]:
        """The error event that ends a stream which failed after it began."""
        self.finished = True
        return [anthropic_error(status, type, message)]
