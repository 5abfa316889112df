"""/v1/responses on a real node (the bundled SmolLM2) driven by the real openai SDK: text,
streaming, tool round trips, stored conversations, ownership between keys, restarts and
retention. The tiny model is no agent: these tests judge protocol."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.conftest import NodeProcess, start_node

MODEL = "smollm2-135m"
KEY_A, KEY_B = "responses-key-a", "responses-key-b"
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 40}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS: list[dict[str, Any]] = [
    {"type": "web_search"},
    {"type": "namespace", "name": "multi_agent", "description": "agents", "tools": []},
    {"type": "local_shell"},
    {"type": "custom", "name": "apply_patch", "description": "patch", "format": {"type": "text"}},
    {
        "type": "function",
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": WEATHER,
        "strict": True,
    },
]


def node_env(home: Path) -> dict[str, str]:
    return {"EDGEBOX_HOME": str(home)}


@pytest.fixture(scope="module")
def keyed_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """A node with two inference keys (its API key and its fleet key), its own data dir."""
    home = tmp_path_factory.mktemp("responses-home")
    args = ("--ctx", "2048", "--parallel", "2", "--api-key", KEY_A, "--fleet-key", KEY_B)
    proc = start_node(home, *args, "--no-mdns", env=node_env(home))
    yield proc
    assert proc.stop() == 0, proc.log.read_text()


def sdk(node: NodeProcess, key: str = KEY_A) -> openai.OpenAI:
    return openai.OpenAI(base_url=node.base_url, api_key=key, max_retries=0, timeout=180)


@pytest.fixture(scope="module")
def client(keyed_node: NodeProcess) -> openai.OpenAI:
    return sdk(keyed_node)


def test_a_text_response_is_stored_retrieved_listed_and_deleted(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL,
        instructions="Answer briefly.",
        input="Name a colour.",
        max_output_tokens=12,
        temperature=0,
        metadata={"case": "text"},
    )
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status in ("completed", "incomplete") and response.output_text.strip()
    assert response.usage is not None and response.usage.input_tokens > 5
    assert response.usage.output_tokens <= 12 and response.metadata == {"case": "text"}
    again = client.responses.retrieve(response.id)
    assert again.output_text == response.output_text and again.usage == response.usage
    items = client.responses.input_items.list(response.id)
    assert [(i.type, getattr(i, "role", None)) for i in items.data] == [("message", "user")]
    assert items.first_id == items.last_id == items.data[0].id and not items.has_more
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_streamed_events_come_in_order_with_sequence_numbers(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(
            model=MODEL, input="Say hello.", max_output_tokens=10, temperature=0, stream=True
        )
    )
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert "response.output_text.delta" in kinds
    tail = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert kinds[-4:-1] == tail and kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text == text and final.usage is not None
    assert client.responses.retrieve(final.id).output_text == text  # stored before completed


def test_the_stream_helper_gives_the_final_response(client: openai.OpenAI) -> None:
    """`responses.stream` needs response.completed: a forced call ends before any limit."""
    with client.responses.stream(
        model=MODEL,
        input="Weather in Oslo?",
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_output_tokens=60,
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "response.function_call_arguments.delta"]
        final = stream.get_final_response()
    [call] = final.output
    assert call.type == "function_call" and call.arguments == "".join(deltas)


def test_a_function_tool_round_trip_with_hosted_tools_accepted(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model=MODEL,
        input="What is the weather in Oslo?",
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_output_tokens=60,
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER)
    answer = client.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny"}],
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="none",
        max_output_tokens=20,
        temperature=0,
    )
    assert answer.previous_response_id == first.id and answer.output_text.strip()
    kinds = [i.type for i in client.responses.input_items.list(answer.id, order="asc").data]
    assert kinds == ["message", "function_call", "function_call_output"]


def test_streamed_function_calls_come_as_function_call_events(client: openai.OpenAI) -> None:
    stream = client.responses.create(
        model=MODEL,
        input="Weather in Rome?",
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "function", "name": "get_weather"},
        temperature=0,
        max_output_tokens=60,
        stream=True,
    )
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[2] == "response.output_item.added"
    assert "response.function_call_arguments.delta" in kinds
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    jsonschema.validate(json.loads(done.arguments), WEATHER)
    final = events[-1].response  # type: ignore[union-attr]
    assert [i.type for i in final.output] == ["function_call"]


def test_a_continued_conversation_computes_only_its_new_tokens(client: openai.OpenAI) -> None:
    """The prefix cache serves turn 1's tokens to turn 2 (rebuilt from the store), and the
    same holds when the client resends the whole conversation with store false (Codex)."""
    long_rules = "Rules: " + " ".join(f"rule {i} is to be kind." for i in range(60))
    first = client.responses.create(
        model=MODEL, instructions=long_rules, input="Hi!", max_output_tokens=8, temperature=0
    )
    second = client.responses.create(
        model=MODEL,
        instructions=long_rules,
        previous_response_id=first.id,
        input="And again?",
        max_output_tokens=8,
        temperature=0,
    )
    assert first.usage is not None and second.usage is not None
    cached = second.usage.input_tokens_details.cached_tokens
    assert cached >= first.usage.input_tokens - 1, (cached, first.usage)
    new = second.usage.input_tokens - cached
    assert new <= first.usage.output_tokens + 16, (new, second.usage)
    replay = [
        {"role": "user", "content": "Hi!"},
        *[i.model_dump(exclude_none=True) for i in first.output],
        {"role": "user", "content": "And once more?"},
    ]
    third = client.responses.create(
        model=MODEL,
        instructions=long_rules,
        input=replay,  # type: ignore[arg-type]
        store=False,
        prompt_cache_key="conversation-1",
        max_output_tokens=8,
        temperature=0,
    )
    assert third.usage is not None
    assert third.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens - 1
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(third.id)  # store false: nothing kept


def test_one_key_cannot_see_another_keys_responses(keyed_node: NodeProcess) -> None:
    mine = sdk(keyed_node, KEY_A).responses.create(model=MODEL, input="x", max_output_tokens=4)
    other = sdk(keyed_node, KEY_B)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(mine.id)
    with pytest.raises(openai.NotFoundError) as caught:
        other.responses.create(model=MODEL, input="y", previous_response_id=mine.id)
    assert caught.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert sdk(keyed_node, KEY_A).responses.retrieve(mine.id).id == mine.id


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {"input": [{"role": "user", "content": [{"type": "input_image"}]}]},
            "input[0].content[0].type",
        ),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
        ({"input": [{"type": "nonsense"}]}, "input[0]"),
        ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
        (
            {"input": "x", "tools": TOOLS, "tool_choice": {"type": "function", "name": "nope"}},
            "tool_choice.name",
        ),
        ({"input": "x", "temperature": 9}, "temperature"),
        ({"input": "x", "max_output_tokens": 999999}, "max_output_tokens"),
        ({"input": "x", "previous_response_id": "resp_unknown"}, "previous_response_id"),
        ({"input": "x" * 300_000}, "input"),
    ],
)
def test_bad_input_is_refused_naming_the_field(
    keyed_node: NodeProcess, body: dict[str, Any], param: str
) -> None:
    reply = httpx.post(
        keyed_node.base_url + "/responses",
        json={"model": MODEL, **body},
        headers={"Authorization": f"Bearer {KEY_A}"},
        timeout=60,
    )
    assert reply.status_code in (400, 404), reply.text
    error = reply.json()["error"]
    assert error["param"] == param and error["message"], error


def test_stored_responses_survive_a_restart_and_only_the_newest_are_kept(
    tmp_path: Path,
) -> None:
    db = tmp_path / "responses.sqlite"
    args = ("--ctx", "1024", "--parallel", "1", "--no-mdns", "--responses-db", str(db))
    node = start_node(tmp_path, *args, "--responses-keep", "2", env=node_env(tmp_path))
    try:
        ids = [
            sdk(node).responses.create(model=MODEL, input=f"n{i}", max_output_tokens=2).id
            for i in range(3)
        ]
    finally:
        assert node.stop() == 0
    node = start_node(tmp_path, *args, "--responses-keep", "2", env=node_env(tmp_path))
    try:
        client = sdk(node)
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(ids[0])  # beyond the newest two
        assert client.responses.retrieve(ids[2]).id == ids[2]
        follow = client.responses.create(
            model=MODEL, previous_response_id=ids[2], input="more", max_output_tokens=2
        )
        items = client.responses.input_items.list(follow.id, order="asc").data
        assert [getattr(i, "role", None) for i in items][:2] == ["user", "assistant"]
    finally:
        assert node.stop() == 0


def test_a_recorded_codex_request_passes_every_check_but_the_context(
    keyed_node: NodeProcess,
) -> None:
    """Codex CLI 0.169's first request, as recorded: its tools validate and compile to a
    grammar; only its ~6k tokens do not fit this node's 2k context (a 400 in OpenAI's shape)."""
    body = json.loads(
        (Path(__file__).parent.parent / "fixtures" / "codex_0.169_request.json").read_text()
    )
    reply = httpx.post(
        keyed_node.base_url + "/responses",
        json={**body, "model": MODEL},
        headers={"Authorization": f"Bearer {KEY_A}"},
        timeout=120,
    )
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["code"], error["param"]) == ("context_length_exceeded", "input"), error
