"""`edgebox serve --fleet`: the router on the node's own port, with a real peer node; requests
the router forwards are marked so they never bounce between nodes. With `--router-config`, the
node's /v1/models is the fleet's and the cloud's, and requests for models it does not serve
itself go to the peer or the cloud (the same real peer, named as a [[cloud]] upstream)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from tests.conftest import NodeProcess, start_node

MODEL = "smollm2-135m"


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    tmp = tmp_path_factory.mktemp("fleet-peer")
    node = start_node(tmp, "--parallel", "1", "--ctx", "512", "--threads", "1", "--no-mdns")
    yield node
    node.stop()


@pytest.fixture(scope="module")
def pair(
    peer: NodeProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    front = start_node(
        tmp_path_factory.mktemp("fleet-serve"),
        "--parallel",
        "1",
        "--ctx",
        "512",
        "--threads",
        "1",
        "--no-mdns",
        "--fleet",
        "--fleet-node",
        peer.url,
    )
    yield front, peer
    front.stop()


def chat(url: str, content: str, max_tokens: int, **headers: str) -> httpx.Response:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
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
    # The agent APIs go through the router too; stored responses are the router's.
    agent = OpenAI(base_url=front.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    made = agent.responses.with_raw_response.create(model=MODEL, input="Hi.", max_output_tokens=4)
    assert made.headers["x-edgebox-route"].split(";")[0] in (front_name, peer_name)
    assert agent.responses.retrieve(made.parse().id).id == made.parse().id
    # The node's other routes are its own.
    health = httpx.get(front.url + "/health", timeout=5).json()
    assert health["status"] == "ok" and MODEL in health["models"]


def configured_front(tmp: Path, peer: NodeProcess) -> NodeProcess:
    config = tmp / "router.toml"
    config.write_text(
        f"""
[[nodes]]
url = "{peer.url}"
name = "peer"

[[cloud]]
name = "testcloud"
base_url = "{peer.base_url}"
models = {{ "cloud-smol" = "{MODEL}" }}
"""
    )
    return start_node(
        tmp,
        "--model",
        MODEL,
        "--alias",
        "front-smol",
        "--parallel",
        "1",
        "--ctx",
        "512",
        "--threads",
        "1",
        "--no-mdns",
        "--fleet",
        "--router-config",
        str(config),
    )


def test_router_config_lists_fleet_and_cloud_models_and_routes_the_non_local_ones(
    peer: NodeProcess, tmp_path: Path
) -> None:
    front = configured_front(tmp_path, peer)
    try:
        client = OpenAI(base_url=front.base_url, api_key="unused", max_retries=0)
        listed = {m.id for m in client.models.list()}
        assert {"front-smol", MODEL, "cloud-smol"} <= listed  # local, the peer's, the cloud's
        assert client.models.retrieve("cloud-smol").owned_by == "cloud:testcloud"
        routes = {}
        for model in ("front-smol", MODEL, "cloud-smol"):
            raw = client.chat.completions.with_raw_response.create(
                model=model,
                messages=[{"role": "user", "content": "Say hi."}],
                max_tokens=4,
                temperature=0,
            )
            assert raw.parse().choices[0].message.content
            routes[model] = raw.headers["x-edgebox-route"].split(";")[0]
        assert routes == {"front-smol": "local", MODEL: "peer", "cloud-smol": "cloud:testcloud"}
        missing = httpx.post(
            front.base_url + "/chat/completions",
            timeout=30,
            json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"
    finally:
        front.stop()


def test_router_config_without_fleet_is_refused_before_loading_models(tmp_path: Path) -> None:
    config = tmp_path / "router.toml"
    config.write_text("[[cloud]]\nname = 'x'\n")
    with pytest.raises(RuntimeError, match="pass --fleet too"):
        start_node(tmp_path, "--router-config", str(config), startup_s=20)
    with pytest.raises(RuntimeError, match=r"cloud.0.base_url: Field required"):
        start_node(tmp_path, "--fleet", "--router-config", str(config), startup_s=20)
