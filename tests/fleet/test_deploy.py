"""`edgebox deploy`'s plan per node, from their /health reports (pure)."""

from __future__ import annotations

from typing import Any

from edgebox.api.health import HealthReport
from edgebox.fleet.deploy import plan_deploy

MB = 10**6


def report(**fields: Any) -> HealthReport:
    return HealthReport.parse({"status": "ok", **fields})


def test_each_node_gets_what_it_needs() -> None:
    reports = {
        "http://a": report(models={"m": {"size_bytes": 200 * MB}}, memory_budget=1000 * MB),
        "http://b": report(available=[{"name": "m", "size_bytes": 200 * MB}], memory_budget=10**9),
        "http://c": report(memory_budget=1000 * MB),
        "http://small": report(memory_budget=50 * MB),
    }
    steps = plan_deploy("m", reports, load=True)
    assert steps["http://a"].action == "loaded"
    assert steps["http://b"].action == "load"
    assert steps["http://c"].action == "pull"
    assert steps["http://c"].peers == ("http://a", "http://b")  # the nodes that have it
    small = steps["http://small"]
    assert small.action == "refuse"
    assert "200 MB" in small.why and "50 MB" in small.why


def test_without_load_a_model_on_disk_is_placed() -> None:
    steps = plan_deploy("m", {"http://b": report(available=[{"name": "m"}])}, load=False)
    assert steps["http://b"].action == "placed"


def test_the_budget_falls_back_to_the_hardware_profile() -> None:
    reports = {
        "http://a": report(models={"m": {"size_bytes": 900 * MB}}),
        "http://tiny": report(hardware={"memory_total": 1000 * MB}),  # 80 %: 800 MB
    }
    assert plan_deploy("m", reports, load=True)["http://tiny"].action == "refuse"


def test_a_model_no_node_has_is_pulled_from_its_source_unchecked() -> None:
    steps = plan_deploy("new", {"http://a": report(memory_budget=10 * MB)}, load=True)
    assert steps["http://a"].action == "pull" and steps["http://a"].peers == ()


def test_the_size_check_counts_the_kv_cache_as_the_node_will_load_it() -> None:
    """200 MB of weights + 100 KB/token x 2048 tokens x 2 slots = 609.6 MB: a node with a
    500 MB budget cannot hold it although the weights alone fit; one loading at 512 tokens
    x 1 slot (251.2 MB) can; the trained context caps what a node asks for."""
    facts = {"size_bytes": 200 * MB, "kv_bytes_per_token": 100_000, "context_length": 8192}
    reports = {
        "http://a": report(models={"m": facts}, memory_budget=10**10),
        "http://big-ctx": report(memory_budget=500 * MB, load_ctx=2048, load_slots=2),
        "http://small-ctx": report(memory_budget=500 * MB, load_ctx=512, load_slots=1),
        "http://capped": report(memory_budget=500 * MB, load_ctx=10**6, load_slots=1),
    }
    steps = plan_deploy("m", reports, load=True)
    refused = steps["http://big-ctx"]
    assert refused.action == "refuse", refused
    assert "610 MB" in refused.why and "KV cache" in refused.why and "500 MB" in refused.why
    assert steps["http://small-ctx"].action == "pull"
    assert steps["http://capped"].action == "refuse"  # 200 MB + 8192 x 100 KB = 1.02 GB


def test_the_kv_facts_come_from_a_node_that_has_the_model_on_disk() -> None:
    entry = {"name": "m", "size_bytes": 200 * MB, "kv_bytes_per_token": 100_000}
    reports = {
        "http://b": report(available=[entry], memory_budget=10**10),
        "http://n": report(memory_budget=500 * MB, load_ctx=4096, load_slots=1),
    }
    assert plan_deploy("m", reports, load=True)["http://n"].action == "refuse"
