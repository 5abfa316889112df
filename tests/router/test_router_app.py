"""The router's app in process, in front of fake nodes: placement, failover and every error
path, in well under a second each.

Nodes are the router's HTTP peers, so a fake node is a small Starlette app answering /health,
/metrics and the OpenAI routes, served on loopback by uvicorn in a thread of this process (the
router relays with aiohttp over real sockets). The router runs through Starlette's TestClient,
which runs its lifespan: the first poll of the nodes happens before the first request."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from edgebox.router.app import create_app, new_client
from edgebox.router.cloud import SpendLedger
from edgebox.router.config import RouterConfig
from edgebox.router.forward import ROUTE_HEADER
from edgebox.router.nodes import StaticNodes
from edgebox.router.service import ROUTED_HEADER, Router
from tests.conftest import free_port, wait_until

MODEL = "tiny-test-model"  # no vocabulary the router could load: message-level placement
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}
JSON = {"content-type": "application/json"}


@dataclass
class FakeNode:
    """What the router sees of a node: its load in /health, and answers it chooses."""

    running: int = 0
    queued: int = 0
    status: str = "ok"
    answer: int = 200  # status of the chat answer; >= 400 answers an OpenAI-shaped error
    seen: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    @property
    def name(self) -> str:
        return self.url.removeprefix("http://")

    def app(self) -> Starlette:
        async def health(_: Request) -> JSONResponse:
            load = {"slots": 2, "running": self.running, "queued": self.queued}
            return JSONResponse({"status": self.status, "models": {MODEL: load}})

        async def metrics(_: Request) -> PlainTextResponse:
            return PlainTextResponse("")

        async def chat(request: Request) -> JSONResponse:
            raw = await request.body()
            self.seen.append({"raw": raw, "headers": dict(request.headers)})
            if self.answer >= 400:
                error = {
                    "message": f"fake failure {self.answer}",
                    "type": "server_error",
                    "param": None,
                    "code": f"fake_{self.answer}",
                }
                return JSONResponse({"error": error}, status_code=self.answer)
            message = {"role": "assistant", "content": f"hi from {self.name}"}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            answer = {"id": "c", "object": "chat.completion", "model": MODEL, "choices": [choice]}
            return JSONResponse(answer)

        routes = [Route("/health", health), Route("/metrics", metrics)]
        return Starlette(routes=[*routes, Route("/v1/chat/completions", chat, methods=["POST"])])


@contextlib.contextmanager
def serving(*nodes: FakeNode) -> Iterator[list[FakeNode]]:
    """Serve each fake node on its own loopback port from a thread; stop them all after."""
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []
    try:
        for node in nodes:
            port = free_port()
            app = node.app()
            config = uvicorn.Config(app, port=port, log_level="warning", lifespan="off")
            server = uvicorn.Server(config)
            thread = threading.Thread(target=server.run, daemon=True)
            thread.start()
            servers.append((server, thread))
            wait_until(lambda s=server: s.started, timeout=10, what="a fake node to listen")
            node.url = f"http://127.0.0.1:{port}"
        yield list(nodes)
    finally:
        for server, _ in servers:
            server.should_exit = True
        for _, thread in servers:
            thread.join(10)


def router_for(tmp_path: Path, urls: list[str], api_key: str | None = None) -> TestClient:
    # A long poll interval: each test sees exactly the lifespan's first poll.
    config = RouterConfig(poll_interval_s=600)
    ledger = SpendLedger(tmp_path / "spend.json", None)
    router = Router(config, [StaticNodes.from_urls(urls)], new_client(), ledger)
    return TestClient(create_app(router, api_key=api_key), raise_server_exceptions=False)


@contextlib.contextmanager
def routed(
    tmp_path: Path, *nodes: FakeNode, dead: tuple[str, ...] = (), api_key: str | None = None
) -> Iterator[TestClient]:
    """A router in front of `nodes` (served for the duration) and of `dead` URLs."""
    with serving(*nodes):
        urls = [n.url for n in nodes] + list(dead)
        with router_for(tmp_path, urls, api_key) as client:
            yield client


def test_a_request_goes_to_the_idle_node_with_the_clients_body_unchanged(tmp_path: Path) -> None:
    busy, idle = FakeNode(running=2, queued=5), FakeNode()
    raw = b'{"model": "tiny-test-model",  "messages": [{"role": "user", "content": "x"}]}'
    with routed(tmp_path, busy, idle) as client:
        answer = client.post("/v1/chat/completions", content=raw, headers=JSON)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == f"hi from {idle.name}"
    assert answer.headers[ROUTE_HEADER].startswith(f"{idle.name};reason=")
    assert busy.seen == [] and len(idle.seen) == 1
    assert idle.seen[0]["raw"] == raw  # byte for byte, odd spacing included
    assert idle.seen[0]["headers"][ROUTED_HEADER] == "1"


def test_a_failing_node_is_failed_over_then_cooled_down(tmp_path: Path) -> None:
    broken, spare = FakeNode(answer=500), FakeNode(running=1, queued=1)
    with routed(tmp_path, broken, spare) as client:
        first = client.post("/v1/chat/completions", json=CHAT)
        second = client.post("/v1/chat/completions", json=CHAT)
        metrics = client.get("/metrics").text
    assert first.status_code == 200, first.text
    assert first.headers[ROUTE_HEADER].startswith(spare.name)
    assert f"failover={broken.name}:http-500" in first.headers[ROUTE_HEADER]
    # The broken node is cooling down: the next request goes straight to the spare.
    assert second.status_code == 200 and "failover" not in second.headers[ROUTE_HEADER]
    assert len(broken.seen) == 1 and len(spare.seen) == 2
    assert f'edgebox_router_failovers_total{{target="{broken.name}"}} 1.0' in metrics


def test_a_nodes_client_error_comes_back_unchanged_and_is_not_retried(tmp_path: Path) -> None:
    picky, other = FakeNode(answer=400), FakeNode(running=2, queued=3)
    with routed(tmp_path, picky, other) as client:
        answer = client.post("/v1/chat/completions", json=CHAT)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "fake_400"
    assert len(picky.seen) == 1 and other.seen == []


def test_when_every_node_fails_the_last_answer_is_returned(tmp_path: Path) -> None:
    nodes = [FakeNode(answer=500), FakeNode(answer=503)]
    with routed(tmp_path, *nodes) as client:
        answer = client.post("/v1/chat/completions", json=CHAT)
    assert answer.status_code in (500, 503)
    assert answer.json()["error"]["code"] in ("fake_500", "fake_503")
    assert all(len(n.seen) == 1 for n in nodes)
    assert "failover=" in answer.headers[ROUTE_HEADER]


def test_nodes_gone_after_the_poll_give_502_naming_each_failure(tmp_path: Path) -> None:
    with serving(FakeNode(), FakeNode()) as nodes:
        client = router_for(tmp_path, [n.url for n in nodes])
        client.__enter__()  # polled while both were up
    try:
        answer = client.post("/v1/chat/completions", json=CHAT)
    finally:
        client.__exit__(None, None, None)
    assert answer.status_code == 502
    error = answer.json()["error"]
    assert error["code"] == "upstream_failed" and error["type"] == "server_error"
    assert all(n.name in error["message"] for n in nodes)


def test_unhealthy_and_unreachable_nodes_get_nothing_and_503_says_why(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    loading = FakeNode(status="loading")
    with routed(tmp_path, loading, dead=(dead,)) as client:
        health = client.get("/health").json()
        answer = client.post("/v1/chat/completions", json=CHAT)
    assert health["status"] == "degraded"
    healthy = {name: n["healthy"] for name, n in health["nodes"].items()}
    assert healthy == {loading.name: False, dead.removeprefix("http://"): False}
    assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
    error = answer.json()["error"]
    assert error["code"] == "no_node_available" and "unhealthy" in error["message"]
    assert loading.seen == []


def test_bad_requests_get_400s_naming_the_field_before_any_node_is_asked(tmp_path: Path) -> None:
    node = FakeNode()
    with routed(tmp_path, node) as client:

        def error(body: bytes) -> tuple[int, str | None, str]:
            answer = client.post("/v1/chat/completions", content=body, headers=JSON)
            shape = answer.json()["error"]
            return answer.status_code, shape["param"], shape["code"]

        assert error(b"{not json") == (400, None, "invalid_json")
        assert error(b"") == (400, None, "invalid_json")
        assert error(b"[1, 2]") == (400, "body", "invalid_value")
        assert error(b'{"messages": []}') == (400, "model", "missing_required_parameter")
        assert error(b'{"model": 7}') == (400, "model", "invalid_value")
        assert error(b'{"model": "no-such-model"}') == (404, "model", "model_not_found")
        listed = client.get("/v1/models").json()["data"]
        one = client.get(f"/v1/models/{MODEL}")
        missing = client.get("/v1/models/no-such-model")
    assert node.seen == []
    assert [m["id"] for m in listed] == [MODEL] and listed[0]["meta"]["nodes"] == [node.name]
    assert one.status_code == 200 and one.json()["id"] == MODEL
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"


def test_a_router_key_is_required_and_never_passed_on(tmp_path: Path) -> None:
    key = "sk-router-inprocess-test-31337"
    node = FakeNode()
    with routed(tmp_path, node, api_key=key) as client:
        refused = client.post("/v1/chat/completions", json=CHAT)
        bad = {"authorization": "Bearer sk-wrong"}
        wrong = client.post("/v1/chat/completions", json=CHAT, headers=bad)
        good = {"authorization": f"Bearer {key}"}
        allowed = client.post("/v1/chat/completions", json=CHAT, headers=good)
    assert refused.status_code == 401 and refused.json()["error"]["type"]
    assert wrong.status_code == 401 and key not in wrong.text
    assert allowed.status_code == 200, allowed.text
    assert len(node.seen) == 1
    assert "authorization" not in node.seen[0]["headers"]  # no fleet key configured
