"""OpenAI wire models for requests, field for field, so validation errors name the param.

Responses are built as plain dicts in `responses.py`: they are ours, need no
validation, and serialising dicts is the fastest path per streamed token.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgebox.api.errors import APIError

MAX_N = 16
# On a node's chat or completion answer: the node's `--max-tokens`, when it (not the request)
# set the output limit. A Responses answer that stops there is complete, not incomplete.
NODE_LIMIT_HEADER = "x-edgebox-max-tokens"
MAX_STOP = 4
MAX_LOGIT_BIAS = 1024  # biased tokens per request
MAX_STOP_CHARS = 256  # per stop sequence: the engine holds back this much text per token
MAX_NAME_CHARS = 256
INT64 = 2**63 - 1
C_INT = 2**31 - 1  # what llama.cpp's int parameters hold


class _Wire(BaseModel):
    # Unknown fields are ignored, as OpenAI-compatible servers do, so newer SDKs keep working.
    # NaN and Infinity (which Python's JSON reader accepts) never reach the samplers.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class TextPart(_Wire):
    type: Literal["text"]
    text: str


class OtherPart(_Wire):
    type: Literal["image_url", "input_audio", "file", "refusal"]


ContentPart = Annotated[TextPart | OtherPart, Field(discriminator="type")]


class CalledFunction(_Wire):
    name: str = Field(max_length=MAX_NAME_CHARS)
    arguments: str


class MessageToolCall(_Wire):
    """A call the assistant made earlier in the conversation, sent back by the client."""

    id: str = Field(max_length=MAX_NAME_CHARS)
    type: Literal["function"] = "function"
    function: CalledFunction


class ChatMessage(_Wire):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = Field(None, max_length=MAX_NAME_CHARS)
    tool_calls: list[MessageToolCall] | None = None  # assistant messages
    tool_call_id: str | None = Field(None, max_length=MAX_NAME_CHARS)  # tool messages


class FunctionDefinition(_Wire):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(_Wire):
    type: str  # only "function" is served; others are refused by name (`node.tools`)
    function: FunctionDefinition | None = None


class ChosenFunction(_Wire):
    name: str


class NamedToolChoice(_Wire):
    type: Literal["function"]
    function: ChosenFunction


class StreamOptions(_Wire):
    include_usage: bool = False


class JsonSchemaSpec(_Wire):
    name: str = "response"
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Wire):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None


class _SamplingFields(_Wire):
    model: str = Field(min_length=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)  # None: the node's default
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    seed: int | None = Field(None, ge=-INT64 - 1, le=INT64)
    user: str | None = None
    # Ollama's: how long the model stays loaded after this request ("5m", seconds, 0, -1)
    keep_alive: float | str | None = None
    # llama.cpp-style extensions, as llama-server and Ollama accept them
    top_k: int = Field(0, ge=0, le=C_INT)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    # llama.cpp divides a repeated token's logit by it: a vanishing one overflows to NaN
    repeat_penalty: float = Field(1.0, ge=0.01, le=100.0)
    grammar: str | None = None
    # OpenAI's: token id (a string key) -> a bias added to its logit, -100 (ban) to 100
    logit_bias: dict[str, float] | None = None
    # llama-server's and vLLM's: never sample end-of-generation tokens (fixed-length benchmarks)
    ignore_eos: bool = False

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if not value:
            return None
        if len(value) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} tokens may be biased")
        for key, bias in value.items():
            if not (key.isascii() and key.isdigit() and len(key) <= 10):
                raise ValueError(f"keys must be token ids (integers from 0); got {key[:16]!r}")
            if not -100.0 <= bias <= 100.0:
                raise ValueError(f"the bias of token {key} must be between -100 and 100")
        return value

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else value
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences are allowed")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must not be empty")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"each stop sequence may be at most {MAX_STOP_CHARS} characters")
        return stops


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)  # at most n_ctx: `check_chat_size`
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[ToolDefinition] | None = None  # bounded in `node.tools`
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)
    response_format: ResponseFormat | None = None


def chat_messages(body: ChatCompletionRequest) -> list[dict[str, Any]]:
    """Messages as chat templates expect them: plain-text content, known roles."""
    out: list[dict[str, Any]] = []
    for i, message in enumerate(body.messages):
        content = message.content
        if isinstance(content, list):
            for j, part in enumerate(content):
                if isinstance(part, OtherPart):
                    raise APIError(
                        400,
                        f"this model reads text only; '{part.type}' content is not supported",
                        param=f"messages[{i}].content[{j}].type",
                        code="unsupported_content",
                    )
            content = "".join(p.text for p in content if isinstance(p, TextPart))
        role = "system" if message.role == "developer" else message.role
        entry: dict[str, Any] = {"role": role, "content": content or ""}
        if message.name:
            entry["name"] = message.name
        if message.tool_calls:
            entry["tool_calls"] = [
                {"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                for c in message.tool_calls
            ]
        if message.tool_call_id:
            entry["tool_call_id"] = message.tool_call_id
        out.append(entry)
    return out
