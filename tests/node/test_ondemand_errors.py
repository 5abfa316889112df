"""Load on demand's refusals, in process (no model is opened): a model bigger than the node's
budget is a 503 with both numbers; an unknown one a 404 listing what is served and on disk;
an embedding model asked for chat a 400 without loading it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from edgebox.node.app import create_app
from edgebox.node.catalog import Available, ModelCatalog
from edgebox.node.state import NodeState


def catalog() -> ModelCatalog:
    return ModelCatalog(
        sources=(
            lambda: [
                Available("gemma3-270m", "gemma3-270m", "chat", "bundled"),
                Available("all-minilm-l6-v2", "all-minilm-l6-v2", "embeddings", "bundled"),
            ],
        )
    )


@pytest.fixture
def client() -> Iterator[TestClient]:
    state = NodeState({}, memory_budget=50 * 10**6, catalog=catalog())
    with TestClient(create_app(state), base_url="http://node") as c:
        yield c


def test_a_model_over_the_budget_is_refused_with_the_numbers(client: TestClient) -> None:
    r = client.post("/v1/completions", json={"model": "gemma3-270m", "prompt": "x"})
    assert r.status_code == 503, r.text
    error = r.json()["error"]
    assert error["code"] == "model_too_large" and error["param"] == "model"
    assert "50 MB" in error["message"] and "2" in error["message"].split("needs about")[1]
    assert client.get("/health").json()["models"] == {}


def test_an_unknown_model_is_a_404_listing_what_is_on_disk(client: TestClient) -> None:
    r = client.post(
        "/v1/chat/completions",
        json={"model": "nope", "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.status_code == 404
    assert "gemma3-270m" in r.json()["error"]["message"]


def test_an_embedding_model_for_chat_is_a_400_without_a_load(client: TestClient) -> None:
    r = client.post("/v1/completions", json={"model": "all-minilm-l6-v2", "prompt": "x"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_supported"
    assert client.get("/health").json()["model_events"] == []


def test_v1_models_lists_what_is_on_disk_as_available(client: TestClient) -> None:
    cards = client.get("/v1/models").json()["data"]
    assert {c["id"]: c["status"] for c in cards} == {
        "gemma3-270m": "available",
        "all-minilm-l6-v2": "available",
    }
    assert client.get("/v1/models/gemma3-270m").json()["status"] == "available"
    assert client.get("/v1/models/nope").status_code == 404
