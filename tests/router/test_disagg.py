"""The prefill/decode split cost model and where its rates come from: pure, no network."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from edgebox.router.cloud import SpendLedger
from edgebox.router.config import Disagg, RouterConfig
from edgebox.router.disagg import estimate_split, should_split
from edgebox.router.nodes import ModelLoad, NodeAddress, NodeStatus
from edgebox.router.service import Router


def test_estimate_adds_remote_prefill_transfer_and_overhead() -> None:
    est = estimate_split(
        4000,
        local_prefill_tps=500,
        remote_prefill_tps=8000,
        kv_bytes_per_token=100_000,
        link_bytes_per_s=1.25e9,
        overhead_s=0.02,
    )
    assert est.kv_bytes == 400_000_000
    assert est.local_s == pytest.approx(8.0)
    assert est.split_s == pytest.approx(0.5 + 0.32 + 0.02)


def test_the_logits_after_the_prompt_travel_too() -> None:
    est = estimate_split(
        1000, 500, 8000, kv_bytes_per_token=20_000, link_bytes_per_s=1e8, logits_bytes=1 << 20
    )
    assert est.kv_bytes == 20_000_000 + (1 << 20)
    assert est.split_s == pytest.approx(1000 / 8000 + est.kv_bytes / 1e8 + 0.02)
    auto = Disagg(mode="auto", min_prompt_tokens=16, link_mbps=800, kv_bytes_per_token=20_000)
    # a short prompt whose KV alone would pay, but not with a large vocabulary's logits
    assert should_split(auto, 64, 1500, 8000)[0]
    assert should_split(auto, 64, 1500, 8000, logits_bytes=1 << 20) == (False, "split-slower")


def test_auto_splits_long_prompts_only_when_it_predicts_a_lower_ttft() -> None:
    auto = Disagg(mode="auto", min_prompt_tokens=1024, link_mbps=10_000, kv_bytes_per_token=100_000)
    assert should_split(auto, 500, 500, 8000) == (False, "prompt-short")
    decide, reason = should_split(auto, 4000, 500, 8000)
    assert decide and reason.startswith("split-saves-")
    # a slow link makes moving the KV cost more than it saves
    slow = auto.model_copy(update={"link_mbps": 100})
    assert should_split(slow, 4000, 500, 8000) == (False, "split-slower")
    # a prefill node no faster than the decode node never pays
    assert should_split(auto, 4000, 800, 800) == (False, "split-slower")
    assert should_split(auto, 4000, None, 8000) == (False, "prefill-rates-unknown")
    # Measured link and KV size (from earlier splits) override the settings.
    assert should_split(auto, 4000, 500, 8000, link_bytes_per_s=1e6)[1] == "split-slower"
    assert should_split(slow, 4000, 500, 8000, link_bytes_per_s=1e10, kv_bytes_per_token=1)[0]


def test_modes_off_and_always_ignore_the_cost_model() -> None:
    assert should_split(Disagg(mode="off"), 100_000, 1, 1e9)[0] is False
    assert should_split(Disagg(mode="always"), 3, None, None) == (True, "split-always")


def test_crossover_moves_with_link_bandwidth() -> None:
    def crossover(link_mbps: float) -> int:
        for tokens in range(16, 20_000, 16):
            if (
                estimate_split(tokens, 2000, 8000, 20_000, link_mbps * 1e6 / 8).split_s
                < tokens / 2000
            ):
                return tokens
        return -1

    assert 0 < crossover(10_000) < crossover(1_000) < crossover(500)
    assert crossover(300) == -1  # the link is slower than prefilling locally


def test_split_rates_come_from_the_nodes_own_measurement_first(tmp_path: Path) -> None:
    """`auto` needs no configured rates once nodes publish theirs; a configured seed or a rate
    this router measured in splits is used only where a node has not measured one."""
    router = Router(RouterConfig(), [], httpx.AsyncClient(), SpendLedger(tmp_path / "s.json", None))
    seeded = NodeAddress("gpu", "http://gpu:8000", prefill_tokens_per_s=5000.0)
    measured = NodeStatus(seeded, True, {"m": ModelLoad(prefill_tokens_per_s=900.0)})
    unmeasured = NodeStatus(seeded, True, {"m": ModelLoad()})
    assert router._prefill_rate(measured, "m") == 900.0
    assert router._prefill_rate(unmeasured, "m") == 5000.0
    router.observed.prefill_rates["gpu"] = 4000.0
    assert router._prefill_rate(unmeasured, "m") == 4000.0
    assert router._prefill_rate(NodeStatus(NodeAddress("cpu", "http://cpu:8000")), "m") is None
