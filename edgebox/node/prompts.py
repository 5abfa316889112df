"""From validated wire requests to runtime `GenerationRequest`s: prompts, limits, sampling."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from edgebox.api.errors import APIError
from edgebox.api.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ResponseFormat,
    TextPart,
    chat_messages,
)
from edgebox.node.tools import ToolPlan, template_input, tool_format_of
from edgebox.runtimes.base import (
    BackendError,
    GenerationRequest,
    KVSnapshot,
    Runtime,
    SamplingParams,
)
from edgebox.runtimes.chat_template import ControlTextError

# A prompt with more characters than this per token of context cannot fit (a token covers
# 2-6 characters of prose; the longest tokens of common vocabularies, runs of spaces or
# `=`, 50-80), so it is refused before the tokenizer spends time on it.
MAX_CHARS_PER_TOKEN = 64
MAX_PROMPTS = 64  # prompts in one completion request
MAX_SEQUENCES = 64  # prompts x n: the sequences one request may start


class ChatTokenizer(Protocol):
    """What turns messages into tokens: a runtime, or a router's vocab-only model."""

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]: ...

    def render_chat(self, messages: Sequence[dict[str, Any]]) -> str: ...


@dataclass(frozen=True)
class PreparedPrompt:
    tokens: list[int]
    text: str  # what the tokens render to, for `echo`


def check_chat_size(runtime: Runtime, body: ChatCompletionRequest) -> None:
    """Refuse, before rendering or tokenizing, a chat that cannot fit the model's context:
    more messages than tokens, or more characters than tokens could hold."""
    n_ctx = runtime.info.n_ctx
    if len(body.messages) > n_ctx:
        raise _too_long(
            f"{len(body.messages)} messages cannot fit in this model's context of {n_ctx} "
            "tokens (each takes at least one)",
            "messages",
        )
    chars = sum(_text_chars(m.content) + len(m.name or "") for m in body.messages)
    _check_chars(chars, n_ctx, "messages")


def _text_chars(content: object) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(len(p.text) for p in content if isinstance(p, TextPart))
    return 0


def _check_chars(chars: int, n_ctx: int, param: str) -> None:
    if chars > n_ctx * MAX_CHARS_PER_TOKEN:
        raise _too_long(
            f"the prompt has {chars} characters, more than this model's context of {n_ctx} "
            f"tokens can hold (at most {n_ctx * MAX_CHARS_PER_TOKEN}); shorten it",
            param,
        )


def _too_long(message: str, param: str) -> APIError:
    return APIError(400, message, param=param, code="context_length_exceeded")


def chat_prompt(
    runtime: ChatTokenizer, body: ChatCompletionRequest, tools: ToolPlan | None = None
) -> PreparedPrompt:
    """The chat's prompt; blocking (render and tokenize), so handlers run it off the loop.
    Message text is never parsed into control tokens where the runtime can tell them apart.
    Offered tools and past calls are rendered as the model's format has them (`node.tools`)."""
    messages, template_tools = template_input(tool_format_of(runtime), chat_messages(body), tools)
    extra = {"tools": template_tools} if template_tools else {}
    tokenize_chat = getattr(runtime, "tokenize_chat", None)
    try:
        if tokenize_chat is not None:
            tokens, text = tokenize_chat(messages, **extra)
            return PreparedPrompt(tokens, text)
        text = runtime.render_chat(messages)  # runtimes without tokenize_chat: no native tools
    except ControlTextError as exc:
        param = f"messages[{exc.index}].{exc.field}" if exc.index >= 0 else exc.field
        raise APIError(400, str(exc), param=param, code="invalid_value") from exc
    except BackendError as exc:
        raise APIError(400, str(exc), param="messages", code="invalid_value") from exc
    return PreparedPrompt(runtime.tokenize(text), text)


def completion_prompts(runtime: Runtime, body: CompletionRequest) -> list[PreparedPrompt]:
    prompt = body.prompt
    if isinstance(prompt, str):
        prompts: list[str | list[int]] = [prompt]
    elif prompt and all(isinstance(p, int) for p in prompt):
        prompts = [prompt]  # type: ignore[list-item]
    else:
        prompts = list(prompt)  # type: ignore[arg-type]
    if not prompts:
        raise APIError(
            400, "'prompt' must not be an empty list", param="prompt", code="invalid_value"
        )
    check_sequences(len(prompts), body.n)
    n_vocab = int(runtime.info.metadata.get("n_vocab", 0))
    out = []
    for i, p in enumerate(prompts):
        param = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
        if isinstance(p, str):
            _check_chars(len(p), runtime.info.n_ctx, param)
            tokens = runtime.tokenize(p)
            text = p
        else:
            if len(p) >= runtime.info.n_ctx:
                check_prompt_fits(runtime, PreparedPrompt(list(p), ""), param)
            bad = [t for t in p if t < 0 or (n_vocab and t >= n_vocab)]
            if bad:
                raise APIError(
                    400,
                    f"token id {bad[0]} is outside the vocabulary",
                    param=param,
                    code="invalid_value",
                )
            tokens, text = list(p), runtime.detokenize(p)
        if not tokens:
            raise APIError(400, "the prompt is empty", param=param, code="invalid_value")
        out.append(PreparedPrompt(tokens, text))
    return out


def check_sequences(prompts: int, n: int) -> None:
    """Refuse a completion request that would start too many sequences at once."""
    if prompts > MAX_PROMPTS:
        raise APIError(
            400,
            f"'prompt' holds {prompts} prompts; at most {MAX_PROMPTS} per request",
            param="prompt",
            code="invalid_value",
        )
    if prompts * n > MAX_SEQUENCES:
        raise APIError(
            400,
            f"{prompts} prompts x n={n} is {prompts * n} sequences; at most {MAX_SEQUENCES} "
            "per request",
            param="n",
            code="invalid_value",
        )


def check_prompt_fits(runtime: Runtime, prompt: PreparedPrompt, param: str) -> None:
    """Refuse a prompt that leaves no room to generate in the model's context."""
    n_ctx = runtime.info.n_ctx
    if len(prompt.tokens) >= n_ctx:
        raise APIError(
            400,
            f"this model's context is {n_ctx} tokens per request, but the prompt is "
            f"{len(prompt.tokens)} tokens; shorten it",
            param=param,
            code="context_length_exceeded",
        )


def check_max_tokens(runtime: Runtime, limit: int | None, param: str) -> None:
    """Refuse a limit larger than the whole context (prompt + output past it end as `length`)."""
    n_ctx = runtime.info.n_ctx
    if limit is not None and limit > n_ctx:
        raise APIError(
            400,
            f"{param} is {limit}, more than this model's whole context ({n_ctx} tokens)",
            param=param,
            code="invalid_value",
        )


def sampling(
    body: ChatCompletionRequest | CompletionRequest,
    *,
    logprobs: int | None,
    choice: int,
    temperature: float = 1.0,
) -> SamplingParams:
    """The request's sampling; `temperature` (`serve --temperature`) where it sets none."""
    fmt: ResponseFormat | None = body.response_format
    json_schema = None
    if fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None:
            raise APIError(
                400,
                "response_format of type json_schema needs a 'json_schema' object with a 'schema'",
                param="response_format.json_schema",
                code="missing_required_parameter",
            )
        json_schema = fmt.json_schema.schema_
    # -1 is llama.cpp's (and llama-server's) "a fresh seed": for every choice, not only the first
    seed = None if body.seed is None or body.seed == -1 else body.seed + choice
    return SamplingParams(
        temperature=temperature if body.temperature is None else body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        min_p=body.min_p,
        repeat_penalty=body.repeat_penalty,
        frequency_penalty=body.frequency_penalty,
        presence_penalty=body.presence_penalty,
        seed=seed,
        grammar=body.grammar,
        json_mode=fmt is not None and fmt.type == "json_object",
        json_schema=json_schema,
        logprobs=logprobs,
        logit_bias=tuple((int(k), v) for k, v in (body.logit_bias or {}).items()),
        ignore_eos=body.ignore_eos,
    )


def check_logit_bias(runtime: Runtime, body: ChatCompletionRequest | CompletionRequest) -> None:
    """Every biased token must be in the model's vocabulary (the keys are checked digits)."""
    n_vocab = int(runtime.info.metadata.get("n_vocab", 0))
    outside = [k for k in body.logit_bias or {} if n_vocab and int(k) >= n_vocab]
    if outside:
        raise APIError(
            400,
            f"logit_bias: token id {outside[0]} is outside this model's vocabulary "
            f"of {n_vocab} tokens",
            param="logit_bias",
            code="invalid_value",
        )


def max_tokens_of(body: ChatCompletionRequest | CompletionRequest) -> tuple[int | None, str]:
    """The output limit a request asks for, and the field it came from."""
    if isinstance(body, ChatCompletionRequest) and body.max_completion_tokens:
        return body.max_completion_tokens, "max_completion_tokens"
    return body.max_tokens, "max_tokens"


def logprobs_of(body: ChatCompletionRequest | CompletionRequest) -> int | None:
    """Alternatives per token to report: None for off (a chat's `logprobs: true` alone is 0)."""
    if isinstance(body, ChatCompletionRequest):
        return (body.top_logprobs or 0) if body.logprobs else None
    return body.logprobs


@dataclass(frozen=True)
class GenerationPlan:
    """What the node will run for one request, decided once from the wire request.

    The handlers validate and tokenize, build this, and hand it down: submission, streaming
    and the response's shape read the plan, never the wire request again."""

    kind: Literal["chat", "completion"]
    model: str
    prompts: tuple[PreparedPrompt, ...]
    prompt_param: str  # the field a refused prompt is blamed on: "messages" or "prompt"
    sampling: tuple[SamplingParams, ...]  # one per choice of a prompt (seeds differ by choice)
    max_tokens: int | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool  # a stream ends with a usage chunk
    echo: bool  # completions: each choice starts with its prompt's text
    arrived: float  # when the request came in; time to first token counts from here
    timeout: float | None  # the node's deadline per sequence, seconds from submission
    kv_key: str | None = None  # X-Edgebox-KV: a KV snapshot uploaded for this prompt
    tools: ToolPlan | None = None  # chat: how tool calls are offered and read back
    node_limit: int | None = None  # `serve --max-tokens`, when it (not the request) set max_tokens

    @property
    def n(self) -> int:
        """Choices per prompt."""
        return len(self.sampling)

    @property
    def logprobs(self) -> bool:
        return self.sampling[0].logprobs is not None

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p.tokens) for p in self.prompts)

    def echo_texts(self) -> list[str] | None:
        return [p.text for p in self.prompts] if self.echo else None

    def requests(self, kv: KVSnapshot | None = None) -> list[GenerationRequest]:
        """n choices per prompt, in the order OpenAI numbers them (prompt-major)."""
        return [
            GenerationRequest(
                prompt_tokens=prompt.tokens,
                sampling=params,
                max_tokens=self.max_tokens,
                stop=self.stop,
                timeout=self.timeout,
                kv=kv,
            )
            for prompt in self.prompts
            for params in self.sampling
        ]


def generation_plan(
    body: ChatCompletionRequest | CompletionRequest,
    prompts: Sequence[PreparedPrompt],
    *,
    arrived: float,
    timeout: float | None,
    kv_key: str | None = None,
    tools: ToolPlan | None = None,
    default_max_tokens: int | None = None,
    default_temperature: float = 1.0,
) -> GenerationPlan:
    """The plan for a validated request whose prompts are tokenized and checked;
    `default_max_tokens` (`serve --max-tokens`) caps output where the request sets no limit."""
    chat = isinstance(body, ChatCompletionRequest)
    logprobs = logprobs_of(body)
    own_limit = max_tokens_of(body)[0]
    constraint = tools.constraint if tools is not None else None
    return GenerationPlan(
        kind="chat" if chat else "completion",
        model=body.model,
        prompts=tuple(prompts),
        prompt_param="messages" if chat else "prompt",
        sampling=tuple(
            dataclasses.replace(
                sampling(body, logprobs=logprobs, choice=j, temperature=default_temperature),
                tools=constraint,
            )
            for j in range(body.n)
        ),
        max_tokens=own_limit or default_max_tokens,
        stop=tuple(body.stop or ()),
        stream=bool(body.stream),
        include_usage=bool(
            body.stream and body.stream_options and body.stream_options.include_usage
        ),
        echo=isinstance(body, CompletionRequest) and body.echo,
        arrived=arrived,
        timeout=timeout,
        kv_key=kv_key,
        tools=tools,
        node_limit=default_max_tokens if own_limit is None else None,
    )
