"""The router's relay (`router/forward.py`) against a real node: a client that leaves before
the body starts still ends the upstream exactly once, and an idle pooled connection the node
has closed is not mistaken for a failed node."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from starlette.responses import StreamingResponse

from edgebox.router.forward import Outgoing, Relay, send
from tests.conftest import NodeProcess
from tests.router.conftest import running_on

MODEL = "smollm2-135m"


def test_a_client_gone_before_the_body_starts_ends_the_upstream_once(node: NodeProcess) -> None:
    body = {"model": MODEL, "prompt": "1, 2, 3,", "max_tokens": 900, "stream": True}
    out = Outgoing(node.base_url + "/completions", json.dumps(body).encode(), {})
    finished: list[str] = []

    async def scenario() -> None:
        relay = Relay()
        try:
            response = await send(relay, out, "n;reason=test", None, lambda: finished.append("x"))
            assert isinstance(response, StreamingResponse)

            async def receive() -> dict[str, str]:
                await asyncio.sleep(60)
                return {"type": "http.disconnect"}

            async def send_asgi(message: dict[str, object]) -> None:
                raise OSError("the client's socket is gone")  # before the first byte

            scope = {"type": "http", "asgi": {"spec_version": "2.3"}, "method": "POST"}
            with pytest.raises(BaseException):  # noqa: B017  (anyio may wrap it in a group)
                await response(scope, receive, send_asgi)  # type: ignore[arg-type]
            # Once the response returns, not whenever the generator is garbage-collected.
            assert finished == ["x"]  # the router's in-flight count is given back once
        finally:
            await relay.aclose()

    asyncio.run(scenario())
    assert finished == ["x"]
    deadline = time.monotonic() + 5.0  # 900 tokens take far longer: the node was told to stop
    while (running := running_on(node)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert running == 0


def test_an_idle_connection_the_node_closed_is_not_a_failure(node: NodeProcess) -> None:
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 1}
    out = Outgoing(node.base_url + "/completions", json.dumps(body).encode(), {})

    async def scenario() -> list[int]:
        relay = Relay()
        try:
            first = await send(relay, out, "n", None)
            await asyncio.sleep(5.5)  # past the node's 5 s keep-alive
            second = await send(relay, out, "n", None)
            return [first.status_code, second.status_code]
        finally:
            await relay.aclose()

    assert asyncio.run(scenario()) == [200, 200]
