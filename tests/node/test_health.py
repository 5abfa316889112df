"""/health of a real node process: hardware profile, telemetry, load, and the old fields."""

from __future__ import annotations

import time

import httpx
import psutil

from tests.conftest import NodeProcess, wait_until

MODEL = "smollm2-135m"


def test_health_reports_hardware_telemetry_and_load(node: NodeProcess) -> None:
    body = httpx.get(node.url + "/health", timeout=5).json()
    assert body["status"] == "ok" and body["models"][MODEL]["slots"] == 4
    hw = body["hardware"]
    assert hw["hw_class"] == "cpu" and hw["memory_total"] == psutil.virtual_memory().total
    assert hw["accelerators"] == [] and hw["cores_logical"] >= 1
    tel = body["telemetry"]
    assert tel["memory_total"] == psutil.virtual_memory().total
    assert 0 < tel["memory_used"] < tel["memory_total"] and 0 <= tel["cpu_pct"] <= 100
    assert tel["accelerators"] == [] and len(tel["load_avg"]) == 3
    load = body["load"]
    assert MODEL in load["models"]  # next to the default embedding model
    assert load["active"] == sum(m["active"] for m in load["models"].values())
    assert load["queued"] == sum(m["queued"] for m in load["models"].values())


def test_telemetry_in_health_is_cached_for_at_most_a_second(node: NodeProcess) -> None:
    first = httpx.get(node.url + "/health", timeout=5).json()["telemetry"]["timestamp"]
    again = httpx.get(node.url + "/health", timeout=5).json()["telemetry"]["timestamp"]
    # The same sample, unless the first answer's was about to expire.
    assert again == first or first < time.time() - 0.9

    def stamp() -> float:
        return float(httpx.get(node.url + "/health", timeout=5).json()["telemetry"]["timestamp"])

    # A fresh sample within 1.1 s (the cache holds one for at most a second), polled for.
    wait_until(lambda: stamp() != first, timeout=1.1, what="a fresh telemetry sample")
    assert stamp() > first


def test_health_reports_the_speed_of_light_once_bandwidth_is_measured(node: NodeProcess) -> None:
    def bandwidth() -> dict | None:
        return httpx.get(node.url + "/health", timeout=5).json().get("bandwidth")

    wait_until(lambda: bandwidth() is not None, timeout=30)  # measured once, at start
    body = httpx.get(node.url + "/health", timeout=5).json()
    measured = body["bandwidth"]
    assert measured["gbps"] > 0 and measured["source"] == "measured:copy"
    model = body["models"][MODEL]
    expected = measured["gbps"] * 1e9 / model["size_bytes"]
    assert abs(model["speed_of_light_tok_s"] - expected) <= 0.1 + expected * 1e-3
    assert model["decode_tokens_per_s"] >= 0 and model["decode_sol_pct"] >= 0
    assert body["hardware"]["bandwidth_gbps"] == measured["gbps"]  # what `edgebox top` reads
