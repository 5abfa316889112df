"""`/v1/messages` at the router: the Anthropic Messages API over the fleet's chat completions.

A request is translated to a chat completion (`edgebox.api.anthropic.to_chat_body`), routed
like any other (a node, or a cloud upstream that speaks only chat completions), and the answer
translated back: a JSON answer with `chat_to_message`, a stream chunk by chunk with
`MessageEventStream`. Every error, the router's own and a node's, comes back in Anthropic's
shape (`{"type": "error", "error": {...}}`; a context overflow says "prompt is too long"). A
conversation is kept on one node by `metadata.user_id` (as Claude Code sends it)."""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from edgebox.api.anthropic import (
    CountTokensRequest,
    MessageEventStream,
    MessagesRequest,
    chat_to_message,
    from_openai_error,
    parse_request,
    sse_event,
    to_chat_body,
)
from edgebox.api.body import DEFAULT_MAX_BODY, decode_json, read_body
from edgebox.api.errors import APIError
from edgebox.router.front import (
    CHAT_PATH,
    answer_json,
    chat_chunks,
    is_stream,
    key_local_only,
    restreamed,
    rewritten,
    router_of,
)
from edgebox.router.placement import conversation_key, estimate_prompt_tokens


async def create_message(request: Request) -> Response:
    """POST /v1/messages (the app's error handler gives the router's errors Anthropic's shape)."""
    data = decode_json(await read_body(request, DEFAULT_MAX_BODY))
    req = parse_request(MessagesRequest, data)
    answer = await router_of(request).handle(
        CHAT_PATH,
        to_chat_body(req),
        request.headers,
        key_local_only=key_local_only(request),
        conversation=_conversation(req),
    )
    if answer.status_code >= 400:
        return _anthropic_error(answer)
    message_id = "msg_" + uuid.uuid4().hex
    if is_stream(answer):
        return restreamed(answer, functools.partial(_events, req=req, message_id=message_id))
    return rewritten(answer, chat_to_message(answer_json(answer) or {}, req, message_id))


def _conversation(req: MessagesRequest) -> tuple[str, ...]:
    """The affinity key Claude Code names its session with: `metadata.user_id`."""
    user = req.metadata.user_id if req.metadata is not None else None
    return (conversation_key(req.model, "user", user),) if user else ()


async def _events(
    chunks: AsyncIterable[Any], req: MessagesRequest, message_id: str
) -> AsyncIterator[bytes]:
    stream = MessageEventStream(req, message_id)
    async for chunk in chat_chunks(chunks):
        for event in stream.feed(chunk):
            yield sse_event(event)
    for event in stream.finish():
        yield sse_event(event)


async def count_tokens(request: Request) -> Response:
    """POST /v1/messages/count_tokens: a node counts them exactly (its own route; never the
    cloud, which may not have it); for a model only a cloud upstream serves, or a node
    without the route, the router's estimate (characters / 4)."""
    raw = await read_body(request, DEFAULT_MAX_BODY)
    data = decode_json(raw)
    req = parse_request(CountTokensRequest, data)
    estimate = estimate_prompt_tokens(to_chat_body(req))
    try:
        answer = await router_of(request).handle(
            request.url.path, data, request.headers, key_local_only=True, raw=raw
        )
    except APIError as exc:
        if exc.code != "no_node_available":
            raise
        return JSONResponse({"input_tokens": estimate})  # nothing local serves it
    if answer.status_code == 404 and not _is_anthropic_error(answer_json(answer)):
        return JSONResponse({"input_tokens": estimate})  # a node from before the route
    return _anthropic_error(answer) if answer.status_code >= 400 else answer


def _anthropic_error(answer: Response) -> Response:
    """A node's or cloud's error in Anthropic's shape (kept when it already is)."""
    body = answer_json(answer)
    if _is_anthropic_error(body):
        return answer
    return rewritten(answer, from_openai_error(answer.status_code, body))


def _is_anthropic_error(body: object) -> bool:
    return isinstance(body, dict) and body.get("type") == "error"


async def probe(request: Request) -> Response:
    """HEAD / (and GET /): Claude Code checks the base URL answers before its first request."""
    return Response(status_code=200)
