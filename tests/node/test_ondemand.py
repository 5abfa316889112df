"""Load on demand on a real node: two models on disk (SmolLM2 and Gemma 3 270M), a memory
budget that holds one. Alternating requests load one and evict the other, never both loaded
(watched through /health all along); a request during a load waits for it; keep_alive unloads."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from edgebox.models.footprint import model_footprint
from tests.conftest import NodeProcess, start_node, wait_until

SMOL, GEMMA = "smollm2-135m", "gemma3-270m"
CTX = 512


@pytest.fixture(scope="module")
def budget(smollm2_path: Path, gemma_path: Path) -> int:
    smol = model_footprint(smollm2_path).need(CTX)
    gemma = model_footprint(gemma_path).need(CTX)
    room = max(smol, gemma) + 16 * 2**20
    assert room < smol + gemma, "the budget must not hold both models"
    return room


@pytest.fixture(scope="module")
def ondemand_node(tmp_path_factory: pytest.TempPathFactory, budget: int) -> Iterator[NodeProcess]:
    tmp = tmp_path_factory.mktemp("ondemand")
    node = start_node(
        tmp,
        *("--model", SMOL, "--ctx", str(CTX), "--parallel", "1"),
        *("--memory-budget", str(budget), "--keep-alive", "10m", "--no-mdns", "--no-tunnel"),
        env={"EDGEBOX_MODELS_DIR": str(tmp / "store")},
    )
    yield node
    node.stop()


class LoadedWatch:
    """Polls /health in a thread and keeps every set of loaded models it saw."""

    def __init__(self, url: str) -> None:
        self.url, self.seen = url, set[frozenset[str]]()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                with_load = client.get(self.url + "/health").json()
                self.seen.add(frozenset(with_load["models"]) & {SMOL, GEMMA})
                self._stop.wait(0.01)

    def __enter__(self) -> LoadedWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def complete(node: NodeProcess, model: str, **extra: Any) -> str:
    client = openai.OpenAI(base_url=node.base_url, api_key="x", max_retries=0, timeout=120)
    out = client.completions.create(
        model=model, prompt="The sky is", max_tokens=3, temperature=0, extra_body=extra
    )
    assert out.model == model
    return out.choices[0].text


def statuses(node: NodeProcess) -> dict[str, str]:
    cards = httpx.get(node.base_url + "/models", timeout=10).json()["data"]
    return {c["id"]: c["status"] for c in cards}


def health(node: NodeProcess) -> dict[str, Any]:
    report: dict[str, Any] = httpx.get(node.url + "/health", timeout=10).json()
    return report


def loads_of(node: NodeProcess, model: str) -> int:
    events = health(node)["model_events"]
    return sum(1 for e in events if e["model"] == model and e["event"] == "loaded")


def test_alternating_requests_load_and_evict_never_both_loaded(ondemand_node: NodeProcess) -> None:
    assert statuses(ondemand_node)[GEMMA] == "available"
    with LoadedWatch(ondemand_node.url) as watch:
        for model, other in ((GEMMA, SMOL), (SMOL, GEMMA), (GEMMA, SMOL), (SMOL, GEMMA)):
            complete(ondemand_node, model)
            now = statuses(ondemand_node)
            assert (now[model], now[other]) == ("loaded", "available")
    assert frozenset({SMOL, GEMMA}) not in watch.seen
    assert {frozenset({SMOL}), frozenset({GEMMA})} <= watch.seen
    report = health(ondemand_node)
    assert report["memory_used"] <= report["memory_budget"]
    reasons = {e["reason"] for e in report["model_events"] if e["event"] == "unloaded"}
    assert {f"evicted for {GEMMA}", f"evicted for {SMOL}"} <= reasons


def test_requests_during_a_load_wait_for_that_one_load(ondemand_node: NodeProcess) -> None:
    complete(ondemand_node, SMOL)  # Gemma is on disk, not loaded
    before = loads_of(ondemand_node, GEMMA)
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda _: complete(ondemand_node, GEMMA), range(3)))
    assert len(answers) == 3 and len(set(answers)) == 1  # greedy: the same text each time
    assert loads_of(ondemand_node, GEMMA) == before + 1  # one load served all three


def test_keep_alive_zero_unloads_after_the_request(ondemand_node: NodeProcess) -> None:
    complete(ondemand_node, GEMMA, keep_alive=0)

    def last_event() -> dict[str, Any]:
        event: dict[str, Any] = health(ondemand_node)["model_events"][-1]
        return event

    wait_until(lambda: last_event()["event"] == "unloaded", 10, "Gemma unloaded")
    assert last_event()["model"] == GEMMA and "keep_alive" in last_event()["reason"]
    assert GEMMA not in health(ondemand_node)["models"]


def test_keep_alive_expiry_unloads_an_idle_model(ondemand_node: NodeProcess) -> None:
    complete(ondemand_node, SMOL, keep_alive="1s")
    assert SMOL in health(ondemand_node)["models"]
    waited = wait_until(lambda: SMOL not in health(ondemand_node)["models"], 10, "SmolLM2 idle")
    assert waited >= 0.5
    complete(ondemand_node, SMOL)  # and it loads again on the next request


def test_a_bad_keep_alive_is_a_400_naming_it(ondemand_node: NodeProcess) -> None:
    r = httpx.post(
        ondemand_node.base_url + "/completions",
        json={"model": SMOL, "prompt": "x", "max_tokens": 1, "keep_alive": "soon"},
        timeout=30,
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "keep_alive"
