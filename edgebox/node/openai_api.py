"""The OpenAI-compatible routes: /v1/models, /v1/chat/completions, /v1/completions."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from edgebox.api.body import read_json
from edgebox.api.errors import APIError, from_validation_error
from edgebox.api.kv import KV_HEADER
from edgebox.api.protocol import NODE_LIMIT_HEADER, ChatCompletionRequest, CompletionRequest
from edgebox.api.sse import SSE_DONE, sse
from edgebox.node.admin import refuse_if_draining
from edgebox.node.generation import ChoiceStreams, one_write_per_batch
from edgebox.node.metrics import now
from edgebox.node.offload import off_loop
from edgebox.node.prompts import (
    GenerationPlan,
    PreparedPrompt,
    chat_prompt,
    check_chat_size,
    check_logit_bias,
    check_max_tokens,
    check_prompt_fits,
    completion_prompts,
    generation_plan,
    logprobs_of,
    max_tokens_of,
    sampling,
)
from edgebox.node.recent import usage_of
from edgebox.node.responses import (
    ChoiceResult,
    ResponseShape,
    chat_logprob_content,
    finish_reason,
    usage,
)
from edgebox.node.state import NodeState
from edgebox.node.structured import prepare_constraint
from edgebox.node.tools import (
    ToolCallEvent,
    ToolPlan,
    add_call,
    check_tool_messages,
    prepare_tools,
    tool_plan,
    with_tool_calls,
)
from edgebox.runtimes.base import Event, FinishEvent, Runtime, TokenEvent

DISCONNECT_POLL_S = 0.2


def parse(model: type[BaseModel], data: Any) -> Any:
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc) from exc


def lookup(state: NodeState, model: str) -> Runtime:
    """The chat/completion runtime serving `model`; 400 for an embedding model, else 404."""
    runtime = state.runtimes.get(model)
    if runtime is None and model in state.embedders:
        chat = ", ".join(state.runtimes) or "none"
        raise APIError(
            400,
            f"'{model}' is an embedding model: use /v1/embeddings, or pick a chat model "
            f"(served: {chat})",
            param="model",
            code="model_not_supported",
        )
    if runtime is None:
        served = ", ".join(state.all_models()) or "none"
        raise APIError(
            404,
            f"the model '{model}' is not served here (served: {served})",
            param="model",
            code="model_not_found",
        )
    return runtime


async def list_models(request: Request) -> Response:
    """The loaded models (`status: loaded`), then those on disk a request would load
    (`status: available`), as Ollama lists every local model."""
    state: NodeState = request.app.state.node
    await state.catalog.refresh()
    cards = [state.model_card(a) for a in state.all_models()]
    cards += [state.available_card(e) for e in state.available_models()]
    return JSONResponse({"object": "list", "data": cards})


async def get_model(request: Request) -> Response:
    state: NodeState = request.app.state.node
    model = request.path_params["model"]
    if model in state.all_models():
        return JSONResponse(state.model_card(model))
    entry = await state.catalog.find(model)
    if entry is None:
        raise state.residency.not_found(model)
    return JSONResponse(state.available_card(entry))


async def chat_completions(request: Request) -> Response:
    arrived = now()
    state: NodeState = request.app.state.node
    refuse_if_draining(state)
    body: ChatCompletionRequest = parse(
        ChatCompletionRequest, await read_json(request, state.max_body)
    )
    return await _respond(request, await start_chat(request, state, body, arrived))


async def start_chat(
    request: Request, state: NodeState, body: ChatCompletionRequest, arrived: float
) -> Generation:
    """A validated chat request checked, rendered and submitted: 4xx refusals raise here,
    before any byte is sent (the Responses API runs its requests through this too)."""
    usage_of(request).model = body.model
    async with state.residency.use(body.model, lookup, body.keep_alive) as runtime:
        return await _chat(request, state, runtime, body, arrived)


async def _chat(
    request: Request,
    state: NodeState,
    runtime: Runtime,
    body: ChatCompletionRequest,
    arrived: float,
) -> Generation:
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs set to true", param="top_logprobs")
    check_chat_size(runtime, body)
    check_max_tokens(runtime, *max_tokens_of(body))
    check_tool_messages(body)
    tools = tool_plan(runtime, body)
    prompt = await off_loop(_prepare_chat, runtime, body, tools)
    check_prompt_fits(runtime, prompt, "messages")
    plan = _plan(request, state, body, [prompt], arrived, tools)
    return _start(request, state, runtime, plan)


def _plan(
    request: Request,
    state: NodeState,
    body: ChatCompletionRequest | CompletionRequest,
    prompts: list[PreparedPrompt],
    arrived: float,
    tools: ToolPlan | None = None,
) -> GenerationPlan:
    kv_key = request.headers.get(KV_HEADER)
    return generation_plan(
        body,
        prompts,
        arrived=arrived,
        timeout=state.request_timeout,
        kv_key=kv_key,
        tools=tools,
        default_max_tokens=state.max_tokens,
        default_temperature=state.temperature,
    )


def _prepare_chat(
    runtime: Runtime, body: ChatCompletionRequest, tools: ToolPlan | None
) -> PreparedPrompt:
    """Blocking: the grammar checked and compiled, the chat rendered and tokenized."""
    _prepare_constraint(runtime, body)
    prepare_tools(runtime, tools)
    return chat_prompt(runtime, body, tools)


def _prepare_completion(runtime: Runtime, body: CompletionRequest) -> list[PreparedPrompt]:
    _prepare_constraint(runtime, body)
    return completion_prompts(runtime, body)


def _prepare_constraint(runtime: Runtime, body: ChatCompletionRequest | CompletionRequest) -> None:
    check_logit_bias(runtime, body)
    fmt = body.response_format
    if body.grammar or (fmt is not None and fmt.type != "text"):
        params = sampling(body, logprobs=logprobs_of(body), choice=0)
        prepare_constraint(runtime, body, params)


async def completions(request: Request) -> Response:
    arrived = now()
    state: NodeState = request.app.state.node
    refuse_if_draining(state)
    body: CompletionRequest = parse(CompletionRequest, await read_json(request, state.max_body))
    usage_of(request).model = body.model
    async with state.residency.use(body.model, lookup, body.keep_alive) as runtime:
        return await _complete(request, state, runtime, body, arrived)


async def _complete(
    request: Request, state: NodeState, runtime: Runtime, body: CompletionRequest, arrived: float
) -> Response:
    if body.suffix:
        raise APIError(400, "suffix (fill-in-the-middle) is not supported", param="suffix")
    if body.best_of is not None and body.best_of != body.n:
        raise APIError(400, "best_of other than n is not supported", param="best_of")
    check_max_tokens(runtime, body.max_tokens, "max_tokens")
    prompts = await off_loop(_prepare_completion, runtime, body)
    for prompt in prompts:
        check_prompt_fits(runtime, prompt, "prompt")
    plan = _plan(request, state, body, prompts, arrived)
    return await _respond(request, _start(request, state, runtime, plan))


@dataclass(frozen=True)
class Generation:
    """A submitted request's sequences, the plan they run and the shape of their answer."""

    streams: ChoiceStreams
    shape: ResponseShape
    plan: GenerationPlan


def _start(
    request: Request, state: NodeState, runtime: Runtime, plan: GenerationPlan
) -> Generation:
    """Submit every sequence of the plan; refusals (429, context, grammar) raise here."""
    record = usage_of(request)
    record.stream = plan.stream
    record.prompt_tokens = plan.prompt_tokens
    kv = state.kv_store.take(plan.kv_key, plan.model) if plan.kv_key else None
    streams = ChoiceStreams(
        runtime, plan, metrics=state.metrics, kv=kv, record=record, interval=state.stream_interval
    )
    try:
        streams.start()
    except APIError as exc:
        if kv is not None and plan.kv_key and exc.status == 429:
            state.kv_store.put(plan.model, kv, key=plan.kv_key)  # still usable by the retry
        raise
    return Generation(streams, ResponseShape(plan.kind, plan.model, state.fingerprint), plan)


async def _respond(request: Request, generation: Generation) -> Response:
    """Stream the answer as SSE, or collect it into one JSON body."""
    limit = generation.plan.node_limit
    said = {NODE_LIMIT_HEADER: str(limit)} if limit is not None else {}
    if generation.plan.stream:
        return StreamingResponse(
            one_write_per_batch(_sse(chunks(generation)), generation.streams),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **said},
        )
    return JSONResponse(await collect(request, generation), headers=said)


async def _sse(payloads: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    async for payload in payloads:
        yield sse(payload)
    yield SSE_DONE


async def collect(request: Request, generation: Generation) -> dict[str, Any]:
    """The whole answer as one body; cancelled if the client goes away first."""
    streams, shape, plan = generation.streams, generation.shape, generation.plan
    n, logprobs, echo = plan.n, plan.logprobs, plan.echo_texts()
    results: dict[int, ChoiceResult] = {}
    watcher = asyncio.create_task(_cancel_on_disconnect(request, streams))
    try:
        async for index, event in _events(streams, plan):
            result = results.setdefault(index, ChoiceResult())
            if isinstance(event, ToolCallEvent):
                add_call(result.tool_calls, event)
                continue
            if echo is not None and not result.text:
                result.text.append(echo[index // n])
                result.length = len(echo[index // n])
            if isinstance(event, TokenEvent):
                if logprobs and event.logprob is not None:
                    result.chat_logprobs.append(chat_logprob_content(event))
                    result.completion_logprobs.add(event, result.length)
                result.text.append(event.text)
                result.length += len(event.text)
            elif isinstance(event, FinishEvent):
                result.text.append(event.text)
                result.finish = event
    finally:
        watcher.cancel()
    choices = [results[i] for i in sorted(results)]
    failed = next((c.finish for c in choices if c.finish and c.finish.error), None)
    if failed is not None:
        raise failure_error(failed)
    finishes = [c.finish for c in choices if c.finish]
    return shape.complete(choices, usage(finishes, n), logprobs)


def failure_error(finish: FinishEvent) -> APIError:
    """A sequence that ended in an error or a timeout, as the error a client sees."""
    if finish.reason == "timeout":
        return APIError(504, finish.error or "timed out", type="server_error", code="timeout")
    if finish.error_code == "kv_invalid":  # the client's own uploaded KV failed to decode
        return APIError(400, finish.error or "invalid KV", param=KV_HEADER, code="kv_invalid")
    message = finish.error or "generation failed"
    return APIError(500, message, type="server_error", code=finish.error_code)


async def _cancel_on_disconnect(request: Request, streams: ChoiceStreams) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        while not await request.is_disconnected():
            await asyncio.sleep(DISCONNECT_POLL_S)
        streams.cancel()


async def chunks(generation: Generation) -> AsyncIterator[dict[str, Any]]:
    """The stream's chunks (and error bodies), unframed; the generator being closed (client
    gone) cancels the sequences at once."""
    streams, shape, plan = generation.streams, generation.shape, generation.plan
    n, logprobs, include_usage, echo = plan.n, plan.logprobs, plan.include_usage, plan.echo_texts()
    started: set[int] = set()
    finishes: list[tuple[int, FinishEvent]] = []
    offsets: dict[int, int] = {}
    called: set[int] = set()  # choices that made tool calls
    async for index, event in _events(streams, plan):
        if index not in started:
            started.add(index)
            first = echo[index // n] if echo is not None else ("" if shape.kind == "chat" else None)
            if shape.kind == "chat" or first:
                yield shape.chunk(index, text=first, role=True, with_usage_field=include_usage)
            offsets[index] = len(first or "")
        if isinstance(event, ToolCallEvent):
            called.add(index)
            delta = {"tool_calls": [event.delta()]}
            yield shape.chunk(index, delta=delta, with_usage_field=include_usage)
        elif isinstance(event, TokenEvent):
            if not event.text and not logprobs:
                continue
            lp = None
            if logprobs and event.logprob is not None:
                if shape.kind == "chat":
                    lp = {"content": [chat_logprob_content(event)]}
                else:
                    lp = _completion_chunk_logprobs(event, offsets[index])
            offsets[index] += len(event.text)
            yield (shape.chunk(index, text=event.text, logprobs=lp, with_usage_field=include_usage))
        elif isinstance(event, FinishEvent):
            finishes.append((index, event))
            if event.error:
                yield failure_error(event).body()
                continue
            if event.text:
                yield shape.chunk(index, text=event.text, with_usage_field=include_usage)
            yield (
                shape.chunk(
                    index,
                    text=None if shape.kind == "chat" else "",
                    finish=finish_reason(event, called=index in called),
                    with_usage_field=include_usage,
                    stop_reason=event.stop_sequence,
                )
            )
    if include_usage:
        ordered = [f for _, f in sorted(finishes, key=lambda item: item[0])]
        yield (shape.usage_chunk(usage(ordered, n)))


def _events(
    streams: ChoiceStreams, plan: GenerationPlan
) -> AsyncIterator[tuple[int, Event | ToolCallEvent]]:
    """The choices' events; with tools, their text split into content and tool calls."""
    if plan.tools is None:
        return streams.events()
    return with_tool_calls(streams.events(), plan.tools.format)


def _completion_chunk_logprobs(event: TokenEvent, offset: int) -> dict[str, Any]:
    assert event.logprob is not None
    return {
        "tokens": [event.logprob.token],
        "token_logprobs": [event.logprob.logprob],
        "top_logprobs": [{t.token: t.logprob for t in event.top_logprobs}],
        "text_offset": [offset],
    }
