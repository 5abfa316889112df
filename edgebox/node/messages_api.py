"""The Anthropic Messages API: /v1/messages and /v1/messages/count_tokens.

Each request is translated to a chat-completions body (`api.anthropic`), checked and run by
the node's own chat path (`openai_api.start_chat`, tool calling included), and its answer
translated back: one Message, or Anthropic's stream events. Errors take Anthropic's shape in
`api.anthropic.messages_aware_error_handler`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from edgebox.api.anthropic import (
    CountTokensRequest,
    MessageEventStream,
    MessagesRequest,
    chat_to_message,
    parse_request,
    sse_event,
    to_chat_body,
)
from edgebox.api.body import read_json
from edgebox.api.protocol import ChatCompletionRequest
from edgebox.node.admin import refuse_if_draining
from edgebox.node.generation import one_write_per_batch
from edgebox.node.metrics import now
from edgebox.node.offload import off_loop
from edgebox.node.openai_api import Generation, chunks, collect, lookup, parse, start_chat
from edgebox.node.prompts import chat_prompt, check_chat_size
from edgebox.node.recent import usage_of
from edgebox.node.state import NodeState
from edgebox.node.tools import check_tool_messages, tool_plan


async def messages(request: Request) -> Response:
    arrived = now()
    state: NodeState = request.app.state.node
    refuse_if_draining(state)
    req = parse_request(MessagesRequest, await read_json(request, state.max_body))
    chat_body = to_chat_body(req)
    # max_tokens is a cap, and clients send their largest (Claude Code: 32,000 for a model
    # it does not know): past this model's context the answer ends at the context's end.
    runtime = await state.residency.acquire(req.model, lookup, "chat")  # loads it if on disk
    chat_body["max_tokens"] = min(req.max_tokens, runtime.info.n_ctx)
    body: ChatCompletionRequest = parse(ChatCompletionRequest, chat_body)
    generation = await start_chat(request, state, body, arrived)
    message_id = "msg_" + uuid.uuid4().hex[:24]
    if generation.plan.stream:
        events = MessageEventStream(req, message_id, input_tokens=generation.plan.prompt_tokens)
        return StreamingResponse(
            one_write_per_batch(_stream(generation, events), generation.streams),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    chat = await collect(request, generation)
    return JSONResponse(chat_to_message(chat, req, message_id))


async def _stream(generation: Generation, events: MessageEventStream) -> AsyncIterator[bytes]:
    """The chat stream's chunks as Anthropic events; closing it (client gone) cancels."""
    try:
        for event in events.start():
            yield sse_event(event)
        async for chunk in chunks(generation):
            for event in events.feed(chunk):
                yield sse_event(event)
            if events.finished:  # an error event ended it
                return
        for event in events.finish():
            yield sse_event(event)
    finally:
        generation.streams.cancel()


async def count_tokens(request: Request) -> Response:
    """The prompt's tokens as the model would read it: through its template, tools included."""
    state: NodeState = request.app.state.node
    req = parse_request(CountTokensRequest, await read_json(request, state.max_body))
    body: ChatCompletionRequest = parse(ChatCompletionRequest, to_chat_body(req))
    usage_of(request).model = body.model
    runtime = await state.residency.acquire(body.model, lookup, "chat")
    check_chat_size(runtime, body)
    check_tool_messages(body)
    tools = tool_plan(runtime, body)
    prompt = await off_loop(chat_prompt, runtime, body, tools)
    return JSONResponse({"input_tokens": len(prompt.tokens)})
