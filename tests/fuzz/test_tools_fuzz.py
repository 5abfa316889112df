"""Tool calling fuzzed against a real node: hypothesis builds tools whose parameter schemas
mix every keyword llama.cpp's converter reads (enums and consts of hostile strings, `$ref`,
`anyOf`, `pattern`, huge or inverted counts), tool_choice, streaming, n, stop strings that cut
inside a call, tiny max_tokens, and past assistant calls with arbitrary argument text. The
properties are those of test_api_fuzz.py: no 5xx, errors in OpenAI's shape, the node alive
and still answering. Found by it: `minLength: 10**9` (10 GB and a 503), arguments nested past
the recursion limit (500), enum strings with quotes or backslashes (grammars that would not
parse or forced another string)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st

from tests.conftest import NodeProcess, start_node
from tests.fuzz.test_api_fuzz import FUZZ, SEED, check_answer, still_serves

# Each example generates a few tokens, so CI runs fewer than the API fuzz's 120 per route
# (about 2 minutes on 2 cores); EDGEBOX_FUZZ_EXAMPLES widens a run by hand.
EXAMPLES = int(os.environ.get("EDGEBOX_FUZZ_EXAMPLES", "60"))
TOOLS_FUZZ = settings(FUZZ, max_examples=EXAMPLES)

pytestmark = pytest.mark.system

MODEL = "smollm2-135m"
# What reaches GBNF literals, regexes and JSON parsers.
_HOSTILE = st.one_of(
    st.text(max_size=12),
    st.sampled_from(['"', "\\", '\\"', "\n", "\r", "\u2028", "<|im_end|>", "]", "{", "$", ""]),
)
_COUNTS = st.one_of(
    st.integers(min_value=-3, max_value=12), st.sampled_from([10**9, 2**63, 1e308, -(10**9)])
)
_PATTERNS = st.sampled_from(
    [
        "^a$",
        "^(a|b)*$",
        "^[a-z]{2,8}$",
        "^\\d{3}$",
        "^a\\$",
        "^(a{100}){100}$",
        "^((a{9}){9}){9}$",
        '^"\\\\$',
        "((",
        '^[^"]*$',
        "^.{0,4}$",
        "^(?:a)$",
    ]
)
_TYPES = st.sampled_from(["string", "integer", "number", "boolean", "null", "array", "object"])


def _leaf() -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        st.fixed_dictionaries({"type": _TYPES}),
        st.fixed_dictionaries({"enum": st.lists(st.one_of(_HOSTILE, st.integers()), max_size=4)}),
        st.fixed_dictionaries({"const": st.one_of(_HOSTILE, st.lists(_HOSTILE, max_size=3))}),
        st.fixed_dictionaries({"type": st.just("string"), "pattern": _PATTERNS}),
        st.fixed_dictionaries(
            {"type": st.just("string")},
            optional={"minLength": _COUNTS, "maxLength": _COUNTS, "format": _HOSTILE},
        ),
        st.fixed_dictionaries(
            {"type": st.just("integer")}, optional={"minimum": _COUNTS, "maximum": _COUNTS}
        ),
        st.fixed_dictionaries({"$ref": st.sampled_from(["#/$defs/A", "#/$defs/Nope", "#"])}),
    )


SCHEMAS = st.recursive(
    _leaf(),
    lambda inner: st.one_of(
        st.fixed_dictionaries(
            {"type": st.just("object"), "properties": st.dictionaries(_HOSTILE, inner, max_size=3)},
            optional={
                "required": st.lists(_HOSTILE, max_size=2),
                "additionalProperties": st.one_of(st.booleans(), inner),
            },
        ),
        st.fixed_dictionaries({"anyOf": st.lists(inner, max_size=3)}),
        st.fixed_dictionaries({"allOf": st.lists(inner, max_size=2)}),
        st.fixed_dictionaries(
            {"type": st.just("array"), "items": inner},
            optional={"minItems": _COUNTS, "maxItems": _COUNTS},
        ),
    ),
    max_leaves=8,
)
NAMES = st.sampled_from(["f", "get", "get_weather", "get-w", "g"])


@st.composite
def parameters(draw: st.DrawFn) -> dict[str, Any]:
    props = draw(st.dictionaries(_HOSTILE, SCHEMAS, max_size=3))
    schema: dict[str, Any] = {"type": "object", "properties": props}
    if props and draw(st.booleans()):
        schema["required"] = sorted(props)[:2]
    if draw(st.booleans()):
        schema["$defs"] = {"A": draw(SCHEMAS)}
    return schema


@st.composite
def tool_bodies(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(NAMES, min_size=1, max_size=3, unique=True))
    tools = [
        {"type": "function", "function": {"name": n, "parameters": draw(parameters())}}
        for n in names
    ]
    choice = draw(
        st.sampled_from(["auto", "required", "none", "named", "absent"]).map(
            lambda c: {"type": "function", "function": {"name": names[0]}} if c == "named" else c
        )
    )
    messages: list[dict[str, Any]] = [{"role": "user", "content": draw(_HOSTILE) or "Hi"}]
    if draw(st.booleans()):
        args = draw(st.one_of(_HOSTILE, st.just("[" * 3000 + "]" * 3000), st.just('{"a": 1}')))
        call = {
            "id": "call_1",
            "type": "function",
            "function": {"name": names[0], "arguments": args},
        }
        messages += [
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {
                "role": "tool",
                "tool_call_id": draw(st.sampled_from(["call_1", "x", "\n"])),
                "content": draw(_HOSTILE),
            },
        ]
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": messages,
        "tools": tools,
        "max_tokens": draw(st.integers(min_value=1, max_value=6)),
        "temperature": draw(st.sampled_from([0, 0.7, 1.5])),
        "seed": draw(st.integers(min_value=0, max_value=1000)),
        "stream": draw(st.booleans()),
        "n": draw(st.sampled_from([1, 1, 2])),
        "parallel_tool_calls": draw(st.booleans()),
    }
    if choice != "absent":
        body["tool_choice"] = choice
    if draw(st.booleans()):
        body["stop"] = draw(
            st.lists(st.sampled_from(['"', "{", '"name"', ":", "}", "tool"]), max_size=2)
        )
    return body


@pytest.fixture(scope="module")
def fuzz_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    node = start_node(tmp_path_factory.mktemp("tools-fuzz"), "--parallel", "2", "--ctx", "2048")
    yield node
    code = node.stop()
    assert code == 0, f"node did not exit cleanly after fuzzing:\n{node.log.read_text()}"


@pytest.mark.timeout(max(300, 3 * EXAMPLES))  # a wider run by hand takes its time
def test_tool_calling_survives_fuzzing(fuzz_node: NodeProcess) -> None:
    with httpx.Client(timeout=60) as client:

        @TOOLS_FUZZ
        @seed(SEED)
        @given(body=tool_bodies())
        def one(body: dict[str, Any]) -> None:
            content = json.dumps(body).encode()
            url = fuzz_node.url + "/v1/chat/completions"
            headers = {"content-type": "application/json"}
            with client.stream("POST", url, content=content, headers=headers) as answer:
                answer.read()
            check_answer(answer)
            if body["stream"] and answer.status_code == 200:
                assert "data: [DONE]" in answer.text, answer.text[-500:]
            assert fuzz_node.proc.poll() is None, fuzz_node.log.read_text()[-3000:]

        one()
    still_serves(fuzz_node.url)
