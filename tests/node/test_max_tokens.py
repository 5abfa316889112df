"""`serve --max-tokens N` in process: the node's output cap for requests that set no limit of
their own, on chat completions, completions, /v1/responses and /v1/messages; a request's own
limit wins, above or below it. The bundled SmolLM2-135M, loaded once (about a second)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from edgebox.api.protocol import ChatCompletionRequest
from edgebox.node.app import create_app
from edgebox.node.prompts import generation_plan
from edgebox.node.state import NodeState
from edgebox.runtimes.llamacpp import EngineConfig, LlamaCppRuntime

MODEL = "smollm2-135m"
CAP = 5
STORY = "Write a long story about a dragon who learns to bake bread."
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": STORY}], "temperature": 0}


@pytest.fixture(scope="module")
def client(smollm2_path: Path) -> Iterator[TestClient]:
    """The node's app as `edgebox serve --max-tokens 5 --ctx 1024 --parallel 1` builds it."""
    runtime = LlamaCppRuntime(
        smollm2_path, name=MODEL, config=EngineConfig(n_ctx=1024, parallel=1, n_threads=1)
    )
    try:
        state = NodeState({MODEL: runtime}, max_tokens=CAP)
        with TestClient(create_app(state), base_url="http://node") as c:
            yield c
    finally:
        runtime.close()


def post(client: TestClient, route: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(route, json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def test_health_reports_the_cap(client: TestClient) -> None:
    assert client.get("/health").json()["max_tokens"] == CAP


def test_a_chat_without_a_limit_stops_at_the_cap(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.headers["x-edgebox-max-tokens"] == str(CAP)  # the router reads it
    body = response.json()
    assert body["usage"]["completion_tokens"] == CAP
    assert body["choices"][0]["finish_reason"] == "length"  # as llama-server's -n says it
    own = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 3})
    assert "x-edgebox-max-tokens" not in own.headers


def test_a_streamed_chat_without_a_limit_stops_at_the_cap(client: TestClient) -> None:
    stream = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/chat/completions", json=stream) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: {")]
    assert '"completion_tokens":5' in lines[-1].replace(" ", "")


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("limit", [3, 9])
def test_a_chat_limit_of_its_own_wins(client: TestClient, field: str, limit: int) -> None:
    body = post(client, "/v1/chat/completions", {**CHAT, field: limit})
    assert body["usage"]["completion_tokens"] == limit


def test_completions_with_no_limit_stop_at_the_cap(client: TestClient) -> None:
    prompt = {"model": MODEL, "prompt": "Once upon a time, a dragon", "temperature": 0}
    assert post(client, "/v1/completions", prompt)["usage"]["completion_tokens"] == 16  # OpenAI's
    unlimited = post(client, "/v1/completions", {**prompt, "max_tokens": None})
    assert unlimited["usage"]["completion_tokens"] == CAP


RESPONSE = {"model": MODEL, "input": STORY, "temperature": 0, "store": False}


def test_a_response_without_max_output_tokens_completes_at_the_cap(client: TestClient) -> None:
    """The node's cap is the length its operator chose: the response is complete (Codex
    takes an incomplete one for a failed turn); a limit the request set is `incomplete`."""
    capped = post(client, "/v1/responses", RESPONSE)
    assert capped["usage"]["output_tokens"] == CAP and capped["status"] == "completed"
    own = post(client, "/v1/responses", {**RESPONSE, "max_output_tokens": 9})
    assert own["usage"]["output_tokens"] == 9 and own["status"] == "incomplete"
    assert own["incomplete_details"] == {"reason": "max_output_tokens"}


def test_a_streamed_response_completes_at_the_cap(client: TestClient) -> None:
    with client.stream("POST", "/v1/responses", json={**RESPONSE, "stream": True}) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines() if line[:6] == "data: "]
    last = events[-1]
    assert last["type"] == "response.completed", last
    assert last["response"]["usage"]["output_tokens"] == CAP


def test_a_message_keeps_its_own_max_tokens(client: TestClient) -> None:
    """Anthropic's max_tokens is required, so a message always carries its own limit."""
    request = {"model": MODEL, "max_tokens": 9, "messages": [{"role": "user", "content": STORY}]}
    message = post(client, "/v1/messages", {**request, "temperature": 0})
    assert message["usage"]["output_tokens"] == 9 and message["stop_reason"] == "max_tokens"


@pytest.mark.parametrize(("asked", "used"), [(None, 0.2), (0.9, 0.9), (0.0, 0.0)])
def test_serve_temperature_is_the_default_a_request_overrides(
    asked: float | None, used: float
) -> None:
    """`serve --temperature` for requests that set none (Codex and Claude Code send none)."""
    fields = {} if asked is None else {"temperature": asked}
    body = ChatCompletionRequest.model_validate({**CHAT, "temperature": None, **fields})
    plan = generation_plan(body, [], arrived=0.0, timeout=None, default_temperature=0.2)
    assert plan.sampling[0].temperature == used
