"""Tool calling against a real node (the bundled SmolLM2, whose template has no tool support,
so the generic JSON envelope), driven by the real openai SDK; arguments are checked against
their schemas with `jsonschema`. The tiny model is no agent: these tests judge protocol."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from edgebox.runtimes.llamacpp.model import LlamaCppModel
from tests.conftest import NodeProcess

MODEL = "smollm2-135m"
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "days"],
}
TIME = {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 20}}}
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather forecast for a city",
            "parameters": WEATHER,
        },
    },
    {
        "type": "function",
        "function": {"name": "get_time", "description": "The time now", "parameters": TIME},
    },
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What will the weather be in Paris for the next 3 days?"}]
NAMED = {"type": "function", "function": {"name": "get_time"}}


@pytest.fixture(scope="module")
def client(node: NodeProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=node.base_url, api_key="unused", max_retries=0, timeout=180)


def assert_valid(name: str, arguments: str) -> dict[str, Any]:
    assert name in SCHEMAS
    parsed = json.loads(arguments)
    jsonschema.validate(parsed, SCHEMAS[name])
    return parsed  # type: ignore[no-any-return]


@pytest.mark.parametrize("choice", ["required", NAMED], ids=["required", "named"])
def test_a_forced_tool_choice_calls_with_arguments_that_validate(
    client: openai.OpenAI, choice: Any
) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=ASK,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice=choice,
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=80,
    )
    choice_ = reply.choices[0]
    assert choice_.finish_reason == "tool_calls"
    assert choice_.message.content is None
    calls = choice_.message.tool_calls
    assert calls is not None and len(calls) == 1
    call = calls[0]
    assert call.id.startswith("call_") and call.type == "function"
    if choice == NAMED:
        assert call.function.name == "get_time"
    assert_valid(call.function.name, call.function.arguments)


def test_streamed_tool_calls_come_as_openai_deltas_and_assemble_to_the_same_call(
    client: openai.OpenAI,
) -> None:
    request: dict[str, Any] = dict(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=80,
    )
    whole = client.chat.completions.create(**request).choices[0].message.tool_calls
    chunks = list(client.chat.completions.create(**request, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert not "".join(d.content or "" for d in deltas)  # no call markup leaks as content
    parts = [tc for d in deltas for tc in (d.tool_calls or [])]
    first, rest = parts[0], parts[1:]
    assert first.index == 0 and first.id and first.id.startswith("call_")
    assert first.type == "function" and first.function is not None and first.function.name
    assert rest and all(p.id is None and p.function and p.function.name is None for p in rest)
    arguments = (first.function.arguments or "") + "".join(
        p.function.arguments or "" for p in rest if p.function
    )
    assert whole is not None
    assert (first.function.name, arguments) == (whole[0].function.name, whole[0].function.arguments)
    assert_valid(first.function.name, arguments)
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["tool_calls"]


def test_a_two_turn_tool_loop_completes(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model=MODEL,
        messages=ASK,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=80,
    )
    message = first.choices[0].message
    assert message.tool_calls
    call = message.tool_calls[0]
    result = {"forecast": ["sunny", "cloudy", "rain"], "high_c": 21}
    conversation = [
        *ASK,
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)},
    ]
    answer = client.chat.completions.create(
        model=MODEL,
        messages=conversation,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=60,
    )
    assert answer.usage is not None and first.usage is not None
    assert answer.usage.prompt_tokens > first.usage.prompt_tokens  # the call and its result
    turn = answer.choices[0]
    if turn.message.tool_calls and turn.finish_reason == "tool_calls":
        for again in turn.message.tool_calls:
            assert_valid(again.function.name, again.function.arguments)
    else:
        assert turn.finish_reason in ("stop", "length") and turn.message.content
    plain = client.chat.completions.create(
        model=MODEL,
        messages=conversation,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="none",
        temperature=0,
        max_tokens=30,
    )
    final = plain.choices[0]
    assert final.finish_reason in ("stop", "length")
    assert final.message.tool_calls is None and (final.message.content or "").strip()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_auto_answers_in_text_or_with_a_valid_call(client: openai.OpenAI, seed: int) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=ASK,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        temperature=0.9,
        seed=seed,
        max_tokens=60,
    )
    choice = reply.choices[0]
    if choice.message.tool_calls:
        assert choice.finish_reason in ("tool_calls", "length")
        if choice.finish_reason == "tool_calls":
            for call in choice.message.tool_calls:
                assert_valid(call.function.name, call.function.arguments)
    else:
        assert choice.finish_reason in ("stop", "length")
        assert '"tool_calls"' not in (choice.message.content or "")


def test_auto_again_from_the_kept_logits_calls_the_same(
    client: openai.OpenAI, smollm2_path: Path
) -> None:
    """The same request again samples its first token from the logits the slot kept after the
    prompt (`Sampler.draw` on the kept row), not from a decode: the lazy grammar,
    whose anchored trigger starts at that first token, engages exactly as in the first run."""
    vocab = LlamaCppModel(smollm2_path, vocab_only=True)
    try:  # the call's marker favoured, so that the model calls at a temperature
        marker = vocab.tokenize('{"tool_calls":', add_special=False, parse_special=False)
    finally:
        vocab.close()
    ask = [{"role": "user", "content": "Call get_weather for Paris, 3 days."}]
    first, again = (
        client.chat.completions.create(
            model=MODEL,
            messages=ask,  # type: ignore[arg-type]
            tools=TOOLS,  # type: ignore[arg-type]
            temperature=0.5,
            seed=3,
            max_tokens=60,
            logit_bias={str(token): 6 for token in marker},
        )
        for _ in range(2)
    )
    cached = [r.usage.prompt_tokens_details.cached_tokens for r in (first, again)]  # type: ignore[union-attr]
    assert cached[0] < first.usage.prompt_tokens == cached[1]  # type: ignore[union-attr]
    calls = [
        [(c.function.name, c.function.arguments) for c in r.choices[0].message.tool_calls or []]
        for r in (first, again)
    ]
    assert calls[0] and calls[1] == calls[0]
    assert again.choices[0].finish_reason == first.choices[0].finish_reason


def test_parallel_calls_each_validate(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather in Paris and in Rome, 2 days each?"}],
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="required",
        temperature=0,
        max_tokens=100,
    )
    choice = reply.choices[0]
    calls = choice.message.tool_calls or []
    assert calls and len({c.id for c in calls}) == len(calls)
    complete = calls if choice.finish_reason == "tool_calls" else calls[:-1]  # cut off: the last
    for call in complete:
        assert_valid(call.function.name, call.function.arguments)


def _tool(name: str, parameters: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


BAD_PATTERN = {"type": "object", "properties": {"a": {"type": "string", "pattern": "(("}}}
# llama.cpp's converter writes a string's minLength out char by char: 10 GB and a 503 before.
LONG_STRING = {"type": "object", "properties": {"a": {"type": "string", "minLength": 10**9}}}
BAD_INPUT = [
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tools": [{"type": "function"}]}, "tools[0].function"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": NAMED, "tools": TOOLS[:1]}, "tool_choice.function.name"),
    ({"tool_choice": "sometimes", "tools": TOOLS}, "tool_choice"),
    ({"tools": [_tool("f", {"type": "string"})]}, "tools[0].function.parameters"),
    ({"tools": [_tool("f", TIME), _tool("g", BAD_PATTERN)]}, "tools[1].function.parameters"),
    ({"tools": [_tool("f", {"type": "object", "required": "a"})]}, "tools[0].function.parameters"),
    ({"tools": [_tool("f", LONG_STRING)]}, "tools[0].function.parameters"),
    ({"tools": [_tool("two words", TIME)]}, "tools[0].function.name"),
    ({"tools": [_tool("f", TIME), _tool("f", TIME)]}, "tools[1].function.name"),
    ({"tools": [_tool(f"f{i}", TIME) for i in range(129)]}, "tools"),
    ({"tools": TOOLS, "grammar": 'root ::= "x"'}, "grammar"),
    ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "response_format"),
    ({"parallel_tool_calls": True}, "parallel_tool_calls"),
    (
        {"messages": [*ASK, {"role": "tool", "content": "21C"}], "tools": TOOLS},
        "messages[1].tool_call_id",
    ),
]


@pytest.mark.parametrize(("extra", "param"), BAD_INPUT, ids=[p for _, p in BAD_INPUT])
def test_bad_tool_input_is_a_400_naming_the_field(
    node: NodeProcess, extra: dict[str, Any], param: str
) -> None:
    body = {"model": MODEL, "messages": ASK, "max_tokens": 5, "tool_choice": "required", **extra}
    if "tool_choice" not in extra:
        body.pop("tool_choice")
    reply = httpx.post(node.base_url + "/chat/completions", json=body, timeout=30)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert error["message"]


def test_the_sdk_sees_the_400_as_a_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL,
            messages=ASK,  # type: ignore[arg-type]
            tools=TOOLS,  # type: ignore[arg-type]
            tool_choice={"type": "function", "function": {"name": "launch"}},
        )
    assert caught.value.body["param"] == "tool_choice.function.name"  # type: ignore[index]


def test_a_past_call_with_arguments_nested_past_the_recursion_limit_is_no_500(
    node: NodeProcess,
) -> None:
    deep = "[" * 3000 + "]" * 3000
    call = {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": deep}}
    messages = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call]}]
    body = {"model": MODEL, "messages": messages, "tools": TOOLS, "max_tokens": 2}
    reply = httpx.post(node.base_url + "/chat/completions", json=body, timeout=60)
    assert reply.status_code in (200, 400), reply.text  # 500 before: a RecursionError
    if reply.status_code == 400:
        assert reply.json()["error"]["param"] == "messages"
