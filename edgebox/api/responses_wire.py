"""Wire models of the OpenAI Responses API, and the Responses objects and items built back.

Requests mirror OpenAI's create request field for field (extra fields ignored), so validation
errors name the bad `param`; input items are told apart by `type`, a message may leave it out.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag

MAX_INPUT_ITEMS = 4096  # items in one request's input (a long agent session has a few hundred)
MAX_TOOLS = 512  # tools of every type; only function tools (at most 128) reach the model
MAX_METADATA = 16  # as OpenAI allows: 16 pairs, keys 64 and values 512 characters
MAX_ID_CHARS = 256
# Item types that carry nothing a text model can use: accepted, then left out of the prompt.
DROPPED_ITEMS = frozenset(
    {
        "reasoning",
        "web_search_call",
        "file_search_call",
        "computer_call",
        "computer_call_output",
        "image_generation_call",
        "code_interpreter_call",
        "local_shell_call",
        "local_shell_call_output",
        "mcp_list_tools",
        "mcp_approval_request",
        "mcp_approval_response",
        "mcp_call",
        "compaction",
        "item_reference",
    }
)
TEXT_PARTS = ("input_text", "output_text", "text", "summary_text", "reasoning_text")


class _Wire(BaseModel):
    # Unknown fields are ignored so newer clients keep working; NaN never reaches samplers.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


_PART_TAGS = {"refusal": "Refusal", "input_image": "Image", "input_file": "File"} | {
    "input_audio": "Audio"
}
# Tags are capitalised so that errors name `input[0].content[1].text`, not the union member.
_ITEM_TAGS = {
    "message": "Message",
    "function_call": "FunctionCall",
    "custom_tool_call": "CustomToolCall",
    "function_call_output": "CallOutput",
    "custom_tool_call_output": "CallOutput",
}


def _part_tag(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if kind is None and isinstance(value, dict) and "text" in value:
        return "Text"  # a bare {"text": ...} part
    if not isinstance(kind, str):
        return None
    return "Text" if kind in TEXT_PARTS else _PART_TAGS.get(kind, kind)


class TextContent(_Wire):
    type: str = "input_text"
    text: str


class RefusalContent(_Wire):
    type: Literal["refusal"]
    refusal: str


class MediaContent(_Wire):
    type: Literal["input_image", "input_file", "input_audio"]


ContentPart = Annotated[
    Annotated[TextContent, Tag("Text")]
    | Annotated[RefusalContent, Tag("Refusal")]
    | Annotated[MediaContent, Tag("Image")]
    | Annotated[MediaContent, Tag("File")]
    | Annotated[MediaContent, Tag("Audio")],
    Discriminator(
        _part_tag,
        custom_error_type="invalid_part",
        custom_error_message="a content part needs a known 'type' (input_text, output_text, "
        "refusal, …)",
    ),
]


def _as_parts(value: Any) -> Any:
    # A string is one text part; as a list, a bad part's error names its index.
    return [{"type": "input_text", "text": value}] if isinstance(value, str) else value


def _as_items(value: Any) -> Any:
    return [{"role": "user", "content": value}] if isinstance(value, str) else value


Parts = Annotated[list[ContentPart], BeforeValidator(_as_parts)]


class MessageItem(_Wire):
    type: Literal["message"] = "message"
    id: str | None = Field(None, max_length=MAX_ID_CHARS)
    role: Literal["user", "assistant", "system", "developer"]
    content: Parts


class FunctionCallItem(_Wire):
    type: Literal["function_call"]
    id: str | None = Field(None, max_length=MAX_ID_CHARS)
    call_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    name: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    arguments: str = ""


class CustomToolCallItem(_Wire):
    """A freeform (custom) tool call from an earlier turn: replayed like a function call."""

    type: Literal["custom_tool_call"]
    id: str | None = Field(None, max_length=MAX_ID_CHARS)
    call_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    name: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    input: str = ""


class CallOutputItem(_Wire):
    type: Literal["function_call_output", "custom_tool_call_output"]
    id: str | None = Field(None, max_length=MAX_ID_CHARS)
    call_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    output: Parts


class DroppedItem(_Wire):
    type: str


def _item_tag(value: Any) -> str | None:
    if isinstance(value, dict):
        kind = value.get("type")
        if kind is None and "role" in value:
            return "Message"  # EasyInputMessage: {"role", "content"} with no type
    else:
        kind = getattr(value, "type", None)
    if not isinstance(kind, str):
        return None
    if kind in DROPPED_ITEMS:
        return "Dropped"
    return _ITEM_TAGS.get(kind, kind)


InputItem = Annotated[
    Annotated[MessageItem, Tag("Message")]
    | Annotated[FunctionCallItem, Tag("FunctionCall")]
    | Annotated[CustomToolCallItem, Tag("CustomToolCall")]
    | Annotated[CallOutputItem, Tag("CallOutput")]
    | Annotated[DroppedItem, Tag("Dropped")],
    Discriminator(
        _item_tag,
        custom_error_type="invalid_item",
        custom_error_message="an input item needs a 'role' or a known 'type' (message, "
        "function_call, function_call_output, reasoning, …)",
    ),
]


class ResponseTool(_Wire):
    """A tool as the Responses API lists it: flat function tools; any other type is hosted."""

    type: str = Field(max_length=64)
    name: str | None = Field(None, max_length=MAX_ID_CHARS)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionToolChoice(_Wire):
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=MAX_ID_CHARS)


class AllowedToolsChoice(_Wire):
    type: Literal["allowed_tools"]
    mode: Literal["auto", "required"] = "auto"


class HostedToolChoice(_Wire):
    type: str = Field(max_length=64)


ToolChoice = (
    Literal["none", "auto", "required"] | FunctionToolChoice | AllowedToolsChoice | HostedToolChoice
)


class TextFormat(_Wire):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = Field(None, max_length=MAX_ID_CHARS)
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class TextOptions(_Wire):
    format: TextFormat | None = None
    verbosity: str | None = None


class ResponseCreateRequest(_Wire):
    """POST /v1/responses, field for field; `reasoning`, `include`, `prompt_cache_key`,
    `client_metadata`, `truncation`, `service_tier`, `user` are accepted and not acted on."""

    model: str = Field(min_length=1)
    input: Annotated[list[InputItem], BeforeValidator(_as_items)] = Field(
        default_factory=list, max_length=MAX_INPUT_ITEMS
    )
    instructions: str | None = None
    tools: list[ResponseTool] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextOptions | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    metadata: dict[str, str] | None = Field(None, max_length=MAX_METADATA)
    store: bool = True
    stream: bool = False
    previous_response_id: str | None = Field(None, min_length=1, max_length=MAX_ID_CHARS)
    include: list[str] | None = None
    prompt_cache_key: str | None = None
    client_metadata: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    user: str | None = None


def new_id(prefix: str) -> str:
    """An id as OpenAI shapes them: `resp_…`, `msg_…`, `fc_…`."""
    return f"{prefix}_{uuid.uuid4().hex}"


def _usage(usage: dict[str, Any] | None) -> dict[str, Any]:
    usage = usage or {}
    details = usage.get("prompt_tokens_details") or {}
    prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": details.get("cached_tokens", 0)},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def response_shell(
    req: ResponseCreateRequest, response_id: str, created_at: int, status: str
) -> dict[str, Any]:
    """A Responses object with no output yet: what it echoes of the request."""
    fmt = req.text.format if req.text is not None and req.text.format is not None else None
    text_format = fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}
    choice = req.tool_choice
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "model": req.model,
        "output": [],
        "parallel_tool_calls": req.parallel_tool_calls is not False,
        "previous_response_id": req.previous_response_id,
        "prompt_cache_key": req.prompt_cache_key,
        "reasoning": {"effort": None, "summary": None},
        "store": req.store,
        "temperature": 1.0 if req.temperature is None else req.temperature,
        "text": {"format": text_format},
        "tool_choice": choice.model_dump() if isinstance(choice, BaseModel) else choice or "auto",
        "tools": [t.model_dump(exclude_none=True) for t in req.tools or []],
        "top_p": 1.0 if req.top_p is None else req.top_p,
        "truncation": "disabled",
        "usage": None,
        "user": req.user,
        "metadata": req.metadata or {},
    }


def message_item(
    text: str, status: str = "completed", item_id: str | None = None
) -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {
        "id": item_id or new_id("msg"),
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [part] if status == "completed" else [],
    }


def call_item(call: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    function = call.get("function") or {}
    return {
        "id": new_id("fc"),
        "type": "function_call",
        "status": status,
        "call_id": call.get("id") or new_id("call"),
        "name": function.get("name") or "",
        "arguments": function.get("arguments") or "",
    }


def finished(
    response: dict[str, Any], finish_reason: str | None, usage: Any, node_limit: int | None = None
) -> dict[str, Any]:
    """`response` completed, or incomplete when the output hit its token limit. Output that
    stopped at `node_limit` (the node's `--max-tokens`, for a request that set no limit) is
    complete: the node's operator chose that length, as a model chooses to stop, and agent
    clients (Codex) take an incomplete response for a failed turn."""
    response["usage"] = _usage(usage)
    at_node_limit = node_limit is not None and response["usage"]["output_tokens"] >= node_limit
    if finish_reason == "length" and not at_node_limit:
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": "max_output_tokens"}
    else:
        response["status"] = "completed"
    return response
