"""Wire models of the Anthropic Messages API (`/v1/messages`, `/v1/messages/count_tokens`).

Unknown fields are kept and ignored, so newer SDKs and Claude Code keep working; every list
is bounded. The translation to and from chat completions is in `api.anthropic`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgebox.api.protocol import MAX_NAME_CHARS, MAX_STOP, MAX_STOP_CHARS

MAX_MESSAGES = 10_000  # the chat path refuses more messages than the context has tokens
MAX_BLOCKS = 1_000  # content blocks in one message
MAX_TOOLS = 256  # server tools included; the chat path allows 128 offered functions


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class TextBlock(_Wire):
    type: Literal["text"]
    text: str
    cache_control: dict[str, Any] | None = None


class MediaBlock(_Wire):
    """Input this node cannot read: refused with a 400 naming the block."""

    type: Literal["image", "document", "search_result", "container_upload"]


class ThinkingBlock(_Wire):
    """A past turn's reasoning: accepted and dropped (the models here do not reason)."""

    type: Literal["thinking", "redacted_thinking"]


class ToolUseBlock(_Wire):
    type: Literal["tool_use"]
    id: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    input: dict[str, Any] = Field(default_factory=dict)


ResultPart = Annotated[TextBlock | MediaBlock, Field(discriminator="type")]


def _as_blocks(value: Any) -> Any:
    """A string content is one text block: then a bad block's error names the block, not the
    union's string member."""
    return [{"type": "text", "text": value}] if isinstance(value, str) else value


class ToolResultBlock(_Wire):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    content: list[ResultPart] | None = Field(None, max_length=MAX_BLOCKS)
    is_error: bool | None = None

    _blocks = field_validator("content", mode="before")(_as_blocks)


ContentBlock = Annotated[
    TextBlock | MediaBlock | ThinkingBlock | ToolUseBlock | ToolResultBlock,
    Field(discriminator="type"),
]


class Message(_Wire):
    role: Literal["user", "assistant", "system"]
    content: list[ContentBlock] = Field(max_length=MAX_BLOCKS)  # a string: one text block

    _blocks = field_validator("content", mode="before")(_as_blocks)


class ToolSpec(_Wire):
    """A custom tool (no type, or "custom"); any other type is a server tool, not offered."""

    type: str | None = Field(None, max_length=64)
    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    description: str | None = None
    input_schema: dict[str, Any] | None = None


class ToolChoice(_Wire):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = Field(None, max_length=MAX_NAME_CHARS)
    disable_parallel_tool_use: bool | None = None


class Metadata(_Wire):
    user_id: str | None = Field(None, max_length=MAX_NAME_CHARS)


class CountTokensRequest(_Wire):
    model: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    system: str | list[TextBlock] | None = Field(None)
    tools: list[ToolSpec] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: ToolChoice | None = None
    # accepted and ignored: the models here cannot use them
    thinking: Any = None
    context_management: Any = None
    output_config: Any = None
    service_tier: Any = None


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = Field(None)
    temperature: float | None = Field(None, ge=0.0, le=1.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0, le=2**31 - 1)
    stream: bool = False
    metadata: Metadata | None = None

    @field_validator("stop_sequences")
    @classmethod
    def _stops(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if len(value) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences are allowed")
        if any(s == "" or len(s) > MAX_STOP_CHARS for s in value):
            raise ValueError(f"each stop sequence must have 1 to {MAX_STOP_CHARS} characters")
        return value
