"""Bursting end to end: a real 1-slot node, a real keyed node playing the cloud, `edgebox router`
as a process with client API keys (one local-only). The router bursts when the predicted wait
for the local slot passes `ttft_target_s` or the local context is too small, comes back local
once the queue drains, and never sends a local-only key's request to the cloud. A second
router over the same two nodes runs the `overflow` policy: it bursts once the local queue is
`overflow_queue_depth` deep and comes back local when it drains."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import NodeProcess, start_node
from tests.router.conftest import start_router

MODEL = "smollm2-135m"
CLOUD_KEY = "sk-test-cloud-51c0"
FULL_KEY = "rk-full-2b7e"
LOCAL_KEY = "rk-local-9d41"


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, NodeProcess]]:
    """A 1-slot local node and a keyed 2-slot node that plays the cloud."""
    tmp = tmp_path_factory.mktemp("burst-nodes")
    started: dict[str, NodeProcess] = {}
    try:
        with ThreadPoolExecutor(2) as pool:
            local = pool.submit(
                start_node, tmp, "--parallel", "1", "--ctx", "512", "--threads", "1"
            )
            cloud = pool.submit(
                start_node,
                tmp,
                "--parallel",
                "2",
                "--ctx",
                "2048",
                "--threads",
                "1",
                env={"EDGEBOX_API_KEY": CLOUD_KEY},
            )
            started["local"], started["cloud"] = local.result(), cloud.result()
        yield started
    finally:
        for proc in started.values():
            proc.stop()


@pytest.fixture(scope="module")
def burst(
    nodes: dict[str, NodeProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, NodeProcess]]:
    tmp = tmp_path_factory.mktemp("burst")
    started = dict(nodes)
    config = tmp / "router.toml"
    config.write_text(
        f"""
poll_interval_s = 0.3

[[keys]]
env = "ROUTER_LOCAL_KEY"
local_only = true

[[cloud]]
name = "testcloud"
base_url = "{started["cloud"].base_url}"
api_key_env = "TEST_CLOUD_KEY"
when = "fallback"
ttft_target_s = 0.05
models = {{ "{MODEL}" = "{MODEL}" }}
"""
    )
    env = {"TEST_CLOUD_KEY": CLOUD_KEY, "ROUTER_LOCAL_KEY": LOCAL_KEY, "EDGEBOX_API_KEY": FULL_KEY}
    try:
        started["router"] = start_router(
            tmp,
            "--node",
            started["local"].url,
            "--config",
            str(config),
            env=env,
            api_key=FULL_KEY,
        )
        yield started
    finally:
        if "router" in started:
            started["router"].stop()


def post(router: NodeProcess, key: str, content: str, max_tokens: int = 6) -> httpx.Response:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    return httpx.post(
        router.base_url + "/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {key}"},
        timeout=120,
    )


def target(response: httpx.Response) -> str:
    return response.headers["x-edgebox-route"].split(";")[0]


def node_load(router: NodeProcess, node: NodeProcess) -> dict[str, float]:
    health = httpx.get(router.url + "/health", timeout=5).json()
    load: dict[str, float] = health["nodes"][node.url.removeprefix("http://")]["models"][MODEL]
    return load


def cloud_chats(cloud: NodeProcess) -> float:
    text = httpx.get(cloud.url + "/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("edgebox_requests_total{") and "chat/completions" in line
    )


def wait_for(check: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_requests_without_a_router_key_are_refused(burst: dict[str, NodeProcess]) -> None:
    response = httpx.post(burst["router"].base_url + "/chat/completions", json={"model": MODEL})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_a_saturated_slot_bursts_on_the_ttft_target_but_never_for_a_local_only_key(
    burst: dict[str, NodeProcess],
) -> None:
    router, local, cloud = burst["router"], burst["local"], burst["cloud"]
    local_name = local.url.removeprefix("http://")
    warm = post(router, FULL_KEY, "Say hi.")  # idle slot: local, and a request time is measured
    assert warm.status_code == 200 and target(warm) == local_name
    wait_for(lambda: node_load(router, local)["mean_request_s"] > 0, "no request time measured")

    started = threading.Event()
    long_answer: list[str] = []

    def hold_the_slot() -> None:
        body = {
            "model": MODEL,
            "stream": True,
            "max_tokens": 48,
            "temperature": 0,
            "messages": [{"role": "user", "content": "Count from 1 to 100, comma separated."}],
        }
        with httpx.stream(
            "POST",
            router.base_url + "/chat/completions",
            json=body,
            timeout=120,
            headers={"authorization": f"Bearer {LOCAL_KEY}"},
        ) as response:
            long_answer.append(target(response))
            for _ in response.iter_lines():
                started.set()

    holder = threading.Thread(target=hold_the_slot)
    holder.start()
    try:
        assert started.wait(60), "the long request never streamed"
        burst_response = post(router, FULL_KEY, "Say hi.")
        assert burst_response.status_code == 200
        assert burst_response.headers["x-edgebox-route"] == "cloud:testcloud;reason=ttft"
        before = cloud_chats(cloud)
        kept = post(router, LOCAL_KEY, "Say hi.")  # waits for the slot instead of bursting
        assert kept.status_code == 200 and target(kept) == local_name
        assert cloud_chats(cloud) == before
    finally:
        holder.join(120)
    assert long_answer == [local_name]
    wait_for(
        lambda: (lambda m: m["running"] + m["queued"] == 0)(node_load(router, local)),
        "the local queue did not drain",
    )
    back = post(router, FULL_KEY, "Say hi.")
    assert back.status_code == 200 and target(back) == local_name


def test_a_prompt_beyond_the_local_context_bursts_with_reason_context(
    burst: dict[str, NodeProcess],
) -> None:
    router = burst["router"]
    assert node_load(router, burst["local"])["n_ctx"] == 512
    long_prompt = "Summarise: " + "the cat sat on the mat. " * 100  # ~600 estimated tokens
    response = post(router, FULL_KEY, long_prompt, max_tokens=4)
    assert response.status_code == 200
    assert response.headers["x-edgebox-route"] == "cloud:testcloud;reason=context"
    refused = post(router, LOCAL_KEY, long_prompt, max_tokens=4)  # no cloud: the node refuses
    assert refused.status_code == 400  # not a 503, which clients would retry
    assert refused.json()["error"]["code"] == "context_length_exceeded"
    assert ";reason=context-check" in refused.headers["x-edgebox-route"]
    assert LOCAL_KEY not in burst["router"].log.read_text()


def test_keys_never_reach_the_router_log(burst: dict[str, NodeProcess], tmp_path: Path) -> None:
    text = burst["router"].log.read_text()
    assert all(k not in text for k in (CLOUD_KEY, FULL_KEY, LOCAL_KEY))


@pytest.fixture(scope="module")
def overflow(
    nodes: dict[str, NodeProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, NodeProcess]]:
    tmp = tmp_path_factory.mktemp("overflow")
    config = tmp / "router.toml"
    config.write_text(
        f"""
poll_interval_s = 0.2

[[cloud]]
name = "testcloud"
base_url = "{nodes["cloud"].base_url}"
api_key_env = "TEST_CLOUD_KEY"
when = "overflow"
overflow_queue_depth = 1
models = {{ "{MODEL}" = "{MODEL}" }}
"""
    )
    router = start_router(
        tmp,
        "--node",
        nodes["local"].url,
        "--config",
        str(config),
        env={"TEST_CLOUD_KEY": CLOUD_KEY},
    )
    yield {**nodes, "router": router}
    router.stop()


def routed(router: NodeProcess, target_name: str) -> float:
    """Requests the router answered through `target_name`, from its /metrics."""
    text = httpx.get(router.url + "/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("edgebox_router_requests_total{") and f'target="{target_name}"' in line
    )


def test_overflow_bursts_while_the_local_queue_is_full_then_comes_back_local(
    overflow: dict[str, NodeProcess],
) -> None:
    router, local = overflow["router"], overflow["local"]
    local_name, cloud_name = local.url.removeprefix("http://"), "cloud:testcloud"

    def chat(content: str, max_tokens: int = 6) -> httpx.Response:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens,
            "temperature": 0,
        }
        return httpx.post(router.base_url + "/chat/completions", json=body, timeout=120)

    idle = chat("Say hi.")  # an idle slot: local
    assert idle.status_code == 200 and target(idle) == local_name
    cloud_before = routed(router, cloud_name)
    held: list[httpx.Response] = []
    streaming = threading.Event()

    def hold_the_slot() -> None:  # greedy, this prompt runs to max_tokens: ~3 s on one core
        content = "List the numbers from 1 to 300, comma separated."
        body = {
            "model": MODEL,
            "stream": True,
            "max_tokens": 120,
            "temperature": 0,
            "messages": [{"role": "user", "content": content}],
        }
        with httpx.stream(
            "POST", router.base_url + "/chat/completions", json=body, timeout=120
        ) as response:
            held.append(response)
            for _ in response.iter_lines():
                streaming.set()

    holder = threading.Thread(target=hold_the_slot)
    waiter = threading.Thread(target=lambda: held.append(chat("Say hi.")))
    holder.start()
    try:
        assert streaming.wait(60), "the long request never streamed"
        waiter.start()  # queue depth 0 < 1: still local, and it waits behind the long one
        wait_for(lambda: node_load(router, local)["queued"] >= 1, "nothing queued locally", 30)
        burst_response = chat("Say hi.")
        assert burst_response.status_code == 200
        assert burst_response.headers["x-edgebox-route"] == f"{cloud_name};reason=overflow"
    finally:
        holder.join(120)
        if waiter.ident is not None:  # started
            waiter.join(120)
    assert sorted(target(r) for r in held) == [local_name, local_name]
    assert routed(router, cloud_name) == cloud_before + 1
    wait_for(
        lambda: (lambda m: m["running"] + m["queued"] == 0)(node_load(router, local)),
        "the local queue did not drain",
    )
    local_before = routed(router, local_name)
    back = chat("Say hi.")
    assert back.status_code == 200 and back.headers["x-edgebox-route"].startswith(local_name)
    assert routed(router, local_name) == local_before + 1
    assert routed(router, cloud_name) == cloud_before + 1
