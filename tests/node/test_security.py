"""Who may reach a node's /admin/ routes when it runs without an API key."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from edgebox.node.security import LoopbackAdminMiddleware
from tests.conftest import NodeProcess


def ok(_request: object) -> PlainTextResponse:
    return PlainTextResponse("done")


APP = LoopbackAdminMiddleware(
    Starlette(routes=[Route("/admin/drain", ok, methods=["POST"]), Route("/v1/models", ok)])
)


def call(client_host: str, path: str, method: str = "GET") -> httpx.Response:
    async def once() -> httpx.Response:
        transport = httpx.ASGITransport(app=APP, client=(client_host, 50123))
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            return await client.request(method, path)

    return asyncio.run(once())


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_loopback_clients_may_administer_a_keyless_node(host: str) -> None:
    assert (call(host, "/admin/drain", "POST")).text == "done"


@pytest.mark.parametrize(
    "host", ["192.168.1.20", "10.0.0.5", "fe80::1", "::ffff:10.0.0.5", "testclient"]
)
def test_other_clients_get_a_403_that_says_how_to_allow_it(host: str) -> None:
    reply = call(host, "/admin/drain", "POST")
    assert reply.status_code == 403
    error = reply.json()["error"]
    assert error["code"] == "admin_needs_api_key" and "--api-key" in error["message"]
    assert (call(host, "/v1/models")).text == "done"  # the OpenAI routes stay open


def test_a_forwarded_for_header_does_not_change_who_the_client_is(node: NodeProcess) -> None:
    """The node ignores X-Forwarded-For (uvicorn's proxy headers are off), so a local proxy
    cannot make a remote client look like loopback, nor a loopback client look remote."""
    spoofed = {"x-forwarded-for": "10.0.0.5", "forwarded": "for=10.0.0.5"}
    reply = httpx.get(node.url + "/admin/requests", headers=spoofed, timeout=10)
    assert reply.status_code == 200, reply.text
