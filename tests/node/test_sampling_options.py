"""`logit_bias` (OpenAI's) and `ignore_eos` (llama-server's and vLLM's) on a node, through the
real openai SDK: a bias of +100 forces a token and -100 bans it, `ignore_eos` generates to the
limit where greedy decoding would have stopped, and bad biases get a 400 naming `logit_bias`.
The bundled SmolLM2-135M, loaded once, served by the node's app in process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from starlette.testclient import TestClient

from edgebox.node.app import create_app
from edgebox.node.state import NodeState
from edgebox.runtimes.llamacpp import EngineConfig, LlamaCppRuntime

MODEL = "smollm2-135m"
HELLO = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def runtime(smollm2_path: Path) -> Iterator[LlamaCppRuntime]:
    rt = LlamaCppRuntime(
        smollm2_path, name=MODEL, config=EngineConfig(n_ctx=1024, parallel=2, n_threads=1)
    )
    try:
        yield rt
    finally:
        rt.close()


@pytest.fixture(scope="module")
def client(runtime: LlamaCppRuntime) -> Iterator[openai.OpenAI]:
    with TestClient(create_app(NodeState({MODEL: runtime})), base_url="http://node") as http:
        yield openai.OpenAI(base_url="http://node/v1", api_key="none", http_client=http)


def token_id(runtime: LlamaCppRuntime, text: str) -> int:
    tokens = runtime.tokenize(text)
    assert len(tokens) == 1, tokens
    return tokens[0]


def test_a_greedy_answer_that_ends_early_runs_to_the_limit_with_ignore_eos(
    client: openai.OpenAI,
) -> None:
    plain = client.chat.completions.create(
        model=MODEL, messages=HELLO, temperature=0, max_tokens=200
    )
    assert plain.choices[0].finish_reason == "stop"
    assert plain.usage is not None and plain.usage.completion_tokens < 200
    forced = client.chat.completions.create(
        model=MODEL, messages=HELLO, temperature=0, max_tokens=200, extra_body={"ignore_eos": True}
    )
    assert forced.choices[0].finish_reason == "length"
    assert forced.usage is not None and forced.usage.completion_tokens == 200
    # the same greedy text up to where the plain answer ended
    assert (forced.choices[0].message.content or "").startswith(plain.choices[0].message.content)


def test_plus_100_forces_a_token_and_minus_100_bans_one(
    client: openai.OpenAI, runtime: LlamaCppRuntime
) -> None:
    banana = token_id(runtime, " banana")
    forced = client.completions.create(
        model=MODEL,
        prompt="My favourite fruit is",
        max_tokens=4,
        temperature=0,
        logit_bias={str(banana): 100},
    )
    assert forced.choices[0].text == " banana" * 4
    plain = client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=1, temperature=0
    )
    first = plain.choices[0].text
    banned = client.completions.create(
        model=MODEL,
        prompt="The capital of France is",
        max_tokens=1,
        temperature=0,
        logit_bias={str(token_id(runtime, first)): -100},
    )
    assert banned.choices[0].text not in ("", first)


def test_sampled_decoding_honours_a_ban_too(
    client: openai.OpenAI, runtime: LlamaCppRuntime
) -> None:
    the = token_id(runtime, " the")
    out = client.completions.create(
        model=MODEL,
        prompt="Once upon a time",
        max_tokens=48,
        temperature=1.0,
        seed=7,
        logit_bias={str(the): -100},
    )
    assert out.usage is not None and out.usage.completion_tokens > 0
    assert the not in runtime.tokenize(out.choices[0].text)


def test_penalties_reach_the_logits(client: openai.OpenAI) -> None:
    """Greedy text that repeats itself repeats less under a penalty (llama.cpp's penalties
    sampler, whose constructor takes the vocabulary size first in this llama.cpp: with the
    old four arguments every penalised request failed)."""
    ask = {"model": MODEL, "prompt": "I said no no no no no no no", "max_tokens": 12}
    plain = client.completions.create(**ask, temperature=0)  # type: ignore[call-overload]
    assert plain.choices[0].text.count(" no") == 12
    for penalty in ({"frequency_penalty": 1.5}, {"extra_body": {"repeat_penalty": 1.8}}):
        penalised = client.completions.create(**ask, temperature=0, **penalty)  # type: ignore[call-overload]
        assert penalised.choices[0].text.count(" no") < 6, penalty
    sampled = client.completions.create(**ask, temperature=0.8, seed=3, presence_penalty=1.5)  # type: ignore[call-overload]
    assert sampled.usage is not None and sampled.usage.completion_tokens > 0


@pytest.mark.parametrize(
    ("bias", "says"),
    [
        ({"banana": 5}, "token ids"),
        ({"-3": 5}, "token ids"),
        ({"999999": 5}, "outside this model's vocabulary"),
        ({"42": 250}, "between -100 and 100"),
        ({str(i): 1 for i in range(1025)}, "at most 1024"),
    ],
)
def test_a_bad_bias_is_a_400_naming_logit_bias(
    client: openai.OpenAI, bias: dict[str, float], says: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2, logit_bias=bias)
    error = caught.value.body
    assert isinstance(error, dict)
    assert error.get("param") == "logit_bias", error
    assert says in str(error.get("message")), error
    # the node keeps serving
    ok = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)
    assert ok.choices[0].message.content is not None


def test_ignore_eos_must_be_a_boolean(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=HELLO, max_tokens=2, extra_body={"ignore_eos": "sometimes"}
        )
    assert isinstance(caught.value.body, dict) and caught.value.body.get("param") == "ignore_eos"


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_a_bias_that_is_not_a_finite_number_is_a_400(client: openai.OpenAI, value: str) -> None:
    """Python's JSON reader takes NaN and Infinity; a bias must still be a finite number."""
    http = client._client  # the node's own TestClient
    wire = {"model": MODEL, "messages": HELLO, "max_tokens": 2, "logit_bias": {"42": 0}}
    body = json.dumps(wire).replace('{"42": 0}', '{"42": ' + value + "}")
    r = http.post(
        "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"].startswith("logit_bias"), r.text


@pytest.mark.parametrize(
    "extra",
    [
        {"grammar": 'root ::= "yes"'},
        {"response_format": {"type": "json_object"}},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
    ],
)
def test_ignore_eos_with_a_grammar_is_a_400_not_an_abort(
    client: openai.OpenAI, extra: dict[str, object]
) -> None:
    """A finished grammar allows only end-of-generation, which ignore_eos bans: no token is
    left and llama.cpp's grammar threw through its C API, aborting the node process. The
    pair is refused up front, naming `ignore_eos`, and the node keeps serving."""
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as caught:
            answer = client.chat.completions.create(
                model=MODEL,
                messages=HELLO,
                max_tokens=12,
                stream=stream,
                extra_body={"ignore_eos": True, **extra},
            )
            list(answer) if stream else None  # type: ignore[call-overload]
        error = caught.value.body
        assert isinstance(error, dict) and error.get("param") == "ignore_eos", error
    ok = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)
    assert ok.choices[0].message.content is not None
