"""Who may reach a node's routes: /admin/ on a keyless node, scoped inference and admin keys,
the per-key request limit, and keys kept out of logs, /metrics and error bodies."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from edgebox.api.auth import LoopbackAdminMiddleware, NodeKeys, ScopedKeyMiddleware
from tests.conftest import NodeProcess, start_node


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


# -- scoped keys ------------------------------------------------------------------------------

API, ADMIN, FLEET = "sk-inference-7a1", "sk-admin-9b2", "sk-fleet-3c4"


def scoped(keys: NodeKeys, app: Any = None) -> ScopedKeyMiddleware:
    inner = app or Starlette(
        routes=[Route("/admin/drain", ok, methods=["POST"]), Route("/v1/models", ok)]
    )
    return ScopedKeyMiddleware(inner, keys)


def call_scoped(
    app: ScopedKeyMiddleware, host: str, path: str, key: str | None, method: str = "GET"
) -> httpx.Response:
    async def once() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(host, 50123))
        headers = {"authorization": f"Bearer {key}"} if key else {}
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            return await client.request(method, path, headers=headers)

    return asyncio.run(once())


def test_the_admin_key_opens_admin_only_and_the_inference_keys_inference_only() -> None:
    app = scoped(NodeKeys(api_key=API, admin_key=ADMIN, fleet_key=FLEET))
    for host in ("127.0.0.1", "10.0.0.5"):
        assert call_scoped(app, host, "/admin/drain", ADMIN, "POST").text == "done"
        refused = call_scoped(app, host, "/admin/drain", API, "POST")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_admin_key"
        assert "--admin-key" in refused.json()["error"]["message"]
        assert call_scoped(app, host, "/v1/models", API).text == "done"
        assert call_scoped(app, host, "/v1/models", FLEET).text == "done"  # peers' routers
        assert call_scoped(app, host, "/v1/models", ADMIN).status_code == 401
    for reply in (
        call_scoped(app, "10.0.0.5", "/admin/drain", "nope", "POST"),
        call_scoped(app, "10.0.0.5", "/v1/models", "nope"),
    ):
        assert not {API, ADMIN, FLEET} & set(reply.text.split("'"))
        assert all(k not in reply.text for k in (API, ADMIN, FLEET))


def test_with_only_an_inference_key_admin_is_loopback_only_and_says_what_to_do() -> None:
    app = scoped(NodeKeys(api_key=API))
    remote = call_scoped(app, "10.0.0.5", "/admin/drain", API, "POST")
    assert remote.status_code == 403
    error = remote.json()["error"]
    assert error["code"] == "admin_needs_admin_key" and "--admin-key" in error["message"]
    assert "EDGEBOX_ADMIN_KEY" in error["message"]
    # On loopback the inference key still administers it, as before scopes existed.
    assert call_scoped(app, "127.0.0.1", "/admin/drain", API, "POST").text == "done"
    assert call_scoped(app, "127.0.0.1", "/admin/drain", None, "POST").status_code == 401


def test_one_key_cannot_hold_more_than_its_limit_of_requests() -> None:
    release = asyncio.Event()
    inside = 0  # requests that reached the app (past the key limit)

    async def slow(_request: object) -> PlainTextResponse:
        nonlocal inside
        inside += 1
        await release.wait()
        return PlainTextResponse("done")

    app = scoped(
        NodeKeys(api_key=API, fleet_key=FLEET, per_key_limit=2),
        Starlette(routes=[Route("/v1/models", slow)]),
    )

    async def scenario() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, client=("10.0.0.5", 50123))
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:

            def get(key: str) -> Any:
                return client.get("/v1/models", headers={"authorization": f"Bearer {key}"})

            held = [asyncio.create_task(get(API)) for _ in range(2)]
            await _until(lambda: inside == 2)  # both are inside the app, waiting
            other = _released(get(FLEET), release, lambda: inside == 3)
            third, other_key = await asyncio.wait_for(asyncio.gather(get(API), other), 5)
            return [*(await asyncio.gather(*held)), third, other_key]

    first, second, third, other_key = asyncio.run(scenario())
    assert third.status_code == 429 and third.headers["retry-after"] == "1"
    assert third.json()["error"]["code"] == "key_concurrency_limit"
    assert (first.text, second.text, other_key.text) == ("done", "done", "done")


async def _released(
    request: Any, release: asyncio.Event, inside: Callable[[], bool]
) -> httpx.Response:
    """Another key's request gets into the app while the first key is at its limit; then all
    finish."""
    task = asyncio.ensure_future(request)
    await _until(inside)
    release.set()
    return await task


async def _until(condition: Callable[[], bool], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for requests to reach the app"
        await asyncio.sleep(0.005)


def test_keys_reach_no_log_metrics_or_error_body_of_a_real_node(tmp_path: Path) -> None:
    node = start_node(
        tmp_path,
        "--ctx",
        "512",
        "--parallel",
        "1",
        "--no-mdns",
        "--access-log",
        "--model",
        "smollm2-135m",
        env={"EDGEBOX_API_KEY": API, "EDGEBOX_ADMIN_KEY": ADMIN, "EDGEBOX_FLEET_KEY": FLEET},
    )
    try:
        bodies = []
        for path, key, want in (
            ("/admin/models", ADMIN, 200),
            ("/admin/models", API, 401),
            ("/v1/models", API, 200),
            ("/v1/models", FLEET, 200),
            ("/v1/models", ADMIN, 401),
            ("/v1/models", "wrong", 401),
        ):
            reply = httpx.get(node.url + path, headers={"authorization": f"Bearer {key}"})
            assert reply.status_code == want, (path, reply.text)
            bodies.append(reply.text)
        chat = httpx.post(
            node.base_url + "/chat/completions",
            timeout=60,
            headers={"authorization": f"Bearer {API}"},
            json={
                "model": "smollm2-135m",
                "max_tokens": 2,
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
        assert chat.status_code == 200
        bodies.append(httpx.get(node.url + "/metrics").text)
        bodies.append(httpx.get(node.url + "/health").text)
    finally:
        node.stop()
    bodies.append(node.log.read_text())
    for text in bodies:
        assert all(k not in text for k in (API, ADMIN, FLEET))


def test_a_joined_nodes_own_key_guards_v1_from_elsewhere_and_loopback_keeps_its_access() -> None:
    """The key the hub minted at join (member_key): other addresses must send it; the box
    itself needs none, as on a node bound to 127.0.0.1; /admin keeps its own rule."""
    member = "ebk_node-own-5d6"
    app = scoped(NodeKeys(member_key=member))
    for host in ("10.0.0.5", "fe80::1"):
        assert call_scoped(app, host, "/v1/models", None).status_code == 401
        assert call_scoped(app, host, "/v1/models", "ebk_another-node").status_code == 401
        assert call_scoped(app, host, "/v1/models", member).text == "done"
        assert call_scoped(app, host, "/admin/drain", member, "POST").status_code == 403
    for host in ("127.0.0.1", "::1"):
        assert call_scoped(app, host, "/v1/models", None).text == "done"
        assert call_scoped(app, host, "/admin/drain", None, "POST").text == "done"
    # With an API key of the owner's own, loopback needs a key too (as before).
    both = scoped(NodeKeys(api_key=API, member_key=member))
    assert call_scoped(both, "127.0.0.1", "/v1/models", None).status_code == 401
    assert call_scoped(both, "127.0.0.1", "/v1/models", member).text == "done"
    assert call_scoped(both, "10.0.0.5", "/v1/models", API).text == "done"


def test_the_pull_key_opens_the_pull_routes_and_nothing_else() -> None:
    pull = "sk-pull-5d6"
    inner = Starlette(
        routes=[
            Route("/admin/models/pull", ok, methods=["GET", "POST"]),
            Route("/admin/models/pull/{job}", ok),
            Route("/admin/models/pulled", ok),
            Route("/admin/drain", ok, methods=["POST"]),
            Route("/v1/models", ok),
        ]
    )
    app = scoped(NodeKeys(api_key=API, admin_key=ADMIN, pull_key=pull), inner)
    for host in ("127.0.0.1", "10.0.0.5"):
        assert call_scoped(app, host, "/admin/models/pull", pull, "POST").text == "done"
        assert call_scoped(app, host, "/admin/models/pull/pull-1", pull).text == "done"
        assert call_scoped(app, host, "/admin/models/pull", ADMIN, "POST").text == "done"
        assert call_scoped(app, host, "/admin/models/pulled", pull).status_code == 401
        assert call_scoped(app, host, "/admin/drain", pull, "POST").status_code == 401
        assert call_scoped(app, host, "/v1/models", pull).status_code == 401
        assert call_scoped(app, host, "/admin/models/pull", API, "POST").status_code == 401
    keyless_admin = scoped(NodeKeys(api_key=API, pull_key=pull), inner)  # no --admin-key
    assert call_scoped(keyless_admin, "10.0.0.5", "/admin/models/pull", pull, "POST").text == "done"
    assert call_scoped(keyless_admin, "10.0.0.5", "/admin/drain", pull, "POST").status_code == 403
