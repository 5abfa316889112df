"""Placement is a pure function: these run without any network."""

from __future__ import annotations

from edgebox.router.config import Weights
from edgebox.router.nodes import (
    ModelLoad,
    NodeAddress,
    NodeStatus,
    status_from_health,
    with_inflight,
)
from edgebox.router.placement import (
    PlacementContext,
    PlacementPolicy,
    RouteRequest,
    estimate_prompt_tokens,
    place,
    prefix_keys,
    requested_max_tokens,
)
from edgebox.runtimes.prefix_blocks import chain

POLICY = PlacementPolicy.from_weights(Weights())


def node(
    name: str, running: int = 0, queued: int = 0, tps: float = 0.0, **kw: object
) -> NodeStatus:
    load = ModelLoad(slots=2, running=running, queued=queued, decode_tokens_per_s=tps)
    models = kw.pop("models", {"m": load})
    return NodeStatus(NodeAddress(name, f"http://{name}"), models=models, **kw)  # type: ignore[arg-type]


def ranked(req: RouteRequest, nodes: list[NodeStatus], **ctx: object) -> list[str]:
    candidates, _ = place(req, nodes, POLICY, PlacementContext(now=100.0, **ctx))  # type: ignore[arg-type]
    return [c.node for c in candidates]


def test_filters_drop_nodes_without_the_model_or_health_and_say_why() -> None:
    nodes = [
        node("a", healthy=True, models={"other": ModelLoad()}),
        node("b", healthy=False),
        node("c", healthy=True, cooldown_until=200.0),
        node("d", healthy=True),
    ]
    candidates, rejected = place(RouteRequest("m"), nodes, POLICY, PlacementContext(now=100.0))
    assert [c.node for c in candidates] == ["d"]
    assert rejected == {"a": "model-not-served", "b": "unhealthy", "c": "cooling-down"}
    assert candidates[0].reason == "only-choice"


def test_the_least_loaded_node_goes_first() -> None:
    nodes = [node("busy", running=2, queued=3, healthy=True), node("idle", healthy=True)]
    candidates, _ = place(RouteRequest("m"), nodes, POLICY, PlacementContext(now=0.0))
    assert [c.node for c in candidates] == ["idle", "busy"]
    assert "least-loaded" in candidates[0].reasons
    assert candidates[0].score > candidates[1].score


def test_a_faster_node_wins_at_equal_load() -> None:
    nodes = [node("slow", tps=10, healthy=True), node("fast", tps=40, healthy=True)]
    assert ranked(RouteRequest("m"), nodes) == ["fast", "slow"]


def test_prefix_affinity_outweighs_a_little_load() -> None:
    keys = prefix_keys({"model": "m", "messages": [{"role": "system", "content": "long"}]}, 2)
    nodes = [node("a", running=1, healthy=True), node("b", healthy=True)]
    assert ranked(RouteRequest("m", keys), nodes, affinity={keys[-1]: "a"}) == ["a", "b"]
    # ...but not a node that is swamped
    swamped = [node("a", running=2, queued=40, healthy=True), node("b", healthy=True)]
    policy = PlacementPolicy.from_weights(Weights(affinity=0.5))
    got, _ = place(RouteRequest("m", keys), swamped, policy, PlacementContext(0, {keys[-1]: "a"}))
    assert got[0].node == "b"


def test_the_longest_known_prefix_decides() -> None:
    system = {"role": "system", "content": "You are terse."}
    first = prefix_keys({"model": "m", "messages": [system, {"role": "user", "content": "a"}]}, 2)
    second = prefix_keys({"model": "m", "messages": [system, {"role": "user", "content": "b"}]}, 2)
    assert first[0] == second[0] and first[1] != second[1]  # shared system prompt, other turn
    nodes = [node("a", healthy=True), node("b", healthy=True)]
    affinity = {first[0]: "b", first[1]: "a"}
    assert ranked(RouteRequest("m", first), nodes, affinity=affinity)[0] == "a"
    assert ranked(RouteRequest("m", second), nodes, affinity=affinity)[0] == "b"


def test_keys_differ_by_model_and_prompts_have_one() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}]}
    assert prefix_keys({"model": "x", **body}, 2) != prefix_keys({"model": "y", **body}, 2)
    assert len(prefix_keys({"model": "x", "prompt": "Once upon"}, 2)) == 1
    assert prefix_keys({"model": "x"}, 2) == ()


def test_the_routers_own_open_requests_count_as_load() -> None:
    seen = node("a", running=0, healthy=True)
    assert with_inflight(seen, 3).models["m"].running == 3
    polled = node("a", running=1, queued=4, healthy=True)
    assert with_inflight(polled, 2) == polled  # the poll already shows more


def test_prompt_length_estimate() -> None:
    assert estimate_prompt_tokens({"prompt": "x" * 400}) in range(95, 106)
    messages = [{"role": "user", "content": "y" * 800}]
    assert estimate_prompt_tokens({"messages": messages}) in range(195, 206)


def test_nodes_whose_context_cannot_hold_prompt_and_max_tokens_are_filtered() -> None:
    def sized(name: str, n_ctx: int) -> NodeStatus:
        return node(name, healthy=True, models={"m": ModelLoad(slots=2, n_ctx=n_ctx)})

    nodes = [sized("small", 1024), sized("big", 8192), sized("unknown", 0)]
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 4000}], "max_tokens": 200}
    req = RouteRequest("m", (), estimate_prompt_tokens(body), requested_max_tokens(body))
    assert 1000 <= req.prompt_tokens <= 1010 and req.max_tokens == 200
    candidates, rejected = place(req, nodes, POLICY, PlacementContext(now=100.0))
    assert sorted(c.node for c in candidates) == ["big", "unknown"]
    assert rejected == {"small": "context-too-small"}
    fits = RouteRequest("m", (), 800, 200)  # 1000 <= 1024
    assert sorted(ranked(fits, nodes)) == ["big", "small", "unknown"]
    assert requested_max_tokens({"max_completion_tokens": 7, "max_tokens": 9}) == 7
    assert requested_max_tokens({"max_tokens": True}) == 0


def test_token_overlap_is_the_share_of_leading_blocks_each_node_holds() -> None:
    blocks = tuple(chain(list(range(320))))  # ten blocks
    req = RouteRequest("m", prompt_tokens=320, blocks=blocks)
    nodes = [node("most", healthy=True), node("some", healthy=True), node("none", healthy=True)]
    held = {"most": [set(blocks[:8])], "some": [set(blocks[:3])], "none": []}
    candidates, _ = place(req, nodes, POLICY, PlacementContext(now=0.0, blocks=held))
    assert [c.node for c in candidates] == ["most", "some", "none"]
    w = Weights()
    load = w.load * 1.0  # idle: 1/(1 + 0/2)
    assert [c.score for c in candidates] == [
        round(load + w.affinity * 0.8, 4),
        round(load + w.affinity * 0.3, 4),
        load,
    ]
    assert "affinity" in candidates[0].reasons and "affinity" not in candidates[1].reasons


def test_token_overlap_ignores_message_keys_and_a_busy_node_can_still_lose() -> None:
    blocks = tuple(chain(list(range(64))))
    req = RouteRequest("m", ("k",), 64, blocks=blocks)
    nodes = [node("cached", running=2, queued=6, healthy=True), node("idle", healthy=True)]
    ctx = PlacementContext(now=0.0, affinity={"k": "idle"}, blocks={"cached": [set(blocks)]})
    # cached: 1/(1+8/2) + 2·1 = 2.2; idle: 1 (the message key pointing at it is not used)
    assert [c.node for c in place(req, nodes, POLICY, ctx)[0]] == ["cached", "idle"]
    # a quarter of the prompt cached on a queue of 60: 1/31 + 2·0.25 < 1
    long_req = RouteRequest("m", (), 128, blocks=tuple(chain(list(range(128)))))
    nodes[0] = node("cached", running=2, queued=60, healthy=True)
    ctx = PlacementContext(now=0.0, blocks={"cached": [set(long_req.blocks[:1])]})
    assert [c.node for c in place(long_req, nodes, POLICY, ctx)[0]] == ["idle", "cached"]


def test_the_poller_takes_reported_blocks_only_at_its_own_block_size() -> None:
    health = {
        "status": "ok",
        "models": {
            "m": {
                "slots": 2,
                "block_tokens": 32,
                "prefix_blocks": ["aa", "bb"],
                "model_sha256": "s",
            },
            "other": {"slots": 2, "block_tokens": 16, "prefix_blocks": ["cc"]},
            "embed": {"slots": 1},
        },
    }
    status = status_from_health(NodeAddress("n", "http://n"), health, {}, 0.0)
    assert status.prefix_blocks == {"m": frozenset({"aa", "bb"})}
    assert status.models["m"].model_sha256 == "s" and status.models["other"].model_sha256 == ""


def cold(name: str, size: int | None, free: int | None, busy: int = 0) -> NodeStatus:
    load = {"other": ModelLoad(running=busy)} if busy else {}
    on_disk = {"m": size} if size is not None else {}
    return NodeStatus(
        NodeAddress(name, f"http://{name}"),
        healthy=True,
        models=load,
        available=on_disk,
        memory_free=free,
    )


def test_a_model_loaded_nowhere_goes_where_it_is_on_disk() -> None:
    from edgebox.router.placement import place_cold

    nodes = [cold("none", None, 10**9), cold("disk", 100, 10**9)]
    candidates, rejected = place_cold(RouteRequest("m"), nodes, PlacementContext(now=100.0))
    assert [c.node for c in candidates] == ["disk"]
    assert candidates[0].reason == "load:on-disk+no-eviction"
    assert rejected == {"none": "model-not-on-disk"}


def test_loading_prefers_a_node_with_room_then_the_least_busy() -> None:
    from edgebox.router.placement import place_cold

    nodes = [cold("full", 100, 50), cold("busy", 100, 10**9, busy=3), cold("idle", 100, 10**9)]
    candidates, _ = place_cold(RouteRequest("m"), nodes, PlacementContext(now=100.0))
    assert [c.node for c in candidates] == ["idle", "busy", "full"]
    assert candidates[-1].reason == "load:on-disk"  # it has to evict something first


def test_health_carries_what_is_on_disk_and_the_free_model_memory() -> None:
    health = {
        "status": "ok",
        "models": {},
        "available": [{"name": "m", "size_bytes": 7}, {"bad": 1}],
        "memory_budget": 100,
        "memory_used": 30,
    }
    status = status_from_health(NodeAddress("a", "http://a"), health, {}, now=1.0)
    assert status.available == {"m": 7} and status.memory_free == 70
