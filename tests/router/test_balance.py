"""Two equal real nodes behind a real router: a concurrent burst splits near evenly, even when
one node was busy (high measured tokens/s) and the other idle when the router last polled."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import NodeProcess, start_node, wait_until
from tests.router.conftest import start_router

pytestmark = pytest.mark.system
MODEL = "smollm2-135m"
BURST = 14
NODE_ARGS = ("--parallel", "8", "--ctx", "2048", "--threads", "1")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, NodeProcess]]:
    tmp = tmp_path_factory.mktemp("balance")
    started: dict[str, NodeProcess] = {}
    try:
        with ThreadPoolExecutor(2) as pool:
            futures = {name: pool.submit(start_node, tmp, *NODE_ARGS) for name in ("a", "b")}
            started.update({name: f.result() for name, f in futures.items()})
        config = tmp / "router.toml"
        config.write_text("poll_interval_s = 0.25\n")
        started["router"] = start_router(
            tmp, "--node", started["a"].url, "--node", started["b"].url, "--config", str(config)
        )
        yield started
    finally:
        for proc in started.values():
            proc.stop()


def _decode_rate(node: NodeProcess) -> float:
    for line in httpx.get(node.url + "/metrics", timeout=5).text.splitlines():
        if line.startswith("edgebox_decode_tokens_per_second{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _router_sees_busy(router: NodeProcess, node: NodeProcess) -> bool:
    """Whether the router's last poll of `node` saw it decoding (its /health shows the poll)."""
    polled = httpx.get(router.url + "/health", timeout=5).json()["nodes"]
    load = polled[node.url.removeprefix("http://")]["models"].get(MODEL, {})
    return load.get("decode_tokens_per_s", 0) > 0 and load.get("running", 0) > 0


def test_a_burst_splits_evenly_over_two_equal_nodes(pair: dict[str, NodeProcess]) -> None:
    a, b, router = pair["a"], pair["b"], pair["router"]
    # Keep node a generating (directly, not through the router) so its measured total rate is
    # high while b's is zero: what the router sees on a fleet where one box just served a burst.
    stop = threading.Event()

    def keep_busy() -> None:
        while not stop.is_set():
            httpx.post(
                a.base_url + "/completions",
                timeout=120,
                json={"model": MODEL, "prompt": "Count:", "max_tokens": 48},
            )

    warmers = [threading.Thread(target=keep_busy) for _ in range(2)]
    for t in warmers:
        t.start()
    try:
        deadline = time.monotonic() + 30
        while _decode_rate(a) <= 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _decode_rate(a) > 0 and _decode_rate(b) == 0
        wait_until(
            lambda: _router_sees_busy(router, a), timeout=30, what="the router to see a busy"
        )

        def one(i: int) -> str:
            answer = httpx.post(
                router.base_url + "/completions",
                json={"model": MODEL, "prompt": f"Story {i}: once upon a time", "max_tokens": 24},
                timeout=300,
            )
            assert answer.status_code == 200, answer.text
            return answer.headers["x-edgebox-route"].partition(";")[0]

        with ThreadPoolExecutor(BURST) as pool:
            used = Counter(pool.map(one, range(BURST)))
    finally:
        stop.set()
        for t in warmers:
            t.join()
    on_b = used[b.url.removeprefix("http://")]
    # a already holds two streams of its own, so an even split of all work leaves b a bit more.
    assert on_b >= BURST // 2 - 1, used
