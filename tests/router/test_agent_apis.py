"""The agent APIs across the fleet: a real `edgebox router` in front of two real nodes, driven
with the real `openai` and `anthropic` SDKs. The router translates `/v1/responses` and
`/v1/messages` to chat completions, keeps Responses conversations itself, keeps a
conversation on one node, replays it on the other when that node dies, passes a node's 400
through with its meaning, and serves both APIs from a cloud upstream that speaks only chat
completions. The tiny model is no agent: these judge protocol, not answers."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import httpx
import jsonschema
import openai
import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tests.conftest import NodeProcess, start_node
from tests.router.conftest import start_router
from tests.router.test_router_app import FakeNode, serving

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]

MODEL = "smollm2-135m"
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 24}},
    "required": ["city"],
}
RESPONSES_TOOL: dict[str, Any] = {"type": "function", "name": "get_weather", "parameters": CITY}
TOO_LONG = "word " * 1500  # beyond the nodes' 1,024-token context
# Two slots: a poll that still shows the last turn running leaves one free, so the
# conversation's node is not passed over as full (`plan.stick_to_conversation`).
NODE_ARGS = ("--ctx", "1024", "--threads", "1", "--parallel", "2")


@dataclass
class Fleet:
    nodes: dict[str, NodeProcess]  # by the name the router gives it (host:port)
    router: NodeProcess
    tmp: Path
    dead: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("agent-fleet")
    started: list[NodeProcess] = []
    router: NodeProcess | None = None
    try:
        with ThreadPoolExecutor(2) as pool:
            jobs = [pool.submit(start_node, tmp, *NODE_ARGS) for _ in "ab"]
            started = [job.result() for job in jobs]
        config = tmp / "router.toml"
        config.write_text("poll_interval_s = 0.3\n")
        urls = [arg for n in started for arg in ("--node", n.url)]
        router = start_router(tmp, *urls, "--config", str(config))
        yield Fleet({n.url.removeprefix("http://"): n for n in started}, router, tmp)
    finally:
        for proc in [*started, *([router] if router else [])]:
            proc.stop()


def oai(fleet: Fleet) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=fleet.router.base_url, api_key="unused", max_retries=0, timeout=120
    )


def claude(fleet: Fleet) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=fleet.router.url, api_key="unused", max_retries=0, timeout=120
    )


def served_by(headers: httpx.Headers) -> tuple[str, str]:
    """(node, reason) from the route header."""
    target, reason = headers["x-edgebox-route"].split(";")[:2]
    return target, reason.removeprefix("reason=")


def test_responses_through_the_router_are_stored_and_continued(fleet: Fleet) -> None:
    client = oai(fleet)
    first = client.responses.create(
        model=MODEL, input="Say hello.", max_output_tokens=8, temperature=0
    )
    assert first.status in ("completed", "incomplete") and first.output_text
    assert client.responses.retrieve(first.id).output_text == first.output_text
    second = client.responses.create(
        model=MODEL,
        input="Again.",
        previous_response_id=first.id,
        max_output_tokens=8,
        temperature=0,
    )
    assert second.previous_response_id == first.id
    items = client.responses.input_items.list(second.id, order="asc")
    texts = [json.dumps(item.model_dump()) for item in items.data]
    assert "Say hello." in texts[0] and "Again." in texts[-1]
    assert any(first.output_text in t for t in texts)  # the first answer is in the history
    client.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(second.id)


def test_a_streamed_response_sends_the_event_sequence_and_is_kept(fleet: Fleet) -> None:
    client = oai(fleet)
    with client.responses.stream(
        model=MODEL, input="Count to three.", max_output_tokens=8, temperature=0
    ) as stream:
        events = list(stream)
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert "response.output_text.delta" in kinds
    assert kinds[-1] in ("response.completed", "response.incomplete")  # 8 tokens: either
    final = events[-1].response  # type: ignore[union-attr]
    streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")  # type: ignore[union-attr]
    assert final.output_text == streamed
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert client.responses.retrieve(final.id).output_text == streamed


def test_a_tool_round_trip_through_the_router(fleet: Fleet) -> None:
    client = oai(fleet)
    call_turn = client.responses.create(
        model=MODEL,
        input="What is the weather in Oslo?",
        tools=[RESPONSES_TOOL],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=40,
        temperature=0,
    )
    (call,) = [item for item in call_turn.output if item.type == "function_call"]
    assert call.name == "get_weather"
    jsonschema.validate(json.loads(call.arguments), CITY)
    answer = client.responses.create(
        model=MODEL,
        previous_response_id=call_turn.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny."}],
        tools=[RESPONSES_TOOL],  # type: ignore[list-item]
        max_output_tokens=8,
        temperature=0,
    )
    assert answer.status in ("completed", "incomplete")
    assert [item.type for item in answer.output][:1] in (["message"], ["function_call"])


def test_messages_through_the_router_with_tools_and_streaming(fleet: Fleet) -> None:
    client = claude(fleet)
    tool = {"name": "get_weather", "description": "Weather now", "input_schema": CITY}
    message = client.messages.create(
        model=MODEL,
        max_tokens=96,  # a forced call takes ~31 tokens greedy; sampled arguments run longer
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[tool],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "get_weather"},
        extra_body={"temperature": 0},
    )
    assert message.stop_reason == "tool_use"
    (use,) = [block for block in message.content if block.type == "tool_use"]
    jsonschema.validate(use.input, CITY)
    with client.messages.stream(
        model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "Say hi."}]
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_delta" in kinds and final.stop_reason in ("end_turn", "max_tokens")
    counted = client.messages.count_tokens(
        model=MODEL, messages=[{"role": "user", "content": "Say hi."}]
    )
    assert counted.input_tokens > 0
    assert httpx.head(fleet.router.url + "/", timeout=5).status_code == 200


def test_a_prompt_beyond_every_context_is_the_nodes_400_through_the_router(fleet: Fleet) -> None:
    asked = [{"role": "user", "content": TOO_LONG}]
    started = time.monotonic()
    with pytest.raises(openai.BadRequestError) as chat:
        oai(fleet).chat.completions.create(model=MODEL, messages=asked, max_tokens=4)  # type: ignore[arg-type]
    assert chat.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as responses:
        oai(fleet).responses.create(model=MODEL, input=TOO_LONG, max_output_tokens=4)
    assert responses.value.code == "context_length_exceeded"
    with pytest.raises(anthropic.BadRequestError) as messages:
        claude(fleet).messages.create(model=MODEL, max_tokens=4, messages=asked)  # type: ignore[arg-type]
    assert "prompt is too long" in messages.value.message
    assert messages.value.body["type"] == "error"  # type: ignore[index]
    assert time.monotonic() - started < 60  # refused at once, never retried


class ChatOnlyCloud(FakeNode):
    """A cloud upstream that speaks only chat completions (404 to anything else): it calls the
    first tool it is offered, else answers in text."""

    def app(self) -> Starlette:
        async def chat(request: Request) -> Response:
            body = await request.json()
            self.seen.append({"path": request.url.path, "body": body})
            tools = body.get("tools") or []
            message: dict[str, Any] = {"role": "assistant", "content": "From the cloud."}
            finish = "stop"
            if tools:
                call = {"name": tools[0]["function"]["name"], "arguments": '{"city": "Oslo"}'}
                message = {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": "call_cloud1", "type": "function", "function": call}],
                }
                finish = "tool_calls"
            choice = {"index": 0, "message": message, "finish_reason": finish}
            usage = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
            return JSONResponse(
                {
                    "id": "chatcmpl-cloud",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [choice],
                    "usage": usage,
                }
            )

        async def other(request: Request) -> Response:
            self.seen.append({"path": request.url.path, "body": None})
            return PlainTextResponse("not found", status_code=404)

        routes = [
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/{rest:path}", other, methods=["GET", "POST"]),
        ]
        return Starlette(routes=routes)


def test_a_chat_only_cloud_serves_responses_and_messages_with_tools(tmp_path: Path) -> None:
    with serving(ChatOnlyCloud()) as (cloud,):
        config = tmp_path / "router.toml"
        config.write_text(
            f'[[cloud]]\nname = "chatonly"\nbase_url = "{cloud.url}/v1"\n'
            'models = { "gpt-agent" = "upstream-model" }\n'
        )
        router = start_router(tmp_path, "--config", str(config))
        try:
            fleet = Fleet({}, router, tmp_path)
            raw = oai(fleet).responses.with_raw_response.create(
                model="gpt-agent",
                input="Weather in Oslo?",
                tools=[RESPONSES_TOOL],  # type: ignore[list-item]
            )
            assert served_by(raw.headers)[0] == "cloud:chatonly"
            (call,) = [i for i in raw.parse().output if i.type == "function_call"]
            assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Oslo"}
            tool = {"name": "get_weather", "input_schema": CITY}
            message = claude(fleet).messages.create(
                model="gpt-agent",
                max_tokens=20,
                tools=[tool],  # type: ignore[list-item]
                messages=[{"role": "user", "content": "Weather in Oslo?"}],
            )
            assert message.stop_reason == "tool_use"
            assert [b.input for b in message.content if b.type == "tool_use"] == [{"city": "Oslo"}]
        finally:
            router.stop()
    assert {s["path"] for s in cloud.seen} == {"/v1/chat/completions"}
    assert all(s["body"]["model"] == "upstream-model" for s in cloud.seen)
    assert cloud.seen[0]["body"]["tools"][0]["function"]["name"] == "get_weather"


def test_an_agents_sdk_agent_with_the_responses_model_calls_its_tool_through_the_router(
    fleet: Fleet,
) -> None:
    set_tracing_disabled(True)  # the SDK would otherwise export traces to OpenAI
    cities: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        cities.append(city)
        return f"sunny in {city}"

    client = openai.AsyncOpenAI(base_url=fleet.router.base_url, api_key="unused", max_retries=0)
    agent = Agent(
        name="weather",
        instructions="You answer questions about the weather with the get_weather tool.",
        model=OpenAIResponsesModel(model=MODEL, openai_client=client),
        tools=[get_weather],
        model_settings=ModelSettings(tool_choice="required", temperature=0, max_tokens=60),
        tool_use_behavior="stop_on_first_tool",
    )
    result = Runner.run_sync(agent, "What is the weather in Oslo?", max_turns=2)
    assert len(cities) == 1 and cities[0]
    assert result.final_output == f"sunny in {cities[0]}"


def test_a_conversation_stays_on_its_node_and_survives_losing_it(fleet: Fleet) -> None:
    client = oai(fleet).responses.with_raw_response
    asked = dict(model=MODEL, max_output_tokens=6, temperature=0)
    raw = client.create(input="Turn one.", **asked)  # type: ignore[arg-type]
    holder, _ = served_by(raw.headers)
    previous = raw.parse().id
    for turn in ("Turn two.", "Turn three."):
        raw = client.create(input=turn, previous_response_id=previous, **asked)  # type: ignore[arg-type]
        assert served_by(raw.headers) == (holder, "affinity:conversation")
        previous = raw.parse().id
    chat = oai(fleet).chat.completions.with_raw_response
    keyed = dict(model=MODEL, max_tokens=4, prompt_cache_key="session-7")
    first = chat.create(messages=[{"role": "user", "content": "One."}], **keyed)  # type: ignore[arg-type]
    again = chat.create(messages=[{"role": "user", "content": "Two."}], **keyed)  # type: ignore[arg-type]
    assert served_by(again.headers) == (served_by(first.headers)[0], "affinity:conversation")

    dying = fleet.nodes[holder].proc
    dying.kill()  # the node holding the conversation dies, unannounced (SIGKILL)
    dying.wait(10)
    fleet.dead.append(holder)
    raw = client.create(input="Turn four.", previous_response_id=previous, **asked)  # type: ignore[arg-type]
    other, _ = served_by(raw.headers)
    assert other != holder and raw.parse().status in ("completed", "incomplete")
    raw = client.create(input="Turn five.", previous_response_id=raw.parse().id, **asked)  # type: ignore[arg-type]
    assert served_by(raw.headers) == (other, "affinity:conversation")
