"""The /health report is read the same way by router, TUI and `nodes add`, whatever version of
edgebox the node runs: unknown fields ignored, missing ones defaulted, bad ones dropped."""

from __future__ import annotations

from edgebox.api.health import HEALTH_VERSION, HealthReport, Load, ModelHealth, NodeIdentity


def test_what_the_node_sets_is_exactly_what_it_sends() -> None:
    report = HealthReport(
        health_version=HEALTH_VERSION,
        status="ok",
        version="0.1.0",
        models={"m": ModelHealth(slots=4, running=1, queued=0, fast_path=None)},
        load=Load(active=1, queued=0),
        node=NodeIdentity(id="n1", name="box", ssh_host_key_source="sshd"),
    )
    sent = report.to_json()
    assert sent == {
        "health_version": 1,
        "status": "ok",
        "version": "0.1.0",
        "models": {"m": {"slots": 4, "running": 1, "queued": 0, "fast_path": None}},
        "load": {"active": 1, "queued": 0},
        "node": {"id": "n1", "name": "box", "ssh_host_key_source": "sshd"},
    }
    assert HealthReport.parse(sent) == report


def test_an_older_node_parses_with_defaults() -> None:
    old = HealthReport.parse({"status": "ok", "models": ["a", {"name": "b", "active": 2}, 3]})
    assert old.health_version == 0 and old.ok and old.load is None and old.node is None
    assert list(old.models) == ["a", "b"] and old.models["b"].running == 2
    assert old.models["a"].slots is None and old.models["a"].blocks_at(32) == frozenset()


def test_a_newer_node_s_unknown_and_malformed_fields_do_not_fail_the_report() -> None:
    report = HealthReport.parse(
        {
            "health_version": 7,
            "status": "draining",
            "future": {"x": 1},
            "uptime_s": "long",
            "models": {
                "m": {
                    "slots": "many",
                    "queued": 2,
                    "block_tokens": 32,
                    "prefix_blocks": ["aa"],
                    "new_figure": 1.5,
                },
                "e": 4,
            },
            "load": {"active": 3, "models": {"m": {"active": "x", "queued": 1}}},
            "node": {"id": "n", "name": 5},
        }
    )
    assert report.health_version == 7 and not report.ok and report.uptime_s is None
    assert report.models["m"].slots is None and report.models["m"].queued == 2
    assert report.models["m"].blocks_at(32) == {"aa"} and report.models["m"].blocks_at(16) == set()
    assert report.models["e"] == ModelHealth()
    assert report.load is not None and report.load.active == 3
    assert report.load.models["m"].active == 0 and report.load.models["m"].queued == 1
    assert report.node == NodeIdentity(id="n")
    assert HealthReport.parse("not a report") == HealthReport()


def test_speed_of_light_fields_round_trip_and_tolerate_bad_values() -> None:
    sent = {
        "status": "ok",
        "bandwidth": {"gbps": 21.5, "source": "measured:copy", "device": "EPYC", "new": 1},
        "models": {
            "m": {"decode_tokens_per_s": 80.0, "speed_of_light_tok_s": 200.0, "decode_sol_pct": 40}
        },
    }
    report = HealthReport.parse(sent)
    assert report.bandwidth is not None and report.bandwidth.gbps == 21.5
    assert report.bandwidth.source == "measured:copy"
    assert (
        report.models["m"].decode_sol_pct == 40 and report.models["m"].speed_of_light_tok_s == 200
    )
    bad = HealthReport.parse({"bandwidth": "fast", "models": {"m": {"decode_sol_pct": "high"}}})
    assert bad.bandwidth is None and bad.models["m"].decode_sol_pct is None
    partial = HealthReport.parse({"bandwidth": {"gbps": "x", "source": "nvml"}})
    assert partial.bandwidth is not None and partial.bandwidth.gbps is None
    assert HealthReport.parse({"status": "ok"}).bandwidth is None  # an older node
