"""The Messages API translation: requests to chat bodies, chat replies and chunks back."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edgebox.api.anthropic import (
    CountTokensRequest,
    MessageEventStream,
    MessagesRequest,
    anthropic_error,
    chat_to_message,
    from_api_error,
    from_openai_error,
    parse_request,
    sse_event,
    to_chat_body,
)
from edgebox.api.errors import APIError
from edgebox.api.protocol import ChatCompletionRequest

WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def request(**fields: Any) -> MessagesRequest:
    body = {"model": "m", "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}]}
    return parse_request(MessagesRequest, {**body, **fields})


def refused(**fields: Any) -> APIError:
    with pytest.raises(APIError) as caught:
        to_chat_body(request(**fields))
    assert caught.value.status == 400
    return caught.value


def test_system_blocks_tools_and_sampling_become_a_valid_chat_body() -> None:
    req = request(
        system=[
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.328.ea9;"},
            {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Answer in English."},
        ],
        tools=[WEATHER, {"type": "web_search_20250305", "name": "web_search"}],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        stop_sequences=["END"],
        temperature=0.5,
        top_k=40,
        stream=True,
        metadata={"user_id": "u1"},
        thinking={"type": "enabled", "budget_tokens": 1024},
        context_management={"edits": []},
        output_config={"effort": "low"},
        service_tier="auto",
    )
    body = to_chat_body(req)
    ChatCompletionRequest.model_validate(body)  # the chat path takes it as it is
    assert body["messages"][0] == {
        "role": "system",
        "content": "You are terse.\n\nAnswer in English.",
    }
    assert [t["function"]["name"] for t in body["tools"]] == ["get_weather"]  # server tool dropped
    assert body["tool_choice"] == "required"
    assert body["parallel_tool_calls"] is False
    assert body["stop"] == ["END"]
    assert body["stream_options"] == {"include_usage": True}
    assert (body["temperature"], body["top_k"], body["user"]) == (0.5, 40, "u1")


def test_tool_use_and_tool_result_become_calls_and_tool_messages() -> None:
    req = request(
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "x"},
                    {"type": "text", "text": "Checking."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [{"type": "text", "text": "sunny"}],
                    },
                    {"type": "text", "text": "And tomorrow?"},
                ],
            },
            {"role": "system", "content": "Be brief."},
        ],
        tools=[WEATHER],
    )
    messages = to_chat_body(req)["messages"]
    assert messages[1]["content"] == "Checking."
    call = messages[1]["tool_calls"][0]
    assert call["id"] == "toolu_1"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert messages[2] == {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"}
    assert messages[3] == {"role": "user", "content": "And tomorrow?"}
    assert messages[4] == {"role": "system", "content": "Be brief."}


def test_an_error_result_is_marked() -> None:
    req = request(
        messages=[
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t", "content": "boom", "is_error": True}
                ],
            },
        ]
    )
    assert to_chat_body(req)["messages"][1]["content"] == "Error: boom"


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "none"}, "none"),
        (
            {"type": "tool", "name": "get_weather"},
            {"type": "function", "function": {"name": "get_weather"}},
        ),
    ],
)
def test_tool_choice_mapping(choice: dict[str, Any], expected: Any) -> None:
    assert to_chat_body(request(tools=[WEATHER], tool_choice=choice))["tool_choice"] == expected


def test_bad_inputs_name_the_field() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": ""}}
    err = refused(messages=[{"role": "user", "content": [image]}])
    assert "image input is not supported" in err.message
    assert err.param == "messages[0].content[0].type"
    err = refused(
        messages=[{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "nope"}]}]
    )
    assert err.param == "messages[0].content[0].tool_use_id"
    assert refused(tools=[{"name": "f"}]).param == "tools[0].input_schema"
    assert refused(tool_choice={"type": "any"}).param == "tool_choice"
    for fields, param in [
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": 1.5}, "temperature"),
        ({"stop_sequences": [""]}, "stop_sequences"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "video"}]}]},
            "messages[0].content[0]",
        ),
    ]:
        body = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
        body.update(fields)
        if body["max_tokens"] is None:
            del body["max_tokens"]
        with pytest.raises(APIError) as caught:
            parse_request(MessagesRequest, body)
        assert caught.value.param == param, (fields, caught.value.message)


def test_a_long_string_content_is_one_block() -> None:
    body = to_chat_body(request(messages=[{"role": "user", "content": "word " * 5000}]))
    assert body["messages"] == [{"role": "user", "content": "word " * 5000}]


def test_count_tokens_needs_no_max_tokens() -> None:
    req = parse_request(
        CountTokensRequest, {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    )
    assert "max_tokens" not in to_chat_body(req)


def completion(message: dict[str, Any], finish: str, **choice: Any) -> dict[str, Any]:
    usage = {
        "prompt_tokens": 20,
        "completion_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 8},
    }
    return {
        "choices": [{"index": 0, "message": message, "finish_reason": finish, **choice}],
        "usage": usage,
    }


def test_chat_completion_to_message() -> None:
    call = {
        "id": "call_abc",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
    }
    out = chat_to_message(
        completion({"content": "Sure.", "tool_calls": [call]}, "tool_calls"), request(), "msg_1"
    )
    assert out["content"] == [
        {"type": "text", "text": "Sure."},
        {"type": "tool_use", "id": "toolu_abc", "name": "get_weather", "input": {"city": "Oslo"}},
    ]
    assert out["stop_reason"] == "tool_use"
    assert out["usage"] == {
        "input_tokens": 12,
        "output_tokens": 5,
        "cache_read_input_tokens": 8,
        "cache_creation_input_tokens": 0,
    }
    assert (out["id"], out["type"], out["role"], out["model"]) == (
        "msg_1",
        "message",
        "assistant",
        "m",
    )


@pytest.mark.parametrize(
    ("finish", "matched", "reason", "sequence"),
    [
        ("length", None, "max_tokens", None),
        ("stop", "END", "stop_sequence", "END"),
        ("stop", None, "end_turn", None),
        ("stop", 2, "end_turn", None),  # vLLM reports a stop token id
    ],
)
def test_stop_reasons(finish: str, matched: Any, reason: str, sequence: str | None) -> None:
    out = chat_to_message(
        completion({"content": "x"}, finish, stop_reason=matched),
        request(stop_sequences=["END"]),
        "m",
    )
    assert (out["stop_reason"], out["stop_sequence"]) == (reason, sequence)


def chunk(
    delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any
) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"object": "chat.completion.chunk", "choices": choices, **extra}


def test_stream_of_text_then_a_tool_call() -> None:
    stream = MessageEventStream(request(), "msg_1", input_tokens=20)
    events = stream.start()
    for c in [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Let me "}),
        chunk({"content": "check."}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_x",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]}),
        chunk({}, "tool_calls"),
        chunk(usage={"prompt_tokens": 20, "completion_tokens": 9}),
    ]:
        events += stream.feed(c)
    events += stream.finish()
    assert [e["type"] for e in events] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[0]["message"]["usage"]["input_tokens"] == 20
    assert events[6]["content_block"] == {
        "type": "tool_use",
        "id": "toolu_x",
        "name": "get_weather",
        "input": {},
    }
    partial = "".join(e["delta"]["partial_json"] for e in events[7:9])
    assert json.loads(partial) == {"city": "Oslo"}
    assert events[10]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert events[10]["usage"]["output_tokens"] == 9
    assert sse_event(events[-1]) == b'event: message_stop\ndata: {"type":"message_stop"}\n\n'


def test_stream_error_ends_the_stream() -> None:
    stream = MessageEventStream(request(), "msg_1")
    events = stream.feed(chunk({"content": "a"}))
    events += stream.feed({"error": {"message": "generation failed", "type": "server_error"}})
    assert events[-1] == {
        "type": "error",
        "error": {"type": "api_error", "message": "generation failed"},
    }
    assert stream.finish() == []


def test_errors_in_anthropic_shape() -> None:
    assert anthropic_error(401, None, "bad key") == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "bad key"},
    }
    assert anthropic_error(529, None, "x")["error"]["type"] == "overloaded_error"
    assert anthropic_error(404, None, "x")["error"]["type"] == "not_found_error"
    overflow = APIError(
        400,
        "this model's context is 8192 tokens per request, but the prompt is 9000 tokens; shorten it",
        param="messages",
        code="context_length_exceeded",
    )
    assert (
        from_api_error(overflow)["error"]["message"]
        == "prompt is too long: 9000 tokens > 8192 maximum"
    )
    body = {
        "error": {"message": "must be positive", "param": "max_tokens", "code": "invalid_value"}
    }
    assert from_openai_error(400, body)["error"]["message"] == "max_tokens: must be positive"
