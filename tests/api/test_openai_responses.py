"""The Responses ↔ chat completions translation: pure functions, no server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from edgebox.api.errors import APIError, from_validation_error
from edgebox.api.openai_responses import (
    ResponseCreateRequest,
    ResponseEventStream,
    chat_to_response,
    event_bytes,
    function_tools,
    input_items,
    output_text,
    responses_param,
    to_chat_body,
)

FIXTURES = Path(__file__).parent.parent / "fixtures"
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
FUNCTION = {"type": "function", "name": "get_weather", "parameters": WEATHER}
HOSTED = [
    {"type": "web_search"},
    {"type": "local_shell"},
    {"type": "custom", "name": "apply_patch", "format": {"type": "grammar"}},
    {"type": "namespace", "name": "mcp", "tools": []},
]


def request(**fields: Any) -> ResponseCreateRequest:
    return ResponseCreateRequest.model_validate({"model": "m", **fields})


def refused(**fields: Any) -> APIError:
    try:
        to_chat_body(request(**fields), [])
    except ValidationError as exc:
        return from_validation_error(exc)
    except APIError as exc:
        return exc
    raise AssertionError("accepted")


def test_a_string_input_is_one_user_message_after_the_instructions() -> None:
    body = to_chat_body(request(input="hi", instructions="be brief", max_output_tokens=9), [])
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]
    assert body["max_tokens"] == 9 and body["stream"] is False
    assert "tools" not in body and "temperature" not in body


def test_items_with_and_without_type_become_chat_messages_and_reasoning_is_dropped() -> None:
    items = [
        {"role": "developer", "content": "rules"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "q"}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "a"}]},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {
            "type": "function_call_output",
            "call_id": "c2",
            "output": [{"type": "input_text", "text": "rain"}],
        },
        {"role": "user", "content": "thanks"},
    ]
    messages = to_chat_body(request(input=items), [])["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "tool", "user"]
    assert messages[2]["content"] == "a"
    assert [c["id"] for c in messages[2]["tool_calls"]] == ["c1", "c2"]
    assert messages[2]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": "{}"}
    assert messages[3] == {"role": "tool", "tool_call_id": "c1", "content": "sunny"}
    assert messages[4]["content"] == "rain"


def test_consecutive_messages_of_one_role_are_joined_so_roles_alternate() -> None:
    items = [
        {"role": "developer", "content": "a"},
        {"role": "user", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    messages = to_chat_body(request(input=items, instructions="i"), [])["messages"]
    assert messages == [
        {"role": "system", "content": "i\n\na"},
        {"role": "user", "content": "b\n\nc"},
    ]


def test_history_items_come_before_the_input_and_instructions_are_not_inherited() -> None:
    history = input_items(request(input="first"))
    history.append(
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "one"}],
        }
    )
    body = to_chat_body(request(input="second"), history)
    assert [m["content"] for m in body["messages"]] == ["first", "one", "second"]


def test_hosted_tools_are_accepted_and_never_offered() -> None:
    body = to_chat_body(
        request(input="x", tools=[*HOSTED, FUNCTION], parallel_tool_calls=False), []
    )
    assert body["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}
    ]
    assert body["parallel_tool_calls"] is False
    only_hosted = to_chat_body(
        request(input="x", tools=HOSTED, tool_choice="auto", parallel_tool_calls=True), []
    )
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(only_hosted)


def test_tool_choice_and_text_format_map_to_their_chat_fields() -> None:
    named = request(
        input="x", tools=[FUNCTION], tool_choice={"type": "function", "name": "get_weather"}
    )
    assert to_chat_body(named, [])["tool_choice"] == {
        "type": "function",
        "function": {"name": "get_weather"},
    }
    allowed = request(
        input="x",
        tools=[FUNCTION],
        tool_choice={"type": "allowed_tools", "mode": "required", "tools": []},
    )
    assert to_chat_body(allowed, [])["tool_choice"] == "required"
    fmt = {"format": {"type": "json_schema", "name": "w", "schema": WEATHER, "strict": True}}
    body = to_chat_body(request(input="x", text=fmt, temperature=0, stream=True), [])
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "w", "schema": WEATHER, "strict": True},
    }
    assert body["temperature"] == 0 and body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input[0].content[0].type",
        ),
        ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
        (
            {"input": "x", "tools": [FUNCTION], "tool_choice": {"type": "web_search"}},
            "tool_choice.type",
        ),
        ({"input": "x", "tool_choice": "required"}, "tool_choice"),
        ({"input": "x", "text": {"format": {"type": "json_schema"}}}, "text.format.schema"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
        ({"input": [{"type": "bogus"}]}, "input[0]"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"input": "x", "temperature": 3}, "temperature"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": []}, "input"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(fields: dict[str, Any], param: str) -> None:
    error = refused(**fields)
    assert error.status == 400 and error.param == param, error.message


def test_chat_fields_in_errors_are_named_as_the_responses_request_names_them() -> None:
    req = request(input="x", tools=[*HOSTED, FUNCTION])
    assert responses_param("tools[0].function.parameters", req) == "tools[4].parameters"
    assert responses_param("messages[3].content", req) == "input"
    assert responses_param("max_tokens", req) == "max_output_tokens"
    assert responses_param("response_format", req) == "text.format"
    assert responses_param("tool_choice.function.name", req) == "tool_choice.name"
    assert responses_param("temperature", req) == "temperature"


def completion(message: dict[str, Any], finish: str = "stop") -> dict[str, Any]:
    usage = {
        "prompt_tokens": 10,
        "completion_tokens": 3,
        "prompt_tokens_details": {"cached_tokens": 8},
    }
    return {"choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage}


def test_a_chat_completion_becomes_a_responses_object() -> None:
    req = request(input="x", metadata={"k": "v"})
    response = chat_to_response(
        completion({"role": "assistant", "content": "hello"}), req, "resp_1", 7
    )
    assert response["id"] == "resp_1" and response["object"] == "response"
    assert response["status"] == "completed" and response["created_at"] == 7
    assert output_text(response) == "hello" and response["metadata"] == {"k": "v"}
    assert response["usage"] == {
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 8},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 13,
    }


def test_tool_calls_become_function_call_items_and_length_is_incomplete() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    message = {"role": "assistant", "content": None, "tool_calls": [call]}
    response = chat_to_response(completion(message, "tool_calls"), request(input="x"), "r", 0)
    [item] = response["output"]
    assert item["type"] == "function_call" and item["id"].startswith("fc_")
    assert (item["call_id"], item["name"], item["arguments"]) == ("call_1", "f", '{"a":1}')
    cut = chat_to_response(completion({"content": "abc"}, "length"), request(input="x"), "r", 0)
    assert cut["status"] == "incomplete"
    assert cut["incomplete_details"] == {"reason": "max_output_tokens"}


def chunk(
    delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any
) -> dict[str, Any]:
    choices = (
        [{"index": 0, "delta": delta or {}, "finish_reason": finish}] if delta or finish else []
    )
    return {"choices": choices, **extra}


def run(chunks: list[dict[str, Any]]) -> tuple[ResponseEventStream, list[dict[str, Any]]]:
    stream = ResponseEventStream(request(input="x"), "resp_1", 0)
    events = stream.start()
    for c in chunks:
        events += stream.feed(c)
    return stream, events + stream.finish()


def test_streamed_text_makes_the_event_sequence_clients_parse() -> None:
    usage = {"prompt_tokens": 4, "completion_tokens": 2}
    stream, events = run(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "he"}),
            chunk({"content": "llo"}),
            chunk(finish="stop"),
            chunk(usage=usage),
        ]
    )
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert (
        events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    )
    assert events[6]["text"] == "hello"
    final = events[-1]["response"]
    assert output_text(final) == "hello" and final["usage"]["input_tokens"] == 4
    assert stream.response == final
    assert event_bytes(events[0]).startswith(b"event: response.created\ndata: {")


def test_streamed_tool_calls_make_function_call_items_one_after_another() -> None:
    first = {
        "index": 0,
        "id": "call_a",
        "type": "function",
        "function": {"name": "f", "arguments": ""},
    }
    second = {
        "index": 1,
        "id": "call_b",
        "type": "function",
        "function": {"name": "g", "arguments": "{}"},
    }
    _, events = run(
        [
            chunk({"tool_calls": [first]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
            chunk({"tool_calls": [second]}),
            chunk(finish="tool_calls"),
        ]
    )
    kinds = [e["type"] for e in events[2:-1]]
    assert kinds == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
    ]
    assert events[5]["arguments"] == '{"a":1}' and events[5]["output_index"] == 0
    output = events[-1]["response"]["output"]
    assert [(i["call_id"], i["name"], i["arguments"]) for i in output] == [
        ("call_a", "f", '{"a":1}'),
        ("call_b", "g", "{}"),
    ]


def test_an_error_chunk_fails_the_response() -> None:
    stream = ResponseEventStream(request(input="x"), "resp_1", 0)
    stream.start()
    events = stream.feed({"error": {"message": "boom", "type": "server_error", "code": "timeout"}})
    assert [e["type"] for e in events] == ["error", "response.failed"]
    assert events[1]["response"]["error"] == {"code": "timeout", "message": "boom"}
    assert stream.finish() == []


def test_a_length_cut_ends_with_response_incomplete() -> None:
    _, events = run([chunk({"content": "ab"}), chunk(finish="length")])
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_the_codex_cli_request_translates_with_its_hosted_tools_left_out() -> None:
    """The body Codex CLI 0.169 sent on its first turn (recorded from a real run)."""
    recorded = json.loads((FIXTURES / "codex_0.169_request.json").read_text())
    req = ResponseCreateRequest.model_validate(recorded)
    assert req.store is False and req.prompt_cache_key and req.stream
    body = to_chat_body(req, [])
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert body["messages"][1]["content"].endswith("say hi")
    names = [t["function"]["name"] for t in body["tools"]]
    assert "exec_command" in names and len(names) == len(function_tools(req))
    assert {t["type"] for t in recorded["tools"]} - {"function"}  # hosted ones were sent


def test_an_empty_answer_still_has_one_message_and_no_gap_in_sequence_numbers() -> None:
    _, events = run([chunk(finish="stop")])
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert output_text(events[-1]["response"]) == ""
    assert [i["type"] for i in events[-1]["response"]["output"]] == ["message"]
