"""API key, bounded queue and client disconnects, each on a dedicated small node."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import NodeProcess, start_node

MODEL = "smollm2-135m"
KEY = "sk-edgebox-test-secret-1234"


@pytest.fixture(scope="module")
def one_slot_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    node = start_node(
        tmp_path_factory.mktemp("limits"),
        "--parallel",
        "1",
        "--max-queue",
        "1",
        "--ctx",
        "1024",
        env={"EDGEBOX_API_KEY": KEY},
    )
    yield node
    node.stop()
    assert KEY not in node.log.read_text()  # the secret never reaches the log


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def counting(max_tokens: int, **extra: object) -> dict[str, object]:
    """A greedy completion that runs to `max_tokens` (ignore_eos: another CPU's greedy reply
    may end early)."""
    prompt = ", ".join(str(i) for i in range(1, 30)) + ","
    body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    return {**body, "ignore_eos": True, **extra}


def test_api_key_is_enforced_on_v1_only(one_slot_node: NodeProcess) -> None:
    client = openai.OpenAI(base_url=one_slot_node.base_url, api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as excinfo:
        client.models.list()
    assert excinfo.value.body["code"] == "invalid_api_key"  # type: ignore[index]
    missing = httpx.get(one_slot_node.base_url + "/models")  # the SDK refuses to send no key
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    assert KEY not in missing.text
    good = openai.OpenAI(base_url=one_slot_node.base_url, api_key=KEY, max_retries=0)
    loaded = [m.id for m in good.models.list().data if m.model_extra["status"] == "loaded"]  # type: ignore[index]
    assert loaded == [MODEL, "all-minilm-l6-v2"]
    assert httpx.get(one_slot_node.url + "/health").status_code == 200


def generated_tokens(node: NodeProcess) -> float:
    text = httpx.get(node.url + "/metrics").text
    match = re.search(r'^edgebox_generated_tokens_total\{model="smollm2-135m"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def test_disconnect_mid_stream_frees_the_slot(one_slot_node: NodeProcess) -> None:
    body = counting(1000, stream=True)
    before = generated_tokens(one_slot_node)
    with httpx.stream(
        "POST", one_slot_node.base_url + "/completions", json=body, headers=auth(), timeout=60
    ) as r:
        lines = r.iter_lines()
        for _ in range(5):
            next(lines)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        health = httpx.get(one_slot_node.url + "/health").json()["models"][MODEL]
        if health["running"] == 0:
            break
        time.sleep(0.05)
    assert health["running"] == 0
    assert generated_tokens(one_slot_node) - before < 200  # stopped long before 1000 tokens
    # The only slot is free again: a new request is served, not queued behind the old one.
    reply = httpx.post(
        one_slot_node.base_url + "/completions",
        json={"model": MODEL, "prompt": "Hi", "max_tokens": 3},
        headers=auth(),
        timeout=30,
    )
    assert reply.status_code == 200


def test_queue_overflow_gets_429_with_retry_after(
    one_slot_node: NodeProcess, tmp_path: Path
) -> None:
    # Long enough that the running request is still decoding when the third one arrives, even
    # when a busy machine delays the second request's thread by seconds.
    long = counting(600)
    results: list[int] = []

    def send() -> None:
        results.append(
            httpx.post(
                one_slot_node.base_url + "/completions", json=long, headers=auth(), timeout=300
            ).status_code
        )

    workers = [threading.Thread(target=send) for _ in range(2)]  # one runs, one waits
    for w in workers:
        w.start()
    deadline = time.monotonic() + 20
    while True:
        health = httpx.get(one_slot_node.url + "/health").json()["models"][MODEL]
        if health["running"] == 1 and health["queued"] == 1:
            break
        assert time.monotonic() < deadline, f"never one running and one queued: {health}"
        time.sleep(0.02)
    overflow = httpx.post(
        one_slot_node.base_url + "/completions", json=long, headers=auth(), timeout=30
    )
    assert overflow.status_code == 429
    assert int(overflow.headers["retry-after"]) >= 1
    assert overflow.json()["error"]["code"] == "queue_full"
    for w in workers:
        w.join()
    assert results == [200, 200]  # nothing already accepted was lost


@pytest.fixture(scope="module")
def impatient_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    node = start_node(
        tmp_path_factory.mktemp("timeout"),
        "--parallel",
        "1",
        "--ctx",
        "2048",
        "--request-timeout",
        "1.5",
    )
    yield node
    assert node.stop() == 0


def test_request_timeout_gives_504_and_a_clear_stream_error(impatient_node: NodeProcess) -> None:
    long = counting(1500)
    started = time.monotonic()
    reply = httpx.post(impatient_node.base_url + "/completions", json=long, timeout=60)
    assert reply.status_code == 504, reply.text[:500]
    error = reply.json()["error"]
    assert error["code"] == "timeout" and "1.5 s" in error["message"]
    assert time.monotonic() - started < 10

    with httpx.stream(
        "POST", impatient_node.base_url + "/completions", json={**long, "stream": True}, timeout=60
    ) as r:
        assert r.status_code == 200  # headers went out before the limit passed
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert json.loads(events[-2]).get("error", {}).get("code") == "timeout", events[-3:]
    assert events[-1] == "[DONE]"
    assert sum('"text"' in e for e in events) > 3  # tokens streamed before the limit

    quick = httpx.post(
        impatient_node.base_url + "/completions",
        json={"model": MODEL, "prompt": "Hi", "max_tokens": 3},
        timeout=30,
    )
    assert quick.status_code == 200
