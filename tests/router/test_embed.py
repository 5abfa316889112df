"""`edgebox serve --fleet`: the router on the node's own port, with a real peer node; requests
the router forwards are marked so they never bounce between nodes."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import NodeProcess, start_node

MODEL = "smollm2-135m"


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    tmp = tmp_path_factory.mktemp("fleet-serve")
    peer = start_node(tmp, "--parallel", "1", "--ctx", "512", "--threads", "1", "--no-mdns")
    try:
        front = start_node(
            tmp, "--parallel", "1", "--ctx", "512", "--threads", "1", "--no-mdns",
            "--fleet", "--fleet-node", peer.url,
        )  # fmt: skip
    except Exception:
        peer.stop()
        raise
    yield front, peer
    front.stop()
    peer.stop()


def chat(url: str, content: str, max_tokens: int, **headers: str) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens, "temperature": 0}  # fmt: skip
    return httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=120)


def test_the_node_port_routes_across_the_fleet(pair: tuple[NodeProcess, NodeProcess]) -> None:
    front, peer = pair
    front_name = "local"
    peer_name = peer.url.removeprefix("http://")
    targets: list[str] = []

    def one(i: int) -> None:
        response = chat(front.url, f"Request {i}: count to twenty.", 24)
        assert response.status_code == 200
        targets.append(response.headers["x-edgebox-route"].split(";")[0])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(targets) == sorted([front_name, peer_name])  # one slot each: both used
    # A request the router forwarded is served here, not routed again.
    direct = chat(front.url, "Say hi.", 4, **{"x-edgebox-routed": "1"})
    assert direct.status_code == 200 and "x-edgebox-route" not in direct.headers
    # The node's other routes are its own.
    health = httpx.get(front.url + "/health", timeout=5).json()
    assert health["status"] == "ok" and MODEL in health["models"]
