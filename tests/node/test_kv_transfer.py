"""KV export from one node process and import into another, over HTTP, as the router's
prefill/decode split will do it; plus the refusals (fingerprint, unknown handle, bad body)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from edgebox.api.kv import KV_HEADER, MAGIC, MEDIA_TYPE
from tests.conftest import NodeProcess, start_node

MODEL = "smollm2-135m"
MESSAGES = [
    {"role": "system", "content": "You are a terse geography tutor. " * 20},
    {"role": "user", "content": "Name three rivers in Europe and one fact about each."},
]


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, NodeProcess]]:
    tmp = tmp_path_factory.mktemp("kv")
    started: dict[str, NodeProcess] = {}
    try:
        # prefill and decode nodes: same model and KV layout, separate processes
        started["prefill"] = start_node(tmp, "--parallel", "2", "--ctx", "2048")
        started["decode"] = start_node(tmp, "--parallel", "2", "--ctx", "2048")
        # same model, different per-sequence context: an incompatible KV layout
        started["other"] = start_node(tmp, "--parallel", "2", "--ctx", "1024")
        yield started
    finally:
        for node in started.values():
            assert node.stop() == 0, node.log.read_text()


def prefill(node: NodeProcess, body: dict[str, object]) -> tuple[httpx.Headers, bytes]:
    with httpx.stream(
        "POST", node.base_url + "/edgebox/kv/prefill", json=body, timeout=120
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"] == MEDIA_TYPE
        return response.headers, b"".join(response.iter_bytes())


def upload(node: NodeProcess, snapshot: bytes, chunk: int = 64 * 1024) -> httpx.Response:
    def chunks() -> Iterator[bytes]:  # streamed, as a router relays it
        for start in range(0, len(snapshot), chunk):
            yield snapshot[start : start + chunk]

    return httpx.put(node.base_url + f"/edgebox/kv/{MODEL}", content=chunks(), timeout=120)


def test_prefill_on_one_node_decode_on_another_matches_an_unsplit_run(
    nodes: dict[str, NodeProcess],
) -> None:
    # The reference runs on the prefill node, so the decode node has never seen the prompt and
    # must import the snapshot; the export then reuses the logits the reference sampled from.
    reference = openai.OpenAI(base_url=nodes["prefill"].base_url, api_key="x", max_retries=0)
    unsplit = reference.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=40,
        temperature=0,  # type: ignore[arg-type]
    )
    client = openai.OpenAI(base_url=nodes["decode"].base_url, api_key="x", max_retries=0)

    headers, snapshot = prefill(nodes["prefill"], {"model": MODEL, "messages": MESSAGES})
    assert snapshot.startswith(MAGIC)
    n_tokens = int(headers["x-edgebox-kv-tokens"])
    assert n_tokens == unsplit.usage.prompt_tokens  # type: ignore[union-attr]
    header = json.loads(snapshot[len(MAGIC) : snapshot.index(b"\n", len(MAGIC))])
    assert header["bytes"] == int(headers["x-edgebox-kv-bytes"]) > 100_000
    assert header["logits"] == 4 * 49152  # float32 per SmolLM2 vocabulary entry
    assert header["fingerprint"]["n_ctx"] == "2048"

    uploaded = upload(nodes["decode"], snapshot)
    assert uploaded.status_code == 201, uploaded.text
    handle = uploaded.json()
    assert handle["tokens"] == n_tokens and handle["id"].startswith("kv-")

    split = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=40,
        temperature=0,
        extra_headers={KV_HEADER: handle["id"]},
    )
    assert split.choices[0].message.content == unsplit.choices[0].message.content
    details = split.usage.prompt_tokens_details  # type: ignore[union-attr]
    assert details is not None and details.cached_tokens == n_tokens

    # single use: the handle is gone
    again = httpx.post(
        nodes["decode"].base_url + "/chat/completions",
        json={"model": MODEL, "messages": MESSAGES, "max_tokens": 2},
        headers={KV_HEADER: handle["id"]},
    )
    assert again.status_code == 404
    assert again.json()["error"]["code"] == "kv_not_found"
    assert again.json()["error"]["param"] == KV_HEADER


def test_streamed_split_matches_too(nodes: dict[str, NodeProcess]) -> None:
    prompt = "The history of the printing press begins"
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 24, "temperature": 0}
    unsplit = httpx.post(nodes["prefill"].base_url + "/completions", json=body, timeout=60).json()
    _, snapshot = prefill(nodes["prefill"], {"model": MODEL, "prompt": prompt})
    handle = upload(nodes["decode"], snapshot).json()["id"]
    client = openai.OpenAI(base_url=nodes["decode"].base_url, api_key="x", max_retries=0)
    stream = client.completions.create(
        model=MODEL,
        prompt=prompt,
        max_tokens=24,
        temperature=0,
        stream=True,
        extra_headers={KV_HEADER: handle},
    )
    text = "".join(c.choices[0].text for c in stream if c.choices)
    assert text == unsplit["choices"][0]["text"]


def test_sampled_split_draws_the_same_first_token_and_logprobs(
    nodes: dict[str, NodeProcess],
) -> None:
    """A seeded, sampled request through the sampler chain, with log-probabilities: the decode
    node samples the first token from the exporter's logits, so text and figures agree."""
    prompt = "A list of unusual pets: 1."
    body = {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": 12,
        "temperature": 1.3,
        "seed": 11,
        "logprobs": 3,
    }
    here = nodes["prefill"].base_url + "/completions"
    unsplit = httpx.post(here, json=body, timeout=60).json()["choices"][0]
    _, snapshot = prefill(nodes["prefill"], {"model": MODEL, "prompt": prompt})
    handle = upload(nodes["decode"], snapshot).json()["id"]
    there = nodes["decode"].base_url + "/completions"
    split = httpx.post(there, json=body, headers={KV_HEADER: handle}, timeout=60).json()
    assert (
        split["usage"]["prompt_tokens_details"]["cached_tokens"] == split["usage"]["prompt_tokens"]
    )
    choice = split["choices"][0]
    assert choice["text"] == unsplit["text"]
    assert choice["logprobs"]["tokens"] == unsplit["logprobs"]["tokens"]
    assert choice["logprobs"]["token_logprobs"][0] == pytest.approx(
        unsplit["logprobs"]["token_logprobs"][0], abs=1e-5
    )
    assert choice["logprobs"]["top_logprobs"][0] == pytest.approx(
        unsplit["logprobs"]["top_logprobs"][0], abs=1e-5
    )


def test_incompatible_snapshot_is_refused_before_its_payload(
    nodes: dict[str, NodeProcess],
) -> None:
    _, snapshot = prefill(nodes["prefill"], {"model": MODEL, "messages": MESSAGES})
    refused = upload(nodes["other"], snapshot)
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert error["code"] == "kv_incompatible" and error["param"] == "fingerprint"
    assert "n_ctx '2048' != '1024'" in error["message"]
    # The node keeps serving.
    ok = httpx.post(
        nodes["other"].base_url + "/completions",
        json={"model": MODEL, "prompt": "Hello", "max_tokens": 2},
    )
    assert ok.status_code == 200


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not a snapshot at all", "wrong magic"),
        (MAGIC + b"{broken json\n", "unreadable header"),
        (MAGIC + b'{"fingerprint": {}, "tokens": [1], "bytes": 10}\n', "kv_incompatible"),
    ],
)
def test_bad_uploads_get_clear_errors(
    nodes: dict[str, NodeProcess], body: bytes, message: str
) -> None:
    response = upload(nodes["decode"], body)
    assert response.status_code in (400, 409)
    assert message in response.text


def test_truncated_upload_is_refused(nodes: dict[str, NodeProcess]) -> None:
    _, snapshot = prefill(nodes["prefill"], {"model": MODEL, "prompt": "Once upon a time"})
    response = upload(nodes["decode"], snapshot[:-100])
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_kv"
    assert "declared" in response.json()["error"]["message"]


def test_prefill_refuses_bad_input(nodes: dict[str, NodeProcess], tmp_path: Path) -> None:
    url = nodes["prefill"].base_url + "/edgebox/kv/prefill"
    unknown = httpx.post(url, json={"model": "nope", "prompt": "hi there"})
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "model"
    short = httpx.post(url, json={"model": MODEL, "prompt": [1]})
    assert short.status_code == 400 and "at least 2 tokens" in short.json()["error"]["message"]
    bad = httpx.post(url, json={"model": MODEL, "messages": [{"role": "wizard"}]})
    assert bad.status_code == 400 and bad.json()["error"]["param"].startswith("messages[0]")
