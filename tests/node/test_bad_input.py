"""Every kind of bad request gets an OpenAI-shaped 4xx naming the param; the node keeps serving."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import NodeProcess

MODEL = "smollm2-135m"
GOOD_CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
CHAT = "/chat/completions"
COMPLETIONS = "/completions"

CASES: list[tuple[str, str, Any, int, str | None, str | None]] = [
    # id, route, body (bytes = raw), status, param, code
    ("malformed-json", CHAT, b'{"model": ', 400, None, "invalid_json"),
    ("empty-body", CHAT, b"", 400, None, "invalid_json"),
    ("not-an-object", CHAT, b"[1, 2]", 400, None, "invalid_json"),
    ("missing-messages", CHAT, {"model": MODEL}, 400, "messages", "missing_required_parameter"),
    ("empty-messages", CHAT, {"model": MODEL, "messages": []}, 400, "messages", "invalid_value"),
    (
        "unknown-role",
        CHAT,
        {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]},
        400,
        "messages[0].role",
        "invalid_value",
    ),
    ("wrong-type", CHAT, {**GOOD_CHAT, "temperature": "hot"}, 400, "temperature", "invalid_value"),
    (
        "temperature-range",
        CHAT,
        {**GOOD_CHAT, "temperature": 7},
        400,
        "temperature",
        "invalid_value",
    ),
    (
        "negative-max-tokens",
        CHAT,
        {**GOOD_CHAT, "max_tokens": -5},
        400,
        "max_tokens",
        "invalid_value",
    ),
    (
        "absurd-max-tokens",
        CHAT,
        {**GOOD_CHAT, "max_tokens": 10**9},
        400,
        "max_tokens",
        "invalid_value",
    ),
    (
        "absurd-max-completion-tokens",
        CHAT,
        {**GOOD_CHAT, "max_tokens": None, "max_completion_tokens": 10**7},
        400,
        "max_completion_tokens",
        "invalid_value",
    ),
    (
        "too-many-stops",
        CHAT,
        {**GOOD_CHAT, "stop": ["a", "b", "c", "d", "e"]},
        400,
        "stop",
        "invalid_value",
    ),
    ("n-too-large", CHAT, {**GOOD_CHAT, "n": 1000}, 400, "n", "invalid_value"),
    (
        "top-logprobs-without-logprobs",
        CHAT,
        {**GOOD_CHAT, "top_logprobs": 2},
        400,
        "top_logprobs",
        None,
    ),
    (
        "image-content",
        CHAT,
        {
            "model": MODEL,
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ],
        },
        400,
        "messages[0].content[0].type",
        "unsupported_content",
    ),
    ("unknown-model", CHAT, {**GOOD_CHAT, "model": "gpt-9"}, 404, "model", "model_not_found"),
    (
        "prompt-too-long",
        CHAT,
        {**GOOD_CHAT, "messages": [{"role": "user", "content": "word " * 3000}]},
        400,
        "messages",
        "context_length_exceeded",
    ),
    (
        "schema-missing",
        CHAT,
        {**GOOD_CHAT, "response_format": {"type": "json_schema"}},
        400,
        "response_format.json_schema",
        "missing_required_parameter",
    ),
    (
        "bad-response-format",
        CHAT,
        {**GOOD_CHAT, "response_format": {"type": "yaml"}},
        400,
        "response_format.type",
        "invalid_value",
    ),
    (
        "bad-grammar",
        CHAT,
        {**GOOD_CHAT, "grammar": "root ::= ["},
        400,
        "grammar",
        "invalid_value",
    ),
    ("json-100000-deep", CHAT, b"[" * 100_000 + b"]" * 100_000, 400, None, "invalid_json"),
    (
        "integer-past-python-limit",
        CHAT,
        b'{"model": "smollm2-135m", "messages": [], "seed": ' + b"9" * 5000 + b"}",
        400,
        None,
        "invalid_json",
    ),
    (
        "nan-temperature",
        CHAT,
        b'{"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi"}], '
        b'"temperature": NaN}',
        400,
        "temperature",
        "invalid_value",
    ),
    (
        "infinite-repeat-penalty",
        CHAT,
        b'{"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi"}], '
        b'"repeat_penalty": Infinity}',
        400,
        "repeat_penalty",
        "invalid_value",
    ),
    ("stop-too-long", CHAT, {**GOOD_CHAT, "stop": ["x" * 257]}, 400, "stop", "invalid_value"),
    ("seed-out-of-range", CHAT, {**GOOD_CHAT, "seed": 2**70}, 400, "seed", "invalid_value"),
    ("top-k-out-of-range", CHAT, {**GOOD_CHAT, "top_k": 2**40}, 400, "top_k", "invalid_value"),
    (
        "more-messages-than-context",
        CHAT,
        {**GOOD_CHAT, "messages": [{"role": "user", "content": "x"}] * 2049},
        400,
        "messages",
        "context_length_exceeded",
    ),
    (
        "too-many-prompts",
        COMPLETIONS,
        {"model": MODEL, "prompt": ["x"] * 65},
        400,
        "prompt",
        "invalid_value",
    ),
    (
        "prompts-times-n",
        COMPLETIONS,
        {"model": MODEL, "prompt": ["x"] * 8, "n": 16},
        400,
        "n",
        "invalid_value",
    ),
    (
        "completion-prompt-missing",
        COMPLETIONS,
        {"model": MODEL},
        400,
        "prompt",
        "missing_required_parameter",
    ),
    (
        "completion-token-out-of-vocab",
        COMPLETIONS,
        {"model": MODEL, "prompt": [1, 99999999]},
        400,
        "prompt",
        "invalid_value",
    ),
    (
        "completion-prompt-too-long",
        COMPLETIONS,
        {"model": MODEL, "prompt": "word " * 3000},
        400,
        "prompt",
        "context_length_exceeded",
    ),
    (
        "completion-suffix",
        COMPLETIONS,
        {"model": MODEL, "prompt": "x", "suffix": "y"},
        400,
        "suffix",
        None,
    ),
]


@pytest.mark.parametrize(
    ("route", "body", "status", "param", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_request_is_refused_clearly_and_node_keeps_serving(
    node: NodeProcess, route: str, body: Any, status: int, param: str | None, code: str | None
) -> None:
    url = node.base_url + route
    if isinstance(body, bytes):
        response = httpx.post(
            url, content=body, headers={"content-type": "application/json"}, timeout=30
        )
    else:
        response = httpx.post(url, json=body, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and error["param"] == param and error["code"] == code
    assert error["type"] == "invalid_request_error"
    follow_up = httpx.post(node.base_url + CHAT, json=GOOD_CHAT, timeout=30)
    assert (
        follow_up.status_code == 200
        and follow_up.json()["choices"][0]["message"]["content"] is not None
    )


def test_oversized_body_gets_413(node: NodeProcess) -> None:
    huge = b'{"model": "x", "prompt": "' + b"a" * (17 * 1024 * 1024) + b'"}'
    response = httpx.post(node.base_url + COMPLETIONS, content=huge, timeout=60)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert httpx.post(node.base_url + CHAT, json=GOOD_CHAT, timeout=30).status_code == 200


def test_unknown_route_and_method_are_openai_shaped(node: NodeProcess) -> None:
    missing = httpx.get(node.base_url + "/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = httpx.get(node.base_url + CHAT)
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
