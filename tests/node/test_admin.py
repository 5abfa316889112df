"""Drain and undrain on a real node with an API key: the key guards them, a drained node
refuses new generations with 503 + Retry-After and says so in /health."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.conftest import NodeProcess, start_node

KEY = "sk-edgebox-admin-test-5678"


@pytest.fixture(scope="module")
def keyed_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    node = start_node(
        tmp_path_factory.mktemp("admin"), "--ctx", "512", env={"EDGEBOX_API_KEY": KEY}
    )
    yield node
    node.stop()


def ask(node: NodeProcess) -> str | None:
    client = openai.OpenAI(base_url=node.base_url, api_key=KEY, max_retries=0)
    out = client.completions.create(model="smollm2-135m", prompt="Hi", max_tokens=2)
    return out.choices[0].text


def test_drain_needs_the_key_and_refuses_new_requests(keyed_node: NodeProcess) -> None:
    no_key = httpx.post(keyed_node.url + "/admin/drain")
    assert no_key.status_code == 401 and KEY not in no_key.text
    assert httpx.get(keyed_node.url + "/health").json()["status"] == "ok"

    auth = {"Authorization": f"Bearer {KEY}"}
    drained = httpx.post(keyed_node.url + "/admin/drain", headers=auth)
    assert drained.status_code == 200 and drained.json()["status"] == "draining"
    assert httpx.get(keyed_node.url + "/health").json()["status"] == "draining"
    with pytest.raises(openai.InternalServerError) as excinfo:
        ask(keyed_node)
    assert excinfo.value.status_code == 503
    assert excinfo.value.response.headers["retry-after"] == "30"
    assert excinfo.value.body["code"] == "node_draining"  # type: ignore[index]
    embed = httpx.post(
        keyed_node.url + "/v1/embeddings",
        headers=auth,
        json={"model": "all-minilm-l6-v2", "input": "hi"},
    )
    assert embed.status_code == 503 and embed.json()["error"]["code"] == "node_draining"

    undrained = httpx.post(keyed_node.url + "/admin/undrain", headers=auth)
    assert undrained.status_code == 200 and undrained.json()["status"] == "ok"
    assert httpx.get(keyed_node.url + "/health").json()["status"] == "ok"
    assert ask(keyed_node) is not None


def test_health_reports_each_models_size(keyed_node: NodeProcess) -> None:
    models = httpx.get(keyed_node.url + "/health").json()["models"]
    assert models["smollm2-135m"]["size_bytes"] > 50_000_000
