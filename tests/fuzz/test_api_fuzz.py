"""Property-based fuzzing of the node's, the router's and the hub's HTTP APIs.

Hypothesis mutates valid request bodies (a field replaced by any JSON value, fields added or
dropped, the body replaced by arbitrary JSON or raw bytes) and sends each one to real servers
on loopback. The properties: no answer is a 5xx, every error is in the API's own shape, and the
server still answers a normal request afterwards. The budget is fixed (`EXAMPLES` per route,
derandomized) so CI runs the same cases every time; `EDGEBOX_FUZZ_EXAMPLES` and
`EDGEBOX_FUZZ_SEED` widen or vary it by hand (docs/security.md).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Verbosity, given, seed, settings
from hypothesis import strategies as st

from tests.conftest import NodeProcess, start_node
from tests.router.conftest import start_router

pytestmark = pytest.mark.system

EXAMPLES = int(os.environ.get("EDGEBOX_FUZZ_EXAMPLES", "120"))
SEED = int(os.environ.get("EDGEBOX_FUZZ_SEED", "0"))
MODEL = "smollm2-135m"
TIMEOUT_S = 60.0  # a request the server never answers fails the property too

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=SEED == 0,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
    verbosity=Verbosity.quiet,  # failures name a shortened body themselves (bombs are large)
)

# Values that reach parsers and native code: special-token text, control characters, deep
# nesting, huge and negative numbers, non-finite floats, long strings.
_TEXTS = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        ["<|im_start|>system\n", "<|im_end|>", "<s>", "\x00\x1b[2J\n\r", "root ::= " * 30, ""]
    ),
    st.text(alphabet="([{", min_size=200, max_size=2000),
)
_NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1, 2**31 - 1, 2**31, 2**63, 1e308]),
)
_SCALARS = st.one_of(st.none(), st.booleans(), _NUMBERS, _TEXTS)
JSON_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=20,
)


def _deep(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = {"a": value}
    return value


# Whole-body attacks every route must survive.
RAW_BODIES = st.one_of(
    st.binary(max_size=512),
    st.sampled_from([b"", b"null", b"[]", b"{", b'{"a":' * 5000, b"[" * 100_000 + b"]" * 100_000]),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
)

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
COMPLETION = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 4}
EMBEDDING = {"model": "all-minilm-l6-v2", "input": "a cat"}
CHAT_FIELDS = [
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "n",
    "stream",
    "stop",
    "seed",
    "logprobs",
    "top_logprobs",
    "response_format",
    "grammar",
    "top_k",
    "min_p",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "stream_options",
    "tools",
    "tool_choice",
    "user",
]
COMPLETION_FIELDS = ["model", "prompt", "max_tokens", "echo", "suffix", "logprobs", "n", "stop"]


def _bounded(body: dict[str, Any]) -> dict[str, Any]:
    """Keep a fuzzed generation short: the property is about answers, not about output length
    (a large but valid max_tokens is a legitimate, slow request)."""
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 8:
            body[key] = 8
    if isinstance(body.get("n"), int) and not isinstance(body.get("n"), bool) and body["n"] > 2:
        body["n"] = 2
    return body


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any], fields: list[str]) -> bytes:
    """`base` with fields replaced, added or removed, or a whole-body attack."""
    kind = draw(st.sampled_from(["field", "field", "field", "extra", "drop", "message", "raw"]))
    if kind == "raw":
        return draw(RAW_BODIES)
    body = json.loads(json.dumps(base))
    if kind == "field":
        body[draw(st.sampled_from(fields))] = draw(JSON_VALUES)
    elif kind == "extra":
        body[draw(st.text(max_size=20))] = draw(JSON_VALUES)
    elif kind == "drop":
        body.pop(draw(st.sampled_from(sorted(body))), None)
    elif kind == "message" and "messages" in body:
        message = {"role": draw(st.sampled_from(["user", "system", "tool", "bogus"]))}
        message[draw(st.sampled_from(["content", "name", "role", "tool_calls"]))] = draw(
            JSON_VALUES
        )
        body["messages"] = [*body["messages"], message]
    return json.dumps(_bounded(body), allow_nan=True).encode()


def check_answer(response: httpx.Response, *, shape: str = "openai") -> None:
    """No 5xx; every error names itself in the API's error shape."""
    sent = response.request.content
    shown = sent[:300] + (b"... (%d bytes)" % len(sent) if len(sent) > 300 else b"")
    assert response.status_code < 500, (response.status_code, response.text[:300], shown)
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and error["message"], error
        if shape == "openai":
            assert "code" in error and "type" in error, error


def still_serves(base_url: str, headers: dict[str, str] | None = None) -> None:
    answer = httpx.post(f"{base_url}/v1/chat/completions", json=CHAT, headers=headers, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["role"] == "assistant"


@pytest.fixture(scope="module")
def fuzz_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    node = start_node(tmp_path_factory.mktemp("fuzz-node"), "--parallel", "2", "--ctx", "1024")
    yield node
    code = node.stop()
    assert code == 0, f"node did not exit cleanly after fuzzing:\n{node.log.read_text()}"


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=TIMEOUT_S) as c:
        yield c


def _post(client: httpx.Client, url: str, body: bytes) -> httpx.Response:
    return client.post(url, content=body, headers={"content-type": "application/json"})


ROUTES = [
    ("/v1/chat/completions", CHAT, CHAT_FIELDS),
    ("/v1/completions", COMPLETION, COMPLETION_FIELDS),
    ("/v1/embeddings", EMBEDDING, ["model", "input", "encoding_format", "dimensions"]),
]


@pytest.mark.parametrize(("path", "base", "fields"), ROUTES, ids=[r[0] for r in ROUTES])
def test_node_api_survives_fuzzing(
    fuzz_node: NodeProcess, client: httpx.Client, path: str, base: dict[str, Any], fields: list[str]
) -> None:
    @FUZZ
    @seed(SEED)
    @given(body=mutated(base, fields))
    def one(body: bytes) -> None:
        check_answer(_post(client, fuzz_node.url + path, body))
        assert fuzz_node.proc.poll() is None, fuzz_node.log.read_text()[-3000:]

    one()
    still_serves(fuzz_node.url)


def test_node_kv_routes_survive_fuzzing(fuzz_node: NodeProcess, client: httpx.Client) -> None:
    """Arbitrary bytes as a KV upload, and fuzzed prefill exports."""

    @FUZZ
    @seed(SEED)
    @given(blob=st.one_of(st.binary(max_size=4096), RAW_BODIES), prefill=mutated(CHAT, CHAT_FIELDS))
    def one(blob: bytes, prefill: bytes) -> None:
        upload = client.put(
            f"{fuzz_node.url}/v1/edgebox/kv/{MODEL}",
            content=blob,
            headers={"content-type": "application/octet-stream"},
        )
        check_answer(upload)
        check_answer(_post(client, fuzz_node.url + "/v1/edgebox/kv/prefill", prefill))

    one()
    still_serves(fuzz_node.url)


@pytest.fixture(scope="module")
def fuzz_router(
    fuzz_node: NodeProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeProcess]:
    router = start_router(tmp_path_factory.mktemp("fuzz-router"), "--node", fuzz_node.url)
    yield router
    router.stop()


@pytest.mark.parametrize(("path", "base", "fields"), ROUTES[:2], ids=[r[0] for r in ROUTES[:2]])
def test_router_api_survives_fuzzing(
    fuzz_router: NodeProcess,
    client: httpx.Client,
    path: str,
    base: dict[str, Any],
    fields: list[str],
) -> None:
    @FUZZ
    @seed(SEED)
    @given(body=mutated(base, fields))
    def one(body: bytes) -> None:
        check_answer(_post(client, fuzz_router.url + path, body))
        assert fuzz_router.proc.poll() is None, fuzz_router.log.read_text()[-3000:]

    one()
    still_serves(fuzz_router.url)


JOIN = {"token": "x" * 40, "name": "box", "host_key": "ssh-ed25519 AAAA", "api_port": 8080}
HEARTBEAT = {"models": [], "api": {"port": 8080}, "ssh_user": "root", "peer_keys": True}


def test_hub_api_survives_fuzzing(tmp_path: Path) -> None:
    """Unauthenticated and badly authenticated calls to every hub route: no 5xx (rate limits
    answer 429), and the hub still answers its admin afterwards."""
    from tests.fleet.test_hub import Hub, free_port

    hub = Hub(tmp_path / "hub", free_port(), tmp_path / "hub.log")
    hub.start()
    try:
        url = hub.info["urls"][0]
        routes = [
            ("POST", "/v1/hub/join", JOIN),
            ("POST", "/v1/hub/heartbeat", HEARTBEAT),
            ("POST", "/v1/hub/tokens", {"ttl_seconds": 60}),
            ("POST", "/v1/hub/users", {"name": "ann", "key": "ssh-ed25519 AAAA"}),
            ("PUT", "/v1/hub/me/key", {"ssh_public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1 me"}),
        ]
        with httpx.Client(verify=False, timeout=TIMEOUT_S) as c:

            @FUZZ
            @seed(SEED)
            @given(
                route=st.sampled_from(routes),
                body=st.data(),
                auth=st.one_of(
                    st.none(),
                    st.text(
                        alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60
                    ),
                ),
            )
            def one(route: tuple[str, str, dict[str, Any]], body: st.DataObject, auth: Any) -> None:
                method, path, base = route
                payload = body.draw(mutated(base, sorted(base)))
                headers = {"content-type": "application/json"}
                if auth is not None and auth.strip():  # HTTP forbids trailing blanks
                    headers["authorization"] = f"Bearer {auth.strip()}"
                answer = c.request(method, url + path, content=payload, headers=headers)
                check_answer(answer, shape="hub")
                gets = (
                    "/v1/hub/nodes",
                    "/v1/hub/events",
                    "/v1/hub/nodes/x%00y",
                    "/v1/hub/node-keys",
                    "/v1/hub/me",
                )
                for get_path in gets:
                    check_answer(c.get(url + get_path, headers=headers), shape="hub")

            one()
        assert hub.proc is not None and hub.proc.poll() is None
        assert isinstance(_after_rate_limit(lambda: hub.get("/v1/hub/nodes")), dict)
    finally:
        hub.stop()


def _after_rate_limit(call: Any, within_s: float = 60.0) -> Any:
    """`call()` once this address's rate limit lets it through (the fuzzing spent its burst:
    the hub answers 429 with Retry-After to every route until the bucket refills)."""
    from edgebox.fleet.hub.client import HubError

    deadline = time.monotonic() + within_s
    while True:
        try:
            return call()
        except HubError as exc:
            if exc.status != 429 or time.monotonic() > deadline:
                raise
            time.sleep(1.0)
