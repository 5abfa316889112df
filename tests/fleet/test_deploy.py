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
