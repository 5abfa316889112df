"""The Anthropic Messages API on a real node (the bundled SmolLM2), driven by the real
`anthropic` SDK: text, system blocks, streaming, tool use round trips whose inputs validate
against their schemas, stop reasons, count_tokens and errors in Anthropic's shape. The tiny
model is no agent: these tests judge protocol."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import jsonschema
import pytest

from tests.conftest import NodeProcess, start_node

MODEL = "smollm2-135m"
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
}
TOOLS: list[Any] = [
    {
        "name": "get_weather",
        "description": "The weather forecast for a city",
        "input_schema": WEATHER,
    },
    {
        "type": "web_search_20250305",
        "name": "web_search",
        "max_uses": 1,
    },  # a server tool: not offered
]
ASK: list[Any] = [
    {"role": "user", "content": "What will the weather be in Paris for the next 3 days?"}
]
KEY = "anthropic-test-key"


@pytest.fixture(scope="module")
def client(node: NodeProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=node.url, api_key="unused", max_retries=0, timeout=180)


def test_text_with_system_blocks(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model=MODEL,
        max_tokens=24,
        system=[
            {
                "type": "text",
                "text": "You are a terse assistant.",
                "cache_control": {"type": "ephemeral"},
            },
            {"type": "text", "text": "Answer in English."},
        ],
        messages=[{"role": "user", "content": "Say hello."}],
        extra_body={"temperature": 0},
        metadata={"user_id": "tester"},
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_") and message.model == MODEL
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text  # type: ignore[union-attr]
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0) > 10
    assert 0 < message.usage.output_tokens <= 24


def test_max_tokens_and_stop_sequence_stop_reasons(client: anthropic.Anthropic) -> None:
    ask: list[Any] = [{"role": "user", "content": "Write a long story about a dragon."}]
    cut = client.messages.create(
        model=MODEL, max_tokens=3, messages=ask, extra_body={"temperature": 0}
    )
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 3
    stopped = client.messages.create(
        model=MODEL,
        max_tokens=60,
        messages=ask,
        extra_body={"temperature": 0},
        stop_sequences=["e"],
    )
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == "e"
    text = "".join(b.text for b in stopped.content if b.type == "text")
    assert "e" not in text


def test_streaming_assembles_the_final_message(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model=MODEL,
        max_tokens=20,
        messages=[{"role": "user", "content": "Say hello."}],
        extra_body={"temperature": 0},
    ) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_message()
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert "content_block_start" in events and "content_block_stop" in events
    assert "message_delta" in events
    assert final.content[0].type == "text" and final.content[0].text
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert final.usage.output_tokens > 0


def assert_valid_call(message: anthropic.types.Message) -> anthropic.types.ToolUseBlock:
    assert message.stop_reason == "tool_use"
    calls = [b for b in message.content if b.type == "tool_use"]
    assert len(calls) == 1
    call = calls[0]
    assert call.id.startswith("toolu_") and call.name == "get_weather"
    jsonschema.validate(call.input, WEATHER)
    return call


def test_tool_use_round_trip(client: anthropic.Anthropic) -> None:
    first = client.messages.create(
        model=MODEL,
        max_tokens=120,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        extra_body={"temperature": 0},
    )
    call = assert_valid_call(first)
    history: list[Any] = [
        *ASK,
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 24 C."}],
        },
    ]
    second = client.messages.create(
        model=MODEL, max_tokens=40, messages=history, tools=TOOLS, tool_choice={"type": "none"}
    )
    assert second.stop_reason in ("end_turn", "max_tokens")
    assert [b.type for b in second.content] == ["text"]


def test_a_named_tool_streams_its_input(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model=MODEL,
        max_tokens=80,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        extra_body={"temperature": 0},
    ) as stream:
        deltas = [e.delta.type for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
    assert "input_json_delta" in deltas
    assert_valid_call(final)


def test_count_tokens_matches_what_a_message_is_billed(client: anthropic.Anthropic) -> None:
    system = "You are a terse assistant."
    counted = client.messages.count_tokens(model=MODEL, system=system, messages=ASK)
    message = client.messages.create(model=MODEL, max_tokens=2, system=system, messages=ASK)
    billed = message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0)
    assert counted.input_tokens == billed > 10
    with_tools = client.messages.count_tokens(model=MODEL, system=system, messages=ASK, tools=TOOLS)
    assert with_tools.input_tokens > counted.input_tokens  # the tools are in the prompt


def test_beta_query_and_headers_are_accepted(client: anthropic.Anthropic) -> None:
    message = client.beta.messages.create(
        model=MODEL,
        max_tokens=4,
        messages=[{"role": "user", "content": "Hi"}],
        betas=["interleaved-thinking-2025-05-14"],
        thinking={"type": "disabled"},
        context_management={"edits": []},
    )
    assert message.content and message.stop_reason in ("end_turn", "max_tokens")


def post(node: NodeProcess, body: Any, **headers: str) -> httpx.Response:
    return httpx.post(node.url + "/v1/messages?beta=true", json=body, headers=headers, timeout=60)


def assert_anthropic_error(response: httpx.Response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == kind, body
    return str(body["error"]["message"])


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"temperature": 3}, "temperature"),
        (
            {"messages": [{"role": "user", "content": [{"type": "video"}]}]},
            "messages[0].content[0]",
        ),
        ({"tools": [{"name": "f"}]}, "tools[0].input_schema"),
        ({"tool_choice": {"type": "tool", "name": "nope"}, "tools": TOOLS[:1]}, "tool_choice"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(
    node: NodeProcess, change: dict[str, Any], field: str
) -> None:
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 8, "messages": ASK, **change}
    body = {k: v for k, v in body.items() if v is not None}
    message = assert_anthropic_error(post(node, body), 400, "invalid_request_error")
    assert field in message


def test_image_input_is_refused(client: anthropic.Anthropic) -> None:
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
    }
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": [image]}]
        )
    error = caught.value.body["error"]  # type: ignore[index]
    assert error["type"] == "invalid_request_error"
    assert "image input is not supported by this model" in error["message"]
    assert "messages[0].content[0]" in error["message"]


def test_unknown_model_and_oversized_prompt(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="claude-nope", max_tokens=8, messages=ASK)
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as long:
        client.messages.create(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "word " * 3000}]
        )
    assert "prompt is too long" in long.value.body["error"]["message"]  # type: ignore[index]


def test_root_answers_probes(node: NodeProcess) -> None:
    assert httpx.head(node.url + "/", timeout=10).status_code == 200
    assert httpx.get(node.url + "/", timeout=10).status_code == 200


@pytest.fixture(scope="module")
def keyed_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = start_node(tmp_path_factory.mktemp("keyed"), "--ctx", "1024", "--api-key", KEY)
    yield proc
    assert proc.stop() == 0


def test_x_api_key_is_the_api_key(keyed_node: NodeProcess, tmp_path: Path) -> None:
    good = anthropic.Anthropic(base_url=keyed_node.url, api_key=KEY, max_retries=0, timeout=120)
    assert good.messages.create(model=MODEL, max_tokens=2, messages=ASK).content
    bearer = anthropic.Anthropic(
        base_url=keyed_node.url, auth_token=KEY, max_retries=0, timeout=120
    )
    assert bearer.messages.count_tokens(model=MODEL, messages=ASK).input_tokens > 0
    bad = anthropic.Anthropic(base_url=keyed_node.url, api_key="wrong", max_retries=0, timeout=30)
    with pytest.raises(anthropic.AuthenticationError) as refused:
        bad.messages.create(model=MODEL, max_tokens=2, messages=ASK)
    assert refused.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    assert KEY not in str(refused.value.body) and "wrong" not in str(refused.value.body)
    # the OpenAI routes keep their own shape, and take x-api-key too
    chat = httpx.post(
        keyed_node.url + "/v1/chat/completions",
        json={"model": MODEL, "max_tokens": 2, "messages": ASK},
        headers={"x-api-key": KEY},
        timeout=60,
    )
    assert chat.status_code == 200
    unauthorised = httpx.get(keyed_node.url + "/v1/models", timeout=10)
    assert (
        unauthorised.status_code == 401
        and unauthorised.json()["error"]["code"] == "invalid_api_key"
    )
