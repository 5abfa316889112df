"""Cloud burst policy, spend ledger and config parsing: pure, no network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgebox.router.cloud import (
    CloudTarget,
    SpendLedger,
    cost_usd,
    plan_targets,
    predicted_wait_s,
)
from edgebox.router.config import CloudUpstream, ConfigError, load_config
from edgebox.router.nodes import ModelLoad
from edgebox.router.placement import Candidate


def upstream(when: str) -> CloudUpstream:
    return CloudUpstream.model_validate(
        {
            "name": "c",
            "base_url": "http://x/v1",
            "api_key_env": "K",
            "models": {"m": "big"},
            "when": when,
            "overflow_queue_depth": 3,
            "prices": {"big": {"input": 2.0, "output": 10.0}},
        }
    )


LOCAL = [Candidate("a", 1.0, ("least-loaded",)), Candidate("b", 0.5, ())]


def names(plan: list[tuple[object, str]]) -> list[str]:
    return [t.name if isinstance(t, CloudTarget) else t.node for t, _ in plan]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("when", "queued", "expected"),
    [
        ("fallback", {}, ["a", "b", "cloud:c"]),
        ("always", {}, ["cloud:c", "a", "b"]),
        ("overflow", {"a": 1, "b": 5}, ["a", "b", "cloud:c"]),
        ("overflow", {"a": 3, "b": 5}, ["cloud:c", "a", "b"]),
    ],
)
def test_burst_policies(when: str, queued: dict[str, int], expected: list[str]) -> None:
    plan, skipped = plan_targets(
        "m", LOCAL, queued, [upstream(when)], local_only=False, over_cap=False
    )
    assert names(plan) == expected and skipped is None


def test_a_model_no_node_serves_goes_to_the_cloud_under_any_policy() -> None:
    for when in ("fallback", "overflow", "always"):
        plan, _ = plan_targets("m", [], {}, [upstream(when)], local_only=False, over_cap=False)
        assert names(plan) == ["cloud:c"] and plan[0][1] == "no-local-node"


def test_local_only_and_the_spend_cap_keep_requests_off_the_cloud() -> None:
    saturated = {"a": 9, "b": 9}
    for flags, why in (
        ({"local_only": True, "over_cap": False}, "local-only"),
        ({"local_only": False, "over_cap": True}, "spend-cap"),
    ):
        plan, skipped = plan_targets("m", LOCAL, saturated, [upstream("overflow")], **flags)
        assert names(plan) == ["a", "b"] and skipped == why
        plan, skipped = plan_targets("m", [], {}, [upstream("always")], **flags)
        assert plan == [] and skipped == why


def test_cost_is_counted_from_usage_per_million_tokens() -> None:
    usage = {"prompt_tokens": 1_000_000, "completion_tokens": 500_000}
    assert cost_usd(upstream("always"), "big", usage) == pytest.approx(2.0 + 5.0)
    assert cost_usd(upstream("always"), "unpriced", usage) == 0.0


def test_the_ledger_persists_the_days_spend_and_enforces_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "router_spend.json"
    ledger = SpendLedger(path, cap_usd=1.0)
    ledger.add("big", 0.6)
    assert not ledger.over_cap()
    ledger.add("big", 0.5)
    assert ledger.over_cap()
    again = SpendLedger(path, cap_usd=1.0)  # a restart keeps the day's spend
    assert again.spent_today() == pytest.approx(1.1) and again.over_cap()
    data = json.loads(path.read_text())
    data["day"] = "2000-01-01"  # yesterday's file counts for nothing today
    path.write_text(json.dumps(data))
    assert SpendLedger(path, cap_usd=1.0).spent_today() == 0.0
    assert not SpendLedger(path, cap_usd=None).over_cap()


def test_config_reads_toml_and_refuses_keys_in_the_file(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(
        'max_usd_per_day = 2.5\n[disagg]\nmode = "always"\n'
        '[[cloud]]\nname = "c"\nbase_url = "https://api.example/v1"\napi_key_env = "C_KEY"\n'
        'models = { m = "big" }\nwhen = "overflow"\n'
    )
    cfg = load_config(good)
    assert cfg.max_usd_per_day == 2.5 and cfg.disagg.mode == "always"
    assert cfg.cloud[0].when == "overflow" and cfg.cloud[0].models == {"m": "big"}
    leaked = tmp_path / "leaked.toml"
    leaked.write_text('[[cloud]]\nname = "c"\nbase_url = "x"\napi_key = "sk-secret"\nmodels = {}\n')
    with pytest.raises(ConfigError, match="api_key_env") as caught:
        load_config(leaked)
    assert "sk-secret" not in str(caught.value)
    typo = tmp_path / "typo.toml"
    typo.write_text('[[cloud]]\nname = "c"\nbase_url = "x"\nmodels = {}\nwhen = "sometimes"\n')
    with pytest.raises(ConfigError, match=r"cloud\.0\.when"):
        load_config(typo)


def test_predicted_wait_counts_the_requests_ahead_over_the_slots() -> None:
    assert predicted_wait_s(ModelLoad(slots=1, running=0, mean_request_s=4.0)) == 0.0
    assert predicted_wait_s(ModelLoad(slots=1, running=1, mean_request_s=4.0)) == 4.0
    assert predicted_wait_s(ModelLoad(slots=2, running=2, queued=3, mean_request_s=4.0)) == 8.0
    assert predicted_wait_s(ModelLoad(slots=2, running=2, queued=3)) == 0.0  # nothing measured


def test_a_predicted_wait_over_the_ttft_target_bursts_first() -> None:
    up = upstream("fallback").model_copy(update={"ttft_target_s": 2.0})
    for waits, expected, why in (
        ({"a": 3.0, "b": 2.5}, ["cloud:c", "a", "b"], "ttft"),
        ({"a": 3.0, "b": 1.0}, ["a", "b", "cloud:c"], "least-loaded"),
        ({}, ["a", "b", "cloud:c"], "least-loaded"),
    ):
        plan, _ = plan_targets("m", LOCAL, {}, [up], local_only=False, over_cap=False, waits=waits)
        assert names(plan) == expected and plan[0][1] == why
    plan, skipped = plan_targets(
        "m", LOCAL, {}, [up], local_only=True, over_cap=False, waits={"a": 9.0, "b": 9.0}
    )
    assert names(plan) == ["a", "b"] and skipped == "local-only"


def test_no_node_with_enough_context_bursts_with_reason_context() -> None:
    plan, _ = plan_targets(
        "m",
        [],
        {},
        [upstream("fallback")],
        local_only=False,
        over_cap=False,
        no_local_reason="context",
    )
    assert names(plan) == ["cloud:c"] and plan[0][1] == "context"
