"""Hostile KV uploads against a real node: corrupt content behind valid framing and
fingerprint is refused before it is stored and the node keeps serving everyone; the KV
routes of a keyless node answer loopback only; one client cannot hold the whole store."""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from edgebox.api.kv import KV_HEADER, MAGIC
from edgebox.node.app import create_app
from edgebox.node.state import NodeState
from tests.conftest import NodeProcess, start_node

MODEL = "smollm2-135m"
MESSAGES = [
    {"role": "system", "content": "You answer in one short sentence. " * 10},
    {"role": "user", "content": "What is the capital of France?"},
]
POISON = 0x7FFFFFFF  # a position llama.cpp's seq_rm can never remove again


@pytest.fixture(scope="module")
def prefill_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """Exports snapshots: the node importing them must not hold the prefix already, or it
    would use its own cells and never load the upload."""
    proc = start_node(tmp_path_factory.mktemp("kvp"), "--parallel", "2", "--ctx", "2048")
    yield proc
    assert proc.stop() == 0, proc.log.read_text()


@pytest.fixture(scope="module")
def node(
    tmp_path_factory: pytest.TempPathFactory, prefill_node: NodeProcess
) -> Iterator[NodeProcess]:
    proc = start_node(tmp_path_factory.mktemp("kvh"), "--parallel", "2", "--ctx", "2048")
    proc.exporter = prefill_node  # type: ignore[attr-defined]
    yield proc
    assert proc.stop() == 0, proc.log.read_text()


def export(node: NodeProcess, body: dict[str, object]) -> bytes:
    """A snapshot from the node's exporter (see `prefill_node`), else from the node itself."""
    source = getattr(node, "exporter", node)
    response = httpx.post(source.base_url + "/edgebox/kv/prefill", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.content


def split(snapshot: bytes) -> tuple[dict, bytes, bytes]:
    """Header, sequence state and logits of a snapshot."""
    end = snapshot.index(b"\n", len(MAGIC))
    header = json.loads(snapshot[len(MAGIC) : end])
    payload = snapshot[end + 1 :]
    return header, payload[: header["bytes"]], payload[header["bytes"] :]


def join(header: dict, state: bytes, logits: bytes = b"") -> bytes:
    header = {**header, "bytes": len(state), "logits": len(logits)}
    return MAGIC + json.dumps(header).encode() + b"\n" + state + logits


def cell_offsets(state: bytes) -> tuple[int, int]:
    """Offset of the first cell record and the cell count, in llama.cpp's sequence state
    (u32 magic, i32 seq_id, u32 n_stream, then per stream u32 cell_count; cells: i32 pos,
    u32 n_seq_id, i32 seq_id for a model without cell extensions such as SmolLM2)."""
    (n_stream,) = struct.unpack_from("<I", state, 8)
    at = 12
    for _ in range(n_stream):
        (count,) = struct.unpack_from("<I", state, at)
        at += 4
        if count:
            return at, count
    raise AssertionError("no cells in the exported state")


def poisoned(snapshot: bytes, position: int = POISON) -> bytes:
    header, state, logits = split(snapshot)
    first, count = cell_offsets(state)
    buf = bytearray(state)
    struct.pack_into("<i", buf, first + 12 * (count - 1), position)  # the last cell
    return join(header, bytes(buf), logits)


def upload(node: NodeProcess, snapshot: bytes) -> httpx.Response:
    return httpx.put(node.base_url + f"/edgebox/kv/{MODEL}", content=snapshot, timeout=120)


def complete(node: NodeProcess, kv_id: str, prompt: str, **body: object) -> httpx.Response:
    """A completion of `prompt` naming the upload `kv_id` (a few tokens unless `body` says)."""
    return httpx.post(
        node.base_url + "/completions",
        json={"model": MODEL, "prompt": prompt, "max_tokens": 4, **body},
        headers={KV_HEADER: kv_id},
        timeout=60,
    )


def chat_ok(node: NodeProcess, n: int) -> list[str]:
    client = openai.OpenAI(base_url=node.base_url, api_key="x", max_retries=0)

    def one(i: int) -> str:
        reply = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"Count to {i + 3}."}],
            max_tokens=12,
        )
        return reply.choices[0].message.content or ""

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_poisoned_cell_position_is_refused_and_everyone_keeps_being_served(
    node: NodeProcess,
) -> None:
    snapshot = export(node, {"model": MODEL, "messages": MESSAGES})
    refused = upload(node, poisoned(snapshot))
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["code"] == "invalid_kv" and error["param"] == "body"
    assert "positions must be exactly 0.." in error["message"]
    assert str(POISON) in error["message"]
    # Before the fix the upload was stored, the next request loaded it, and from then on
    # every batch holding that slot failed with 500: here every chat is answered.
    for _ in range(3):
        assert all(chat_ok(node, 4))
    health = httpx.get(node.url + "/health").json()
    assert health["status"] == "ok"
    # The unspoilt snapshot is still taken and used.
    good = upload(node, snapshot)
    assert good.status_code == 201, good.text
    used = httpx.post(
        node.base_url + "/chat/completions",
        json={"model": MODEL, "messages": MESSAGES, "max_tokens": 4},
        headers={KV_HEADER: good.json()["id"]},
        timeout=60,
    )
    assert used.status_code == 200, used.text


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        ("duplicate", "positions must be exactly 0.."),
        ("header_short", "cells for"),
        ("trailing", "bytes follow the last cache section"),
        ("truncated", "the state ends inside"),
        ("row_size", "layer 0: K type 1, row 386 bytes; this engine has type 1, row 384"),
        ("two_seq", "exactly one sequence"),
    ],
)
def test_inconsistent_states_are_refused_with_the_reason(
    node: NodeProcess, damage: str, words: str
) -> None:
    snapshot = export(node, {"model": MODEL, "prompt": "The tallest mountains on Earth are"})
    header, state, _ = split(snapshot)
    first, count = cell_offsets(state)
    buf = bytearray(state)
    if damage == "duplicate":  # the last cell repeats the first position: min/max still fine
        struct.pack_into("<i", buf, first + 12 * (count - 1), 0)
    elif damage == "header_short":  # one cell more than the header's tokens
        header = {**header, "tokens": header["tokens"][:-1]}
    elif damage == "trailing":
        buf += b"\0" * 16
    elif damage == "truncated":
        del buf[-8:]
    elif damage == "row_size":  # the first layer's K row size, after v_trans and n_layer
        at = first + 12 * count + 8 + 4
        struct.pack_into("<Q", buf, at, struct.unpack_from("<Q", buf, at)[0] + 2)
    elif damage == "two_seq":
        struct.pack_into("<I", buf, first + 4, 2)
    refused = upload(node, join(header, bytes(buf)))
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "invalid_kv"
    assert words in refused.json()["error"]["message"]


@pytest.mark.parametrize(
    ("damage", "status", "words"),
    [
        ("short", 400, "this model's vocabulary of 49152 tokens takes 196608"),
        ("nan", 400, "logits are not all finite"),
        ("odd", 400, "is not a float32 vocabulary row"),
        ("huge", 400, "is not a float32 vocabulary row"),
    ],
)
def test_bad_logits_are_refused_before_they_pick_a_token(
    node: NodeProcess, damage: str, status: int, words: str
) -> None:
    """A snapshot's logits decide the first token directly: their size and values are
    checked at upload, before any request may use them."""
    snapshot = export(node, {"model": MODEL, "prompt": "Rivers of the world, longest first:"})
    header, state, logits = split(snapshot)
    assert len(logits) == 4 * 49152
    bad = {
        "short": logits[:-8],
        "nan": logits[:400] + struct.pack("<f", float("nan")) + logits[404:],
        "odd": logits + b"\0",
        "huge": logits * 100,
    }[damage]
    refused = upload(node, join(header, state, bad))
    assert refused.status_code == status, refused.text
    assert refused.json()["error"]["code"] == "invalid_kv"
    assert words in refused.json()["error"]["message"]
    assert chat_ok(node, 2)


@pytest.mark.parametrize("declared", [-4, "196608", None, 1e30, True, [4]])
def test_a_logits_count_that_is_no_byte_count_is_refused_at_the_header(
    node: NodeProcess, declared: object
) -> None:
    header, state, logits = split(export(node, {"model": MODEL, "prompt": "Seas, saltiest first:"}))
    line = json.dumps({**header, "bytes": len(state), "logits": declared}).encode()
    refused = upload(node, MAGIC + line + b"\n" + state + logits)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "invalid_kv"
    assert chat_ok(node, 1)


SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "r",
        "schema": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
    },
}


@pytest.mark.parametrize("value", [3.4e38, -3.4e38, 1e6])
def test_finite_logits_no_model_computes_are_refused(node: NodeProcess, value: float) -> None:
    """Finite but huge logits overflow in the sampler chain (logit / temperature): every
    grammar-allowed token becomes NaN, the draw lands on a banned one and llama.cpp's grammar
    throws through its C API, aborting the node. They are refused at upload."""
    prompt = "Rivers of the world, longest first:"
    header, state, logits = split(export(node, {"model": MODEL, "prompt": prompt}))
    hostile = struct.pack("<f", value) * (len(logits) // 4)
    uploaded = upload(node, join(header, state, hostile))
    if uploaded.status_code == 201:  # what it would do: the node must still answer after
        complete(node, uploaded.json()["id"], prompt, temperature=0.5, response_format=SCHEMA)
        assert chat_ok(node, 1), "the node died"
    assert uploaded.status_code == 400, uploaded.text
    assert uploaded.json()["error"]["code"] == "invalid_kv"
    assert "larger than any model computes" in uploaded.json()["error"]["message"]
    assert chat_ok(node, 2)


def test_a_whole_prompt_without_its_logits_is_not_a_usable_prefix(node: NodeProcess) -> None:
    """Without the logits after its last token, a snapshot must leave a token to decode."""
    prompt = "Mountains of the world, highest first:"
    header, state, _ = split(export(node, {"model": MODEL, "prompt": prompt}))
    uploaded = upload(node, join(header, state))
    assert uploaded.status_code == 201, uploaded.text
    used = complete(node, uploaded.json()["id"], prompt)
    assert used.status_code == 409, used.text
    assert "not a proper prefix" in used.json()["error"]["message"]
    longer = upload(node, join(header, state))
    extended = complete(node, longer.json()["id"], prompt + " Everest")
    assert extended.status_code == 200, extended.text
    cached = extended.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached == len(header["tokens"])


def test_one_client_cannot_hold_the_store(node: NodeProcess) -> None:
    snapshot = export(node, {"model": MODEL, "prompt": "A short note on rivers"})
    ids = []
    for _ in range(8):  # KVStore.per_client_uploads
        uploaded = upload(node, snapshot)
        assert uploaded.status_code == 201, uploaded.text
        assert uploaded.json()["expires_in"] == 30
        ids.append(uploaded.json()["id"])
    refused = upload(node, snapshot)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "kv_client_limit"
    assert 1 <= int(refused.headers["retry-after"]) <= 30
    # Using an upload frees the client's share.
    for kv_id in ids:
        used = complete(node, kv_id, "A short note on rivers", max_tokens=1)
        assert used.status_code == 200, used.text
    assert upload(node, snapshot).status_code == 201


def _asgi_put(app: object, host: str, headers: dict[str, str] | None = None) -> httpx.Response:
    import asyncio

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(host, 1234))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            return await client.put(f"/v1/edgebox/kv/{MODEL}", content=b"x", headers=headers)

    return asyncio.run(call())


def test_kv_routes_of_a_keyless_node_answer_loopback_only() -> None:
    app = create_app(NodeState({}))
    remote = _asgi_put(app, "10.0.0.5")
    assert remote.status_code == 403
    assert remote.json()["error"]["code"] == "kv_needs_api_key"
    # loopback passes the rule (and then finds no such model here)
    assert _asgi_put(app, "127.0.0.1").status_code == 404
    assert _asgi_put(app, "::1").status_code == 404
    # with a key, the key decides wherever the client is
    keyed = create_app(NodeState({}), api_key="k")
    assert _asgi_put(keyed, "10.0.0.5").status_code == 401
    auth = {"Authorization": "Bearer k"}
    assert _asgi_put(keyed, "10.0.0.5", auth).status_code == 404


def test_upload_validation_cost(node: NodeProcess) -> None:
    """A ~1000-token upload: the time from the last byte to 201 stays small (printed)."""
    text = " ".join(f"item {i} is on the list;" for i in range(110))
    snapshot = export(node, {"model": MODEL, "prompt": text})
    n = len(split(snapshot)[0]["tokens"])
    assert n >= 900
    times = []
    for _ in range(5):
        started = time.perf_counter()
        uploaded = upload(node, snapshot)
        times.append(time.perf_counter() - started)
        assert uploaded.status_code == 201, uploaded.text
        complete(node, uploaded.json()["id"], text, max_tokens=1)
    print(f"\nupload of {n} tokens, {len(snapshot)} bytes: {min(times) * 1000:.1f} ms best of 5")
