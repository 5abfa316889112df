"""What the router's agent APIs (`/v1/responses`, `/v1/messages`) share: each translates its
request to a chat completion, routes that like any other (`Router.handle`: placement,
affinity, failover, cloud burst, metrics), and translates the answer back here — a JSON
answer rewritten, a relayed stream's chat chunks turned into the API's own events as they
arrive. The translators themselves are the node's (`edgebox.api.openai_responses`,
`edgebox.api.anthropic`), so a node and the router answer alike."""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from edgebox.router.forward import ROUTE_HEADER

if TYPE_CHECKING:
    from edgebox.router.service import Router

CHAT_PATH = "/v1/chat/completions"
_KEPT_HEADERS = (ROUTE_HEADER, "retry-after", "x-request-id")


def router_of(request: Request) -> Router:
    router: Router = request.app.state.router
    return router


def key_local_only(request: Request) -> bool:
    """Whether the client's key is one of the router's local-only `[[keys]]`."""
    index = request.scope.get("state", {}).get("api_key_index")
    return index is not None and index in request.app.state.local_only_keys


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The API key a request was sent with (`Authorization: Bearer`, else `x-api-key`), for
    the owner of what it stores (`response_store.owner_of` keeps only a hash)."""
    bearer = headers.get("authorization", "")
    key = bearer[7:].strip() if bearer[:7].lower() == "bearer " else headers.get("x-api-key")
    return key or None


def answer_json(answer: Response) -> Any:
    """The JSON a node (or cloud) answered, or None when it is not JSON."""
    try:
        return json.loads(bytes(answer.body))
    except (ValueError, UnicodeDecodeError):
        return None


def rewritten(answer: Response, payload: Any, status: int | None = None) -> Response:
    """`payload` as the answer, keeping the relayed answer's route and retry headers."""
    kept = {k: v for k, v in answer.headers.items() if k.lower() in _KEPT_HEADERS}
    return JSONResponse(payload, status or answer.status_code, headers=kept)


def is_stream(answer: Response) -> bool:
    return isinstance(answer, StreamingResponse)


def restreamed(
    answer: Response, translate: Callable[[AsyncIterable[Any]], AsyncIterator[bytes]]
) -> Response:
    """The relayed stream with its body read through `translate`; the relay still ends the
    upstream connection however the response ends."""
    assert isinstance(answer, StreamingResponse)
    answer.body_iterator = translate(answer.body_iterator)
    return answer


async def chat_chunks(body: AsyncIterable[Any]) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of an OpenAI SSE stream (chunks, or the router's error event), until
    `data: [DONE]`."""
    buffer = b""
    async for piece in body:
        buffer += piece if isinstance(piece, bytes) else str(piece).encode()
        *events, buffer = buffer.split(b"\n\n")
        for event in events:
            for line in event.split(b"\n"):
                data = line[5:].strip() if line.startswith(b"data:") else b""
                if data == b"[DONE]":
                    return
                if data:
                    try:
                        yield json.loads(data)
                    except ValueError:
                        continue
