"""Parsing what nodes and the hub report, including fields only newer nodes send."""

from __future__ import annotations

import pytest

from edgebox.tui.parse import (
    histogram_median,
    node_from_health,
    node_from_hub,
    parse_metrics,
    parse_resources,
)

GIB = 1 << 30

METRICS_1 = """\
# TYPE edgebox_generated_tokens counter
edgebox_generated_tokens_total{model="m"} 100.0
# TYPE edgebox_time_to_first_token_seconds histogram
edgebox_time_to_first_token_seconds_bucket{le="0.1",model="m"} 1.0
edgebox_time_to_first_token_seconds_bucket{le="0.5",model="m"} 2.0
edgebox_time_to_first_token_seconds_bucket{le="+Inf",model="m"} 2.0
edgebox_time_to_first_token_seconds_count{model="m"} 2.0
edgebox_time_to_first_token_seconds_sum{model="m"} 0.3
# TYPE edgebox_queue_depth gauge
edgebox_queue_depth{model="m"} 3.0
"""
METRICS_2 = (
    METRICS_1.replace('total{model="m"} 100.0', 'total{model="m"} 250.0')
    .replace('le="0.5",model="m"} 2.0', 'le="0.5",model="m"} 6.0')
    .replace('le="+Inf",model="m"} 2.0', 'le="+Inf",model="m"} 6.0')
)


def test_rates_and_median_come_from_the_change_between_two_scrapes() -> None:
    before, after = parse_metrics(METRICS_1), parse_metrics(METRICS_2)
    health = {"status": "ok", "version": "0.1.0", "models": {"m": {"slots": 4, "running": 1}}}
    node = node_from_health(
        url="http://n:1", health=health, metrics=after, previous=before, elapsed_s=3.0, seen_at=5.0
    )
    assert node.tokens_per_s == pytest.approx(50.0)
    assert node.models[0].queued == 3  # from the gauge when /health has no queue figure
    # The 4 new requests all fell between 0.1 and 0.5 s: the median is interpolated inside.
    assert node.p50_ttft_s == pytest.approx(0.3)


def test_histogram_median() -> None:
    assert histogram_median([(0.1, 0.0), (float("inf"), 0.0)]) is None
    assert histogram_median([(1.0, 10.0), (2.0, 10.0), (float("inf"), 10.0)]) == pytest.approx(0.5)
    assert histogram_median([(1.0, 0.0), (float("inf"), 4.0)]) == 1.0


def test_gpu_telemetry_wins_over_system_memory_unless_unified() -> None:
    hardware = {
        "hw_class": "nvidia-gpu",
        "memory_total": 64 * GIB,
        "unified_memory": False,
        "accelerators": [{"name": "NVIDIA GeForce RTX 4090"}],
    }
    telemetry = {
        "cpu_pct": 7.5,
        "gpus": [
            {
                "name": "NVIDIA GeForce RTX 4090",
                "utilization_pct": 80.0,
                "memory_used": 3 * GIB,
                "memory_total": 24 * GIB,
                "memory_unified": False,
                "temperature_c": 60.0,
                "power_w": 300.0,
            },
        ],
    }
    res = parse_resources(hardware, telemetry)
    assert (res.memory_used, res.memory_total, res.memory_unified) == (3 * GIB, 24 * GIB, False)
    assert (res.utilization_pct, res.temperature_c, res.power_w, res.cpu_pct) == (80, 60, 300, 7.5)
    assert res.accelerators == ("NVIDIA GeForce RTX 4090",)

    # GB10: NVML has no memory figure; the system's memory is shown, marked unified.
    gb10 = {
        "name": "NVIDIA GB10",
        "memory_used": None,
        "memory_total": None,
        "memory_unified": True,
    }
    res = parse_resources(
        {"hw_class": "nvidia-dgx-spark", "memory_total": 128 * GIB, "unified_memory": True},
        {"memory_used": 40 * GIB, "gpus": [gb10]},
    )
    assert (res.memory_used, res.memory_total, res.memory_unified) == (40 * GIB, 128 * GIB, True)
    assert res.accelerators == ("NVIDIA GB10",)


def test_missing_or_malformed_fields_stay_unknown() -> None:
    res = parse_resources(None, {"gpus": "nope", "cpu_pct": "high"})
    assert res.memory_total is None and res.cpu_pct is None and res.accelerators == ()
    node = node_from_health(
        url="http://n:1",
        health={"models": ["a", {"name": "b"}, 3]},
        metrics=None,
        previous=None,
        elapsed_s=None,
        seen_at=1.0,
    )
    assert [m.name for m in node.models] == ["a", "b"] and node.tokens_per_s is None


def test_hub_entries() -> None:
    online = node_from_hub(
        {
            "id": "n1",
            "name": "spark",
            "status": "online",
            "last_heartbeat": "2026-01-01T00:00:00+00:00",
            "hardware": {"hw_class": "nvidia-dgx-spark"},
            "telemetry": {"tokens_per_s": 12.5},
            "models": [{"name": "m", "running": 2, "queued": 1}],
            "api_url": "http://10.0.0.2:8080",
        }
    )
    assert (online.status, online.via, online.url) == ("online", "hub", "http://10.0.0.2:8080")
    assert online.last_seen == 1767225600.0 and online.tokens_per_s == 12.5
    assert (online.running, online.queued) == (2, 1)
    stale = node_from_hub({"id": "n2", "status": "stale", "models": ["m"]})
    assert stale.status == "offline" and stale.name == "n2" and stale.url is None


def test_models_on_disk_and_load_events_reach_the_detail_pane() -> None:
    from edgebox.tui.view import detail_text

    health = {
        "status": "ok",
        "models": {"smol": {"slots": 1}},
        "available": [{"name": "gemma3-270m", "size_bytes": 241_000_000}, "not a dict"],
        "loading": ["big"],
        "memory_budget": 600_000_000,
        "memory_used": 130_000_000,
        "model_events": [
            {"at": 0, "model": "gemma3-270m", "event": "unloaded", "reason": "evicted for smol"},
            {"at": 0, "model": "smol", "event": "loaded", "reason": "on-demand", "seconds": 1.25},
        ],
    }
    node = node_from_health(
        url="http://n:1", health=health, metrics=None, previous=None, elapsed_s=None, seen_at=1.0
    )
    assert node.available == ("gemma3-270m",) and node.loading == ("big",)
    assert node.model_events[-1].endswith("loaded smol (on-demand, 1.2 s)")
    text = detail_text(node, now=2.0).plain
    assert "on disk: gemma3-270m" in text and "big  loading" in text
    assert "model memory 130 MB of a 600 MB budget" in text
    assert "unloaded gemma3-270m (evicted for smol)" in text


def test_the_node_s_measured_bandwidth_feeds_the_decode_share() -> None:
    before, after = parse_metrics(METRICS_1), parse_metrics(METRICS_2)
    health = {
        "status": "ok",
        "bandwidth": {"gbps": 20.0, "source": "measured:copy", "device": "cpu"},
        "hardware": {"hw_class": "cpu", "bandwidth_gbps": 0, "bandwidth_source": "unknown"},
        "models": {"m": {"slots": 4, "size_bytes": 100_000_000}},
    }
    node = node_from_health(
        url="http://n:1", health=health, metrics=after, previous=before, elapsed_s=3.0, seen_at=5.0
    )
    assert node.bandwidth_gbps == 20.0
    # 50 tok/s of a 100 MB model against a 200 tok/s bound
    assert node.bandwidth_pct == pytest.approx(25.0)
