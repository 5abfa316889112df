"""The node's validation paths in process: every bad request of test_bad_input.py against the
node's app with the bundled SmolLM2-135M loaded once in this process (about a second), no
`edgebox serve` subprocess. test_bad_input.py runs the same cases against a real node process;
this copy is the fast tier's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from edgebox.node.app import create_app
from edgebox.node.state import NodeState
from edgebox.runtimes.llamacpp import EngineConfig, LlamaCppRuntime
from tests.node.test_bad_input import CASES, CHAT, GOOD_CHAT, MODEL


@pytest.fixture(scope="module")
def client(smollm2_path: Path) -> Iterator[TestClient]:
    """The node's app over a real model, as `edgebox serve --parallel 4 --ctx 2048` builds it
    (one thread: nothing here needs speed, and one thread never waits on a busy second core)."""
    runtime = LlamaCppRuntime(
        smollm2_path, name=MODEL, config=EngineConfig(n_ctx=2048, parallel=4, n_threads=1)
    )
    try:
        with TestClient(create_app(NodeState({MODEL: runtime})), base_url="http://node") as c:
            yield c
    finally:
        runtime.close()


@pytest.mark.parametrize(
    ("route", "body", "status", "param", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_request_is_refused_clearly(
    client: TestClient, route: str, body: Any, status: int, param: str | None, code: str | None
) -> None:
    if isinstance(body, bytes):
        response = client.post(
            "/v1" + route, content=body, headers={"content-type": "application/json"}
        )
    else:
        response = client.post("/v1" + route, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and error["param"] == param and error["code"] == code
    assert error["type"] == "invalid_request_error"


def test_the_node_answers_after_every_bad_request(client: TestClient) -> None:
    # The module's node has refused every case above (tests run in file order); it still serves.
    answer = client.post("/v1" + CHAT, json={**GOOD_CHAT, "temperature": 0})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["choices"][0]["message"]["content"]
    assert body["usage"]["completion_tokens"] == 2 and body["usage"]["prompt_tokens"] > 0


def test_a_stream_is_server_sent_events_ending_in_done(client: TestClient) -> None:
    with client.stream("POST", "/v1" + CHAT, json={**GOOD_CHAT, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and len(events) >= 3


def test_oversized_body_gets_413(client: TestClient) -> None:
    huge = b'{"model": "x", "prompt": "' + b"a" * (17 * 1024 * 1024) + b'"}'
    response = client.post("/v1/completions", content=huge)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    # the unread rest of the body makes the connection unusable; a client must not reuse it
    assert response.headers["connection"] == "close"


def test_unknown_route_and_method_are_openai_shaped(client: TestClient) -> None:
    missing = client.get("/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = client.get("/v1" + CHAT)
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"


def test_health_and_models_list_the_loaded_model(client: TestClient) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["models"][MODEL]["slots"] == 4
    cards = client.get("/v1/models").json()["data"]
    assert [m["id"] for m in cards if m["status"] == "loaded"] == [MODEL]
    assert all(m["status"] == "available" for m in cards[1:])  # on disk, loaded on request
