"""Sending one request to one target (node or cloud) and relaying its answer.

Streams are passed through chunk by chunk as they arrive (`aiter_raw`), never buffered whole.
Once the first byte has gone to the client there is no retry: a failure mid-stream ends the
stream with an OpenAI-shaped error event.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.responses import Response, StreamingResponse

from edgebox.node.errors import APIError
from edgebox.node.responses import SSE_DONE, sse

log = logging.getLogger("edgebox.router")

ROUTE_HEADER = "x-edgebox-route"
_PASSED_HEADERS = ("content-type", "retry-after", "x-request-id", "openai-processing-ms")


class TargetFailed(Exception):
    """The target could not take the request (connect error, 5xx, busy); try the next one."""

    def __init__(self, reason: str, response: Response | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.response = response  # what to answer if no target is left


@dataclass(frozen=True)
class Outgoing:
    url: str
    body: dict[str, Any]
    headers: dict[str, str]


def _passed(headers: httpx.Headers, route: str) -> dict[str, str]:
    out = {k: v for k, v in headers.items() if k.lower() in _PASSED_HEADERS}
    out[ROUTE_HEADER] = route
    return out


def _usage_from_sse(buffer: bytearray) -> tuple[dict[str, Any] | None, bytearray]:
    """The last usage object among the complete SSE events in `buffer`, and the unread rest."""
    found = None
    *events, rest = bytes(buffer).split(b"\n\n")
    for event in events:
        if event.startswith(b"data: {") and b'"usage"' in event:
            try:
                usage = json.loads(event[len(b"data: ") :]).get("usage")
            except ValueError:
                continue
            if usage:
                found = usage
    return found, bytearray(rest)


async def send(
    client: httpx.AsyncClient,
    out: Outgoing,
    route: str,
    on_usage: Callable[[Mapping[str, Any]], None] | None,
    timeout: float,
    on_done: Callable[[], None] = lambda: None,
) -> Response:
    """Forward one request; raises `TargetFailed` when the next target should be tried.

    `on_done` runs once the answer is complete (for a stream: when it ends or breaks)."""
    try:
        response = await _send(client, out, route, on_usage, timeout, on_done)
    except BaseException:
        on_done()
        raise
    if not isinstance(response, StreamingResponse):
        on_done()
    return response


async def _send(
    client: httpx.AsyncClient,
    out: Outgoing,
    route: str,
    on_usage: Callable[[Mapping[str, Any]], None] | None,
    timeout: float,
    on_done: Callable[[], None],
) -> Response:
    request = client.build_request(
        "POST", out.url, json=out.body, headers=out.headers, timeout=timeout
    )
    try:
        upstream = await client.send(request, stream=True)
    except httpx.HTTPError as exc:
        raise TargetFailed(f"{type(exc).__name__}") from None
    status = upstream.status_code
    if status >= 500 or status == 429:
        content = await upstream.aread()
        await upstream.aclose()
        kept = Response(content, status, headers=_passed(upstream.headers, route))
        raise TargetFailed(f"http-{status}", kept)
    if status >= 400 or "text/event-stream" not in upstream.headers.get("content-type", ""):
        try:
            content = await upstream.aread()
        except httpx.HTTPError as exc:
            raise TargetFailed(f"{type(exc).__name__}") from None
        finally:
            await upstream.aclose()
        if on_usage and status == 200:
            try:
                usage = json.loads(content).get("usage")
            except (ValueError, AttributeError):
                usage = None
            if usage:
                on_usage(usage)
        return Response(content, status, headers=_passed(upstream.headers, route))
    return StreamingResponse(
        _relay(upstream, on_usage, on_done), status, headers=_passed(upstream.headers, route)
    )


async def _relay(
    upstream: httpx.Response,
    on_usage: Callable[[Mapping[str, Any]], None] | None,
    on_done: Callable[[], None],
) -> AsyncIterator[bytes]:
    buffer = bytearray()
    usage: dict[str, Any] | None = None
    at_boundary = True
    try:
        async for chunk in upstream.aiter_raw():
            yield chunk
            at_boundary = chunk.endswith(b"\n\n")
            if on_usage:
                buffer += chunk
                found, buffer = _usage_from_sse(buffer)
                usage = found or usage
    except httpx.HTTPError as exc:
        log.warning("upstream stream broke: %s", type(exc).__name__)
        error = APIError(
            502,
            "the node serving this request failed mid-stream; the output above is incomplete",
            type="server_error",
            code="upstream_failed",
        )
        if not at_boundary:  # end the half-sent event so the error event parses on its own
            yield b"\n\n"
        yield sse(error.body())
        yield SSE_DONE
    finally:
        on_done()
        await upstream.aclose()
        if on_usage and usage:
            on_usage(usage)
