"""The OpenAI Responses API on the node: /v1/responses and its stored responses.

A create request is translated to a chat request (`api.openai_responses`), run through the
node's own chat path (`openai_api.start_chat`: the same checks, tool plan, prompt and
prefix cache), and its answer translated back. `previous_response_id` rebuilds the stored
conversation; the prompt it renders starts with the tokens of the last turn's, so the prefix
cache serves them and only the new turn is computed.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from edgebox.api.body import read_json
from edgebox.api.errors import APIError
from edgebox.api.openai_responses import (
    ResponseCreateRequest,
    ResponseEventStream,
    chat_to_response,
    event_bytes,
    input_items,
    new_id,
    responses_param,
    to_chat_body,
)
from edgebox.api.protocol import ChatCompletionRequest
from edgebox.api.response_store import LOCAL_OWNER, StoredResponse, owner_of
from edgebox.node.admin import refuse_if_draining
from edgebox.node.generation import one_write_per_batch
from edgebox.node.metrics import now
from edgebox.node.offload import off_loop
from edgebox.node.openai_api import Generation, chunks, collect, parse, start_chat
from edgebox.node.state import NodeState

MAX_LIST_LIMIT = 100  # input_items per page, as OpenAI allows


def request_owner(request: Request) -> str:
    """Whose responses a request may store and read: its key's (hashed), or `local` when the
    node took it without one."""
    if request.scope.get("state", {}).get("api_key_index") is None:
        return LOCAL_OWNER
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return owner_of(token.strip() if scheme.lower() == "bearer" else None)


async def create_response(request: Request) -> Response:
    arrived = now()
    state: NodeState = request.app.state.node
    refuse_if_draining(state)
    req: ResponseCreateRequest = parse(
        ResponseCreateRequest, await read_json(request, state.max_body)
    )
    owner = request_owner(request)
    history = await _history(state, owner, req.previous_response_id)
    try:
        chat = parse(ChatCompletionRequest, to_chat_body(req, history))
        generation = await start_chat(request, state, chat, arrived)
    except APIError as exc:
        exc.param = responses_param(exc.param, req)  # the field as this request names it
        raise
    items = history + input_items(req)
    response_id, created = new_id("resp"), int(time.time())
    if req.stream:
        events = _events(state, owner, items, req, generation, response_id, created)
        return StreamingResponse(
            one_write_per_batch(events, generation.streams),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    chat = await collect(request, generation)
    response = chat_to_response(chat, req, response_id, created, generation.plan.node_limit)
    if req.store:
        await off_loop(state.responses.put, owner, response, items)
    return JSONResponse(response)


async def _history(state: NodeState, owner: str, previous_id: str | None) -> list[dict[str, Any]]:
    if previous_id is None:
        return []
    stored = await off_loop(state.responses.get, owner, previous_id)
    if stored is None:
        raise APIError(
            404,
            f"Previous response with id '{previous_id[:80]}' not found.",
            param="previous_response_id",
            code="previous_response_not_found",
        )
    return stored.conversation()


async def _events(
    state: NodeState,
    owner: str,
    items: list[dict[str, Any]],
    req: ResponseCreateRequest,
    generation: Generation,
    response_id: str,
    created: int,
) -> AsyncIterator[bytes]:
    """The Responses events of a streamed chat; a stored response is saved before the
    event that completes it, so the client's next turn can continue from it at once."""
    stream = ResponseEventStream(req, response_id, created, generation.plan.node_limit)
    for event in stream.start():
        yield event_bytes(event)
    async for chunk in chunks(generation):
        for event in stream.feed(chunk):
            yield event_bytes(event)
        if stream.done:
            return
    last = stream.finish()
    if req.store:
        await off_loop(state.responses.put, owner, stream.response, items)
    for event in last:
        yield event_bytes(event)


async def _stored(request: Request) -> tuple[NodeState, str, StoredResponse]:
    state: NodeState = request.app.state.node
    response_id = request.path_params["response_id"]
    stored = await off_loop(state.responses.get, request_owner(request), response_id)
    if stored is None:
        raise _not_found(response_id)
    return state, response_id, stored


async def get_response(request: Request) -> Response:
    _, _, stored = await _stored(request)
    return JSONResponse(stored.response)


async def delete_response(request: Request) -> Response:
    state, response_id, _ = await _stored(request)
    await off_loop(state.responses.delete, request_owner(request), response_id)
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})


async def list_input_items(request: Request) -> Response:
    """A page of the conversation's input items: newest first unless `order=asc`, `limit`
    (1-100, default 20) after the item `after`."""
    _, _, stored = await _stored(request)
    query = request.query_params
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise APIError(400, "order must be 'asc' or 'desc'", param="order", code="invalid_value")
    limit_text = query.get("limit", "20")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_LIST_LIMIT:
        raise APIError(
            400,
            f"limit must be a whole number from 1 to {MAX_LIST_LIMIT}",
            param="limit",
            code="invalid_value",
        )
    items = stored.items if order == "asc" else stored.items[::-1]
    after = query.get("after")
    if after is not None:
        ids = [item.get("id") for item in items]
        if after not in ids:
            raise _not_found(after, param="after", what="Item")
        items = items[ids.index(after) + 1 :]
    page = items[: int(limit_text)]
    return JSONResponse(
        {
            "object": "list",
            "data": page,
            "first_id": page[0].get("id") if page else None,
            "last_id": page[-1].get("id") if page else None,
            "has_more": len(items) > len(page),
        }
    )


def _not_found(item_id: str, *, param: str | None = None, what: str = "Response") -> APIError:
    shown = item_id[:80]
    return APIError(404, f"{what} with id '{shown}' not found.", param=param, code="not_found")
