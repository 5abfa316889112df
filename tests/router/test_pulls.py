"""The router's side of a pull (`router/pulls.py`), against an in-process node: requests during
one pull share it, a client that leaves does not stop it, failures say why, keys never show."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edgebox.router import pulls as pulls_module
from edgebox.router.nodes import NodeAddress, NodeStatus
from edgebox.router.pulls import PullFailed, PullOrder, Pulls

pytestmark = pytest.mark.timeout(30)
SECRET = "sk-pull-secret-1"


class FakeNode:
    """`/admin/models/pull` as a node answers it; `finish` ends the job."""

    def __init__(self, refuse: int = 0) -> None:
        self.started: list[dict[str, Any]] = []
        self.state, self.error, self.refuse = "running", None, refuse
        self.app = Starlette(
            routes=[
                Route("/admin/models/pull", self.start, methods=["POST"]),
                Route("/admin/models/pull/{job}", self.status),
            ]
        )

    async def start(self, request: Request) -> Response:
        if self.refuse:
            body = {"error": {"message": "missing or incorrect admin key", "code": "x"}}
            return JSONResponse(body, status_code=self.refuse)
        self.started.append(await request.json())
        return JSONResponse({"job": "pull-1", "state": "queued"}, status_code=202)

    async def status(self, request: Request) -> Response:
        body = {"job": "pull-1", "state": self.state, "error": self.error}
        return JSONResponse({**body, "bytes_done": 5 * 10**6, "bytes_total": 10**8})

    def finish(self, error: str | None = None) -> None:
        self.state, self.error = ("failed", error) if error else ("done", None)


def order(model: str = "m") -> PullOrder:
    peers = ("http://10.0.0.2:8080",)
    return PullOrder("b", "http://b", model, peers, {"authorization": f"Bearer {SECRET}"})


def client_for(node: FakeNode) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=node.app))


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pulls_module, "POLL_S", 0.01)


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0.01)


def test_requests_during_one_pull_share_it_and_a_client_leaving_does_not_stop_it() -> None:
    async def scenario() -> None:
        node = FakeNode()
        async with client_for(node) as client:
            pulls = Pulls(client, timeout_s=10)
            first = asyncio.create_task(pulls.bring(order()))
            second = asyncio.create_task(pulls.bring(order()))
            await _settle()
            first.cancel()  # its client went away
            await _settle()
            third = asyncio.create_task(pulls.bring(order()))  # a new request joins the pull
            await _settle()
            node.finish()
            await asyncio.wait_for(asyncio.gather(second, third), 5)
            assert first.cancelled()
            assert node.started == [{"spec": "m", "peers": [{"url": "http://10.0.0.2:8080"}]}]
            assert pulls.started == 1
            status = NodeStatus(NodeAddress("b", "http://b"), healthy=True)
            assert pulls.fold({"b": status}, now=time.monotonic())["b"].available
            await pulls.bring(order("other"))  # another model: a pull of its own

    asyncio.run(scenario())


def test_a_failed_pull_says_why_and_the_next_one_starts_afresh() -> None:
    async def scenario() -> None:
        node = FakeNode()
        async with client_for(node) as client:
            pulls = Pulls(client, timeout_s=10)
            waiting = asyncio.create_task(pulls.bring(order()))
            await _settle()
            node.finish("not found (404): org/repo:x.gguf")
            with pytest.raises(PullFailed, match=r"the pull failed: not found \(404\)"):
                await waiting
            node.state = "running"
            again = asyncio.create_task(pulls.bring(order()))
            await _settle()
            node.finish()
            await again
            assert len(node.started) == 2

    asyncio.run(scenario())


def test_a_pull_past_its_timeout_and_a_refused_key_are_clear_and_never_show_the_key() -> None:
    async def scenario() -> None:
        async with client_for(FakeNode()) as client:
            with pytest.raises(PullFailed, match=r"did not finish in 0.1 s \(5 of 100 MB\)"):
                await Pulls(client, timeout_s=0.1).bring(order())
        async with client_for(FakeNode(refuse=401)) as client:
            with pytest.raises(PullFailed) as refused:
                await Pulls(client, timeout_s=10).bring(order())
            assert "--pull-key" in str(refused.value) and SECRET not in str(refused.value)

    asyncio.run(scenario())


def test_a_failed_pull_moves_on_to_the_cloud_or_is_a_503_naming_model_node_and_source() -> None:
    from edgebox.api.errors import APIError
    from edgebox.router.cloud import CloudTarget
    from edgebox.router.config import CloudUpstream
    from edgebox.router.fetch import Fetch
    from edgebox.router.placement import Candidate, RouteRequest
    from edgebox.router.plan import RoutePlan
    from edgebox.router.pulls import fetch_first

    nodes = {
        n: NodeStatus(
            NodeAddress(n, f"http://{n}"), healthy=True, available={"m": 1} if n == "a" else {}
        )
        for n in ("a", "b")
    }
    local = (Candidate("b", 1.0, ("load:peer-transfer", "from=a")), "load:peer-transfer+from=a")
    cloud = CloudTarget(CloudUpstream(name="c", base_url="http://c/v1", models={"m": "m"}), "m")
    fetch = Fetch("b", "m", ("a",))
    alone = RoutePlan(
        "/v1/chat/completions", RouteRequest("m"), nodes, (local,), {}, None, fetch=fetch
    )

    async def scenario() -> None:
        node = FakeNode()
        async with client_for(node) as client:
            pulls = Pulls(client, timeout_s=10)
            waiting = asyncio.create_task(fetch_first(pulls, alone, {}))
            await _settle()
            node.finish("peer http://a: connection refused")
            with pytest.raises(APIError) as failed:
                await waiting
            assert failed.value.status == 503 and failed.value.code == "model_pull_failed"
            message = str(failed.value)
            assert "'m'" in message and "node b" in message and "a peer transfer from a" in message
            assert "connection refused" in message
            node.state = "running"
            both = RoutePlan(**{**alone.__dict__, "targets": (local, (cloud, "fallback"))})
            waiting = asyncio.create_task(fetch_first(pulls, both, {}))
            await _settle()
            node.finish("peer http://a: connection refused")
            moved = await waiting
            assert [t for t, _ in moved.targets] == [cloud] and moved.fetch is None

    asyncio.run(scenario())
