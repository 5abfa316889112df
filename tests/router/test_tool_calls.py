"""Tool calling through a real router in front of a real node: the router relays tools,
tool calls (streamed and not) and the node's 400s unchanged."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest

from tests.conftest import NodeProcess
from tests.router.conftest import start_router

MODEL = "smollm2-135m"
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 40}},
    "required": ["city"],
}
TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {"name": "get_weather", "parameters": CITY}}
]
ASK = [{"role": "user", "content": "Is it raining in Oslo?"}]


@pytest.fixture(scope="module")
def router(node: NodeProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    tmp: Path = tmp_path_factory.mktemp("tool-router")
    proc = start_router(tmp, "--node", node.url)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(router: NodeProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.base_url, api_key="unused", max_retries=0, timeout=180)


def test_tool_calls_come_through_the_router(client: openai.OpenAI) -> None:
    request: dict[str, Any] = dict(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0,
        max_tokens=40,
    )
    reply = client.chat.completions.create(**request)
    assert reply.choices[0].finish_reason == "tool_calls"
    (call,) = reply.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), CITY)

    chunks = list(client.chat.completions.create(**request, stream=True))
    parts = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert parts[0].id and parts[0].function and parts[0].function.name == "get_weather"
    arguments = "".join(p.function.arguments or "" for p in parts if p.function)
    assert arguments == call.function.arguments


def test_the_nodes_400_keeps_its_field_through_the_router(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL,
            messages=ASK,  # type: ignore[arg-type]
            tools=[{"type": "web_search"}],  # type: ignore[list-item]
        )
    assert caught.value.body["param"] == "tools[0].type"  # type: ignore[index]
