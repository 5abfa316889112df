"""The route plan is a pure function of observed values, and the observations store what the
router learns: these run without any network."""

from __future__ import annotations

import pytest

from edgebox.router.config import CloudUpstream, RouterConfig
from edgebox.router.disagg import Handoff
from edgebox.router.nodes import COOLDOWN_S, ModelLoad, NodeAddress, NodeStatus
from edgebox.router.observations import AFFINITY_ENTRIES, Observations
from edgebox.router.placement import Candidate, PlacementContext, PlacementPolicy, RouteRequest
from edgebox.router.plan import (
    Attempt,
    Observed,
    RoutePlan,
    Split,
    SplitPlan,
    plan_route,
    target_name,
)

CLOUD = CloudUpstream.model_validate(
    {"name": "c", "base_url": "http://x/v1", "models": {"m": "big"}, "when": "fallback"}
)


def node(name: str, running: int = 0, prefill: float = 0.0) -> NodeStatus:
    load = ModelLoad(slots=1, running=running, prefill_tokens_per_s=prefill)
    return NodeStatus(NodeAddress(name, f"http://{name}"), True, {"m": load})


def observed(*nodes: NodeStatus, **kw: object) -> Observed:
    by_name = {n.name: n for n in nodes}
    rates = {n.name: n.models["m"].prefill_tokens_per_s or None for n in nodes}
    req = kw.pop("req", RouteRequest("m", prompt_tokens=2000))
    ctx = PlacementContext(now=1.0)
    return Observed(req, by_name, ctx, prefill_rates=rates, **kw)  # type: ignore[arg-type]


def plan_for(seen: Observed, path: str = "/v1/chat/completions", **config: object) -> RoutePlan:
    cfg = RouterConfig.model_validate({"cloud": [CLOUD], **config})
    return plan_route(path, seen, cfg, PlacementPolicy.from_weights(cfg.weights))


def test_the_plan_orders_local_nodes_then_the_fallback_cloud_with_reasons() -> None:
    plan = plan_for(observed(node("busy", running=1), node("idle")))
    assert [(target_name(t), r) for t, r in plan.targets] == [
        ("idle", "least-loaded"),
        ("busy", "only-choice"),
        ("cloud:c", "fallback"),
    ]
    assert plan.cloud_left_out is None


def test_a_local_only_request_leaves_the_cloud_out_and_says_why() -> None:
    plan = plan_for(observed(node("a"), local_only=True))
    assert [target_name(t) for t, _ in plan.targets] == ["a"]
    assert plan.cloud_left_out == "local-only"


def test_the_split_decodes_on_the_first_choice_and_prefills_on_the_fastest_other() -> None:
    seen = observed(node("a"), node("b", running=1, prefill=900.0), node("c", running=1))
    plan = plan_for(seen, disagg={"mode": "always"})
    assert plan.split == SplitPlan("a", "b", "split-always")
    assert plan_for(seen, "/v1/embeddings", disagg={"mode": "always"}).split is None
    assert plan_for(seen, disagg={"mode": "off"}).split is None
    short = plan_for(seen, disagg={"mode": "auto", "min_prompt_tokens": 4096})
    assert short.split == SplitPlan("a", None, "prompt-short")


def test_the_route_header_names_target_reason_failures_split_and_prefix() -> None:
    plan = plan_for(observed(node("a"), node("b", running=1)))
    attempt = Attempt(plan, {}, b"{}", Split("a", "split-always,prefill@b"))
    first = Candidate("a", 1.0, ())
    assert attempt.route_header(first, "least-loaded", ["b:http-503"]) == (
        "a;reason=least-loaded;failover=b:http-503;split=split-always,prefill@b;prefix=messages"
    )


def test_observations_count_open_requests_and_remember_where_prefixes_went() -> None:
    seen = Observations(recent_blocks_ttl_s=10.0)
    seen.opened("a")
    seen.opened("a")
    seen.closed("a")
    nodes = seen.nodes([node("a")], [node("a")], now=1.0)
    assert nodes["a"].models["m"].running == 1
    seen.served(RouteRequest("m", prefix_keys=("k1", "k2")), "a", now=1.0)
    assert dict(seen.affinity) == {"k1": "a", "k2": "a"}
    for i in range(AFFINITY_ENTRIES):
        seen.served(RouteRequest("m", prefix_keys=(f"x{i}",)), "b", now=2.0)
    assert "k1" not in seen.affinity and len(seen.affinity) == AFFINITY_ENTRIES


def test_observations_average_what_splits_measure() -> None:
    seen = Observations(recent_blocks_ttl_s=10.0)
    seen.split_ran(Handoff("id", 1000, 20_000, prefill_s=0.5, transfer_s=0.01), "p", "d", "m")
    seen.split_ran(Handoff("id", 1000, 20_000, prefill_s=0.25, transfer_s=0.01), "p", "d", "m")
    learnt = seen.learnt()
    assert learnt["prefill_tokens_per_s"]["p"] == pytest.approx(0.7 * 2000 + 0.3 * 4000)
    assert learnt["link_bytes_per_s"]["p>d"] == pytest.approx(2_000_000)
    assert learnt["kv_bytes_per_token"]["m"] == pytest.approx(20)
    assert seen.prefill_rate(node("p"), "m") == pytest.approx(2600)


def test_a_split_moves_the_logits_too() -> None:
    """A whole-prompt snapshot carries the float32 logits after it (4 bytes per vocabulary
    entry: 1 MiB for Gemma 3), sent with the KV: the link rate counts them, and they are a
    per-request cost of the model, not KV bytes per token."""
    seen = Observations(recent_blocks_ttl_s=10.0)
    handoff = Handoff("id", 1000, 20_000, prefill_s=0.5, transfer_s=0.01, logits_bytes=10_000)
    seen.split_ran(handoff, "p", "d", "m")
    learnt = seen.learnt()
    assert learnt["link_bytes_per_s"]["p>d"] == pytest.approx(3_000_000)
    assert learnt["kv_bytes_per_token"]["m"] == pytest.approx(20)
    assert learnt["logits_bytes"]["m"] == 10_000


def test_a_node_that_failed_a_request_cools_down_then_comes_back() -> None:
    seen = Observations(recent_blocks_ttl_s=10.0)
    seen.failed("a", now=100.0)
    assert not seen.nodes([], [node("a")], now=101.0)["a"].usable(101.0)
    assert seen.nodes([], [node("a")], now=100.0 + COOLDOWN_S)["a"].usable(100.0 + COOLDOWN_S)
    assert seen.nodes([], [node("b")], now=101.0)["b"].usable(101.0)


def small(name: str, n_ctx: int) -> NodeStatus:
    return NodeStatus(NodeAddress(name, f"http://{name}"), True, {"m": ModelLoad(n_ctx=n_ctx)})


def test_a_prompt_too_long_for_every_node_goes_to_the_largest_one_to_refuse_it() -> None:
    """No 503 (retryable) for a prompt no node can hold: the node with the largest context
    gets it and answers its own 400 context_length_exceeded, which the router passes on."""
    seen = observed(small("a", 512), small("b", 1024), req=RouteRequest("m", prompt_tokens=4000))
    plan = plan_for(seen, cloud=[])
    assert [(target_name(t), r) for t, r in plan.targets] == [("b", "context-check")]
    assert plan_for(seen)  # with a cloud upstream: the cloud takes it, as before
    assert [target_name(t) for t, _ in plan_for(seen).targets] == ["cloud:c"]
    down = NodeStatus(NodeAddress("c", "http://c"), False, {"m": ModelLoad(n_ctx=512)})
    waiting = plan_for(observed(small("a", 512), down, req=seen.req), cloud=[])
    assert waiting.targets == ()  # a node that is down may come back: 503 as before


def test_a_conversation_goes_back_to_the_node_that_served_it_while_that_node_can_take_it() -> None:
    from edgebox.router.placement import conversation_keys

    keys = conversation_keys({"model": "m", "prompt_cache_key": "codex-7", "user": "ann"})
    assert len(keys) == 2 and keys == conversation_keys(
        {"model": "m", "prompt_cache_key": "codex-7", "user": "ann", "messages": []}
    )
    assert conversation_keys({"model": "m"}) == ()
    store = Observations(recent_blocks_ttl_s=10)
    store.served(RouteRequest("m", conversation=keys), "busy", now=1.0)
    req = RouteRequest("m", prompt_tokens=10, conversation=keys[1:])  # `user` alone matches
    ctx = PlacementContext(1.0, store.affinity)

    def targets(*nodes: NodeStatus) -> list[tuple[str, str]]:
        seen = Observed(req, {n.name: n for n in nodes}, ctx)
        return [(target_name(t), r) for t, r in plan_for(seen, cloud=[]).targets]

    def two_slots(name: str, running: int) -> NodeStatus:
        load = ModelLoad(slots=2, running=running)
        return NodeStatus(NodeAddress(name, f"http://{name}"), True, {"m": load})

    assert targets(two_slots("busy", 1), two_slots("idle", 0)) == [
        ("busy", "affinity:conversation"),
        ("idle", "least-loaded"),
    ]
    # Its node full while another has a free slot: not worth the wait.
    assert targets(two_slots("busy", 2), two_slots("idle", 0))[0] == ("idle", "least-loaded")
    # Every node full: the prefix still decides.
    both_full = targets(two_slots("busy", 2), two_slots("alpha", 2))  # alpha first by name
    assert both_full[0] == ("busy", "affinity:conversation")
    assert [t for t, _ in targets(two_slots("idle", 0))] == ["idle"]  # its node gone
