"""Slow clients cannot starve a node: against a real node started with a low open-file limit,
200 header-trickling connections leave /health answering at once, and trickling connections
are closed by the header deadline; in process, the per-address cap closes the connection past
it at once."""

from __future__ import annotations

import asyncio
import resource
import socket
import time
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from edgebox.api.conn_guard import ConnectionLimits, guarded_protocol, http_protocol
from tests.conftest import free_port, start_node

TRICKLERS = 200
SOFT_LIMIT = 200  # below what 200 connections plus the node's own files need


def _trickle(port: int, n: int, source: str = "127.0.0.1") -> list[socket.socket]:
    """`n` connections that each sent the start of a request's headers, and no more."""
    opened = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        opened.append(s)
    return opened


def _closed_by_server(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_trickling_connections_neither_starve_health_nor_stay_open(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT_LIMIT, hard))  # the node inherits it
    try:
        node = start_node(
            tmp_path, "--ctx", "512", "--parallel", "1", "--no-mdns", "--model", "smollm2-135m"
        )
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    port = int(node.url.rsplit(":", 1)[1])
    held: list[socket.socket] = []
    try:
        held = _trickle(port, TRICKLERS)
        for s in held[:20]:  # some keep trickling: bytes arriving do not extend the deadline
            s.sendall(b"a")
        started = time.monotonic()
        health = httpx.get(node.url + "/health", timeout=2)
        assert health.status_code == 200 and time.monotonic() - started < 2
        deadline = time.monotonic() + 20  # the header deadline is 10 s
        while not all(_closed_by_server(s) for s in held):
            assert time.monotonic() < deadline, "trickling connections were not closed"
            time.sleep(0.5)
        assert httpx.get(node.url + "/health", timeout=2).status_code == 200
    finally:
        for s in held:
            s.close()
        node.stop()


def test_the_connection_past_the_per_address_cap_is_closed_at_once() -> None:
    limits = ConnectionLimits(header_timeout_s=30, per_address=5, total=100)

    async def ok(_request: object) -> PlainTextResponse:
        return PlainTextResponse("ok")

    port = free_port()
    config = uvicorn.Config(
        Starlette(routes=[Route("/health", ok)]),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        http=guarded_protocol(http_protocol(), limits),
    )
    server = uvicorn.Server(config)

    async def scenario() -> tuple[list[bool], int]:
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.02)
        held = await asyncio.to_thread(_trickle, port, 6, "127.0.0.2")
        deadline = time.monotonic() + 0.2  # "at once": the sixth is closed within 0.2 s
        while not _closed_by_server(held[-1]) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        closed = [_closed_by_server(s) for s in held]
        async with httpx.AsyncClient() as client:  # another address is not affected
            status = (await client.get(f"http://127.0.0.1:{port}/health")).status_code
        for s in held:
            s.close()
        server.should_exit = True
        await task
        return closed, status

    closed, status = asyncio.run(scenario())
    assert closed == [False] * 5 + [True] and status == 200
    assert limits.refused == 1
