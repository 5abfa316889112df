"""A node that heals: a sequence that breaks `llama_decode` fails alone while the other
requests of its batches complete; the context is rebuilt when the broken cells cannot be
removed; /health says degraded meanwhile and /metrics counts it.

The breakage is real: a KV snapshot whose last cell sits at position INT32_MAX, which
llama.cpp loads and `seq_rm` can never remove. Upload validation refuses such a snapshot,
so the node runs with the test hook that skips it (EDGEBOX_TEST_UNCHECKED_KV=1)."""

from __future__ import annotations

import re
import struct
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from edgebox.api.kv import KV_HEADER
from edgebox.runtimes.llamacpp.engine import UNCHECKED_KV_ENV
from tests.conftest import NodeProcess, start_node
from tests.node.test_kv_hostile import (
    MESSAGES,
    MODEL,
    SCHEMA,
    complete,
    export,
    join,
    poisoned,
    split,
    upload,
)

STREAM_MESSAGES = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    layout = ("--parallel", "3", "--ctx", "2048")  # the exporter's must be the same
    exporter = start_node(tmp_path_factory.mktemp("heal-prefill"), *layout)
    proc = start_node(tmp_path_factory.mktemp("heal"), *layout, env={UNCHECKED_KV_ENV: "1"})
    proc.exporter = exporter  # type: ignore[attr-defined]
    yield proc
    assert proc.stop() == 0, proc.log.read_text()
    assert exporter.stop() == 0, exporter.log.read_text()


def metric(node: NodeProcess, name: str) -> float:
    text = httpx.get(node.url + "/metrics").text
    found = re.search(rf'^{name}{{model="{MODEL}"}} (\S+)$', text, re.M)
    assert found, f"{name} missing from /metrics"
    return float(found.group(1))


def test_a_poisoned_sequence_fails_alone_and_the_engine_rebuilds(node: NodeProcess) -> None:
    client = openai.OpenAI(base_url=node.base_url, api_key="x", max_retries=0)

    def story() -> openai.types.chat.ChatCompletion:
        return client.chat.completions.create(
            model=MODEL,
            messages=STREAM_MESSAGES,
            max_tokens=96,
            temperature=0,  # type: ignore[arg-type]
        )

    alone = story().choices[0].message.content
    snapshot = poisoned(export(node, {"model": MODEL, "messages": MESSAGES}))
    accepted = upload(node, snapshot)  # the hook: stored unchecked, as before validation
    assert accepted.status_code == 201, accepted.text

    results: dict[int, str | None] = {}
    first_tokens = threading.Barrier(3)

    def streamed(i: int) -> None:
        stream = client.chat.completions.create(
            model=MODEL,
            messages=STREAM_MESSAGES,  # type: ignore[arg-type]
            max_tokens=96,
            temperature=0,
            stream=True,
        )
        parts = []
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                if not parts:
                    first_tokens.wait(timeout=60)
                parts.append(chunk.choices[0].delta.content)
        results[i] = "".join(parts)

    threads = [threading.Thread(target=streamed, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    first_tokens.wait(timeout=60)  # both streams are decoding when the poisoned one joins
    failed = httpx.post(
        node.base_url + "/chat/completions",
        json={"model": MODEL, "messages": MESSAGES, "max_tokens": 8},
        headers={KV_HEADER: accepted.json()["id"]},
        timeout=60,
    )
    health = httpx.get(node.url + "/health").json()
    for t in threads:
        t.join(timeout=120)

    assert failed.status_code == 400, failed.text
    error = failed.json()["error"]
    assert error["code"] == "kv_invalid" and error["param"] == KV_HEADER
    # The two streams that shared its batches finished whole, with the text they give alone.
    assert results == {0: alone, 1: alone}
    assert health["status"] == "degraded"
    assert "llama" in health["models"][MODEL]["reason"]
    assert metric(node, "edgebox_decode_failures_total") >= 1
    assert metric(node, "edgebox_engine_rebuilds_total") == 1

    deadline = time.monotonic() + 30
    while httpx.get(node.url + "/health").json()["status"] != "ok":
        assert time.monotonic() < deadline, "the node stayed degraded"
        time.sleep(0.2)
    assert story().choices[0].message.content == alone


def test_logits_that_would_overflow_a_draw_never_take_the_node_down(node: NodeProcess) -> None:
    """Unchecked (the hook), a snapshot's logits of 3.4e38 reach the sampler: llama.cpp's
    chain divided them by the temperature, they overflowed, the draw landed on a token the
    request's grammar bans, and accepting it threw through llama.cpp's C API (the process
    aborted). The draw now subtracts the best logit before the temperature: nothing
    overflows, every token weighs the same, and the reply is one the grammar allows."""
    prompt = "Lakes of the world, deepest first:"
    header, state, logits = split(export(node, {"model": MODEL, "prompt": prompt}))
    hostile = struct.pack("<f", 3.4e38) * (len(logits) // 4)
    accepted = upload(node, join(header, state, hostile))
    assert accepted.status_code == 201, accepted.text
    reply = complete(node, accepted.json()["id"], prompt, temperature=0.5, response_format=SCHEMA)
    assert node.proc.poll() is None, node.log.read_text()[-2000:]
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["text"].startswith("{")  # the schema's object
    ok = httpx.post(
        node.base_url + "/completions",
        json={"model": MODEL, "prompt": prompt, "max_tokens": 4},
        timeout=60,
    )
    assert ok.status_code == 200, ok.text
