"""`/v1/responses` at the router: the stateful Responses API over the fleet's chat completions.

Conversation state lives here, in the router's own `ResponseStore` (SQLite in its data
directory), not on a node: `previous_response_id` is resolved at the router, which sends the
whole conversation to a node as one chat completion. The node's prefix cache makes that
cheap where the conversation ran before, and affinity sends it there (the previous response's
node, else the one its `prompt_cache_key` or `user` went to; route reason
`affinity:conversation`). When that node is gone the turn is replayed on another from the
full history: slower, never an error. A node's 4xx passes through with its fields named as
the Responses request spells them; a cloud upstream that speaks only chat completions serves
Responses requests the same way, tools included."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from edgebox.api.body import DEFAULT_MAX_BODY, decode_json, read_body
from edgebox.api.errors import APIError, from_validation_error
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
from edgebox.api.protocol import NODE_LIMIT_HEADER
from edgebox.api.response_store import ResponseStore, StoredResponse, owner_of
from edgebox.router.front import (
    CHAT_PATH,
    answer_json,
    chat_chunks,
    is_stream,
    key_local_only,
    presented_key,
    restreamed,
    rewritten,
    router_of,
)
from edgebox.router.placement import conversation_key


def _owner(request: Request) -> str:
    return owner_of(presented_key(request.headers))


async def create_response(request: Request) -> Response:
    """POST /v1/responses: history resolved here, one chat completion routed, answer kept."""
    req = _parse(decode_json(await read_body(request, DEFAULT_MAX_BODY)))
    router, owner = router_of(request), _owner(request)
    history = await _history(router.responses, owner, req.previous_response_id)
    turn = _Turn(router.responses, owner, req, history + input_items(req))
    answer = await router.handle(
        CHAT_PATH,
        to_chat_body(req, history),
        request.headers,
        key_local_only=key_local_only(request),
        conversation=_conversation(req, turn.response_id),
    )
    if answer.status_code >= 400:
        return _error(answer, req)
    turn.node_limit = node_limit(answer)
    if is_stream(answer):
        return restreamed(answer, turn.events)
    chat = answer_json(answer) or {}
    response = chat_to_response(chat, req, turn.response_id, turn.created, turn.node_limit)
    await turn.keep(response)
    return rewritten(answer, response)


def node_limit(answer: Response) -> int | None:
    """The answering node's `--max-tokens`, when it set this answer's limit (see `finished`)."""
    said = answer.headers.get(NODE_LIMIT_HEADER, "")
    return int(said) if said.isdigit() else None


def _parse(data: Any) -> ResponseCreateRequest:
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    try:
        return ResponseCreateRequest.model_validate(data)
    except ValueError as exc:
        raise from_validation_error(exc) from exc  # type: ignore[arg-type]


async def _history(store: ResponseStore, owner: str, previous: str | None) -> list[dict[str, Any]]:
    """The conversation `previous_response_id` continues (its inputs and outputs)."""
    if previous is None:
        return []
    stored = await asyncio.to_thread(store.get, owner, previous)
    if stored is None:
        raise _not_found(previous, "previous_response_id")
    return stored.conversation()


def _conversation(req: ResponseCreateRequest, response_id: str) -> tuple[str, ...]:
    """Affinity keys, the most specific first: the response this turn continues, this
    response (the next turn's), then the client's `prompt_cache_key` and `user`."""
    named = [
        ("response", req.previous_response_id),
        ("response", response_id),
        ("prompt_cache_key", req.prompt_cache_key),
        ("user", req.user),
    ]
    return tuple(conversation_key(req.model, kind, v) for kind, v in named if v)


def _error(answer: Response, req: ResponseCreateRequest) -> Response:
    """A node's (or the router's) error, its `param` named as the Responses request names it."""
    body = answer_json(answer)
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("param"):
        error["param"] = responses_param(error["param"], req)
        return rewritten(answer, body)
    return answer


class _Turn:
    """One response being made: its id, and what is stored once it is complete."""

    def __init__(
        self,
        store: ResponseStore,
        owner: str,
        req: ResponseCreateRequest,
        items: list[dict[str, Any]],
    ) -> None:
        self.store, self.owner, self.req, self.items = store, owner, req, items
        self.response_id = new_id("resp")
        self.created = int(time.time())
        self.node_limit: int | None = None  # the answering node's --max-tokens, if it applied

    async def keep(self, response: dict[str, Any]) -> None:
        if self.req.store and response.get("status") in ("completed", "incomplete"):
            await asyncio.to_thread(self.store.put, self.owner, response, self.items)

    async def events(self, chunks: AsyncIterable[Any]) -> AsyncIterator[bytes]:
        """The Responses events for a relayed chat stream; the response kept at its end."""
        stream = ResponseEventStream(self.req, self.response_id, self.created, self.node_limit)
        for event in stream.start():
            yield event_bytes(event)
        async for chunk in chat_chunks(chunks):
            for event in stream.feed(chunk):
                yield event_bytes(event)
        for event in stream.finish():
            yield event_bytes(event)
        await self.keep(stream.response)


def _not_found(response_id: str, param: str | None = None) -> APIError:
    return APIError(
        404,
        f"no response with id '{response_id[:80]}' is stored here (it was not stored, has "
        "expired, or belongs to another API key)",
        param=param,
        code="response_not_found",
    )


async def _stored(request: Request) -> tuple[ResponseStore, str, StoredResponse]:
    store, owner = router_of(request).responses, _owner(request)
    response_id = request.path_params["response_id"]
    stored = await asyncio.to_thread(store.get, owner, response_id)
    if stored is None:
        raise _not_found(response_id)
    return store, owner, stored


async def get_response(request: Request) -> Response:
    """GET /v1/responses/{id}."""
    _, _, stored = await _stored(request)
    return JSONResponse(stored.response)


async def delete_response(request: Request) -> Response:
    """DELETE /v1/responses/{id}."""
    store, owner, stored = await _stored(request)
    response_id = stored.response["id"]
    await asyncio.to_thread(store.delete, owner, response_id)
    return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})


async def list_input_items(request: Request) -> Response:
    """GET /v1/responses/{id}/input_items: the conversation's inputs, newest first (as
    OpenAI lists them by default; `order=asc` for oldest first)."""
    _, _, stored = await _stored(request)
    items = list(stored.items)
    if request.query_params.get("order", "desc") != "asc":
        items.reverse()
    first, last = (items[0].get("id"), items[-1].get("id")) if items else (None, None)
    page = {"object": "list", "data": items, "first_id": first, "last_id": last}
    return JSONResponse({**page, "has_more": False})
