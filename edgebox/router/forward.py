"""Sending one request to one target (node or cloud) and relaying its answer.

Streams are passed through chunk by chunk as they arrive, never buffered whole. Once the first
byte has gone to the client there is no retry: a failure mid-stream ends the stream with an
OpenAI-shaped error event.

This is the router's hot path, so it runs on aiohttp rather than httpx: on this project's
benchmark machine aiohttp took ~0.19 ms of CPU per proxied request against httpx's ~0.83 ms
(benchmarks/bench_router.py). httpx stays for the control plane (polling, KV hand-off, hub).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from edgebox.api.errors import APIError
from edgebox.api.protocol import NODE_LIMIT_HEADER
from edgebox.api.sse import SSE_DONE, sse

log = logging.getLogger("edgebox.router")

ROUTE_HEADER = "x-edgebox-route"
_PASSED_HEADERS = (
    "content-type",
    "retry-after",
    "x-request-id",
    "openai-processing-ms",
    NODE_LIMIT_HEADER,  # the answering node's --max-tokens: /v1/responses reads it
)


class TargetFailed(Exception):
    """The target could not take the request (connect error, 5xx, busy); try the next one."""

    def __init__(self, reason: str, response: Response | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.response = response  # what to answer if no target is left


@dataclass(frozen=True)
class Outgoing:
    url: str
    content: bytes  # the JSON body, already encoded (a node gets the client's bytes unchanged)
    headers: dict[str, str]


_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)


class Relay:
    """One pooled aiohttp session for every node and cloud upstream, opened on first use
    (a session belongs to the event loop it was made in)."""

    def __init__(self, *, connect_timeout_s: float = 3.0, read_timeout_s: float = 600.0) -> None:
        # `connect` bounds the wait for a pooled connection and DNS too; `sock_read` is the
        # longest gap between two chunks, so long streams are fine.
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=10.0, sock_connect=connect_timeout_s, sock_read=read_timeout_s
        )
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                # Idle connections are dropped before uvicorn's 5 s keep-alive ends on the node
                # side, so a request is not sent down a socket the node is closing.
                connector=aiohttp.TCPConnector(
                    limit=512, limit_per_host=0, ttl_dns_cache=60, keepalive_timeout=4.0
                ),
                timeout=self._timeout,
                # Ask upstreams not to compress; a cloud that does anyway is decompressed here
                # (the client gets plain bytes, and usage can be read for the spend cap).
                headers={"accept-encoding": "identity"},
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _passed(headers: CIMultiDictProxy[str], route: str) -> dict[str, str]:
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
    relay: Relay,
    out: Outgoing,
    route: str,
    on_usage: Callable[[Mapping[str, Any]], None] | None,
    on_done: Callable[[], None] = lambda: None,
) -> Response:
    """Forward one request; raises `TargetFailed` when the next target should be tried.

    `on_done` runs once the answer is complete (for a stream: when it ends or breaks)."""
    try:
        response = await _send(relay, out, route, on_usage, on_done)
    except BaseException:
        on_done()
        raise
    if not isinstance(response, StreamingResponse):
        on_done()
    return response


async def _send(
    relay: Relay,
    out: Outgoing,
    route: str,
    on_usage: Callable[[Mapping[str, Any]], None] | None,
    on_done: Callable[[], None],
) -> Response:
    headers = {"content-type": "application/json", **out.headers}
    try:
        try:
            upstream = await relay.session.post(out.url, data=out.content, headers=headers)
        except aiohttp.ServerDisconnectedError:
            # A kept-alive connection the upstream had just closed: nothing was answered, so
            # send once more on a fresh one before calling the target failed.
            upstream = await relay.session.post(out.url, data=out.content, headers=headers)
    except _ERRORS as exc:
        raise TargetFailed(_failure(exc)) from None
    status = upstream.status
    if status >= 500 or status == 429:
        try:
            content = await upstream.read()
        except _ERRORS:
            content = b""
        finally:
            upstream.release()
        kept = Response(content, status, headers=_passed(upstream.headers, route))
        raise TargetFailed(f"http-{status}", kept)
    if status >= 400 or "text/event-stream" not in upstream.headers.get("content-type", ""):
        try:
            content = await upstream.read()
        except _ERRORS as exc:
            raise TargetFailed(_failure(exc)) from None
        finally:
            upstream.release()
        if on_usage and status == 200:
            try:
                usage = json.loads(content).get("usage")
            except (ValueError, AttributeError):
                usage = None
            if usage:
                on_usage(usage)
        return Response(content, status, headers=_passed(upstream.headers, route))
    finish = _Finish(upstream, on_done)
    return _RelayedStream(
        _relay(upstream, on_usage, finish), finish, status, _passed(upstream.headers, route)
    )


class _RelayedStream(StreamingResponse):
    """A relayed stream that ends its upstream however the response ends: also when the client
    left before the body started (Starlette then never starts the body iterator, so the
    iterator's own `finally` cannot be relied on) or sending to it failed."""

    def __init__(
        self,
        body: AsyncIterator[bytes],
        finish: _Finish,
        status: int,
        headers: Mapping[str, str],
    ) -> None:
        super().__init__(body, status, headers=headers)
        self._finish = finish

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._finish()


class _Finish:
    """Ends one relayed stream exactly once: release the connection when the body was read to
    the end, else close it (so the node stops generating), then `on_done`."""

    def __init__(self, upstream: aiohttp.ClientResponse, on_done: Callable[[], None]) -> None:
        self.upstream = upstream
        self.on_done = on_done
        self.done = False

    def __call__(self) -> None:
        if self.done:
            return
        self.done = True
        if self.upstream.content.at_eof():
            self.upstream.release()
        else:
            self.upstream.close()
        self.on_done()


def _failure(exc: BaseException) -> str:
    """A short, client-library-neutral reason for the route header and the logs."""
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect-error"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "disconnected"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "broken-body"
    return "error-" + type(exc).__name__


async def _relay(
    upstream: aiohttp.ClientResponse,
    on_usage: Callable[[Mapping[str, Any]], None] | None,
    finish: _Finish,
) -> AsyncIterator[bytes]:
    buffer = bytearray()
    usage: dict[str, Any] | None = None
    at_boundary = True
    try:
        async for chunk in upstream.content.iter_any():
            yield chunk
            at_boundary = chunk.endswith(b"\n\n")
            if on_usage:
                buffer += chunk
                found, buffer = _usage_from_sse(buffer)
                usage = found or usage
    except _ERRORS as exc:
        log.warning("upstream stream broke: %s", _failure(exc))
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
        finish()  # the client went away mid-stream: the connection is closed, not reused
        if on_usage and usage:
            on_usage(usage)
