"""Where a model loaded nowhere is loaded (pure): on disk > fastest peer transfer > internet."""

from __future__ import annotations

from dataclasses import replace

from edgebox.router.config import Loading
from edgebox.router.fetch import place_loading, same_lan
from edgebox.router.nodes import ModelLoad, NodeAddress, NodeStatus, status_from_health
from edgebox.router.placement import PlacementContext, RouteRequest

MB = 10**6
NOW = 100.0


def node(
    name: str,
    *,
    has: int | None = None,
    budget: int | None = 1000 * MB,
    free: int | None = None,
    queued: int = 0,
    host: str | None = None,
) -> NodeStatus:
    load = {"other": ModelLoad(slots=1, queued=queued)} if queued else {}
    return NodeStatus(
        NodeAddress(name, f"http://{host or name}:8080"),
        healthy=True,
        models=load,
        available={"m": has} if has is not None else {},
        memory_free=budget if free is None else free,
        memory_budget=budget,
    )


def plan(*nodes: NodeStatus, model: str = "m", internet: bool = False, **ctx: object):  # type: ignore[no-untyped-def]
    context = PlacementContext(now=NOW, **ctx)  # type: ignore[arg-type]
    return place_loading(RouteRequest(model), list(nodes), context, Loading(internet=internet))


def test_on_disk_wins_over_any_transfer() -> None:
    result = plan(node("a", has=100 * MB), node("b"))
    assert [c.node for c in result.candidates] == ["a"] and result.fetch is None
    assert result.candidates[0].reason == "load:on-disk+no-eviction"


def test_a_holder_whose_budget_is_too_small_hands_it_to_a_node_that_can_hold_it() -> None:
    result = plan(node("a", has=300 * MB, budget=200 * MB), node("b"), node("tiny", budget=MB))
    assert [c.node for c in result.candidates] == ["b"]
    assert result.candidates[0].reason == "load:peer-transfer+from=a"
    assert result.fetch is not None and result.fetch.holders == ("a",)
    assert result.fetch.tier == "peer-transfer" and result.fetch.spec == "m"
    assert result.rejected["a"] == "memory-budget-too-small"


def test_a_draining_or_busy_holder_is_skipped_but_a_busy_one_beats_nothing() -> None:
    address = NodeAddress("a", "http://a:1")
    draining = NodeStatus(address, healthy=False, available={"m": 1}, draining=True)
    result = plan(draining, node("b"))
    assert result.fetch is not None and result.fetch.node == "b"
    gone = NodeStatus(address, healthy=False, available={"m": 1})  # unreachable: no peer
    assert plan(gone, node("b")).candidates == []
    busy = node("a", has=MB, queued=1)  # one queued per slot: a whole round waiting
    result = plan(busy, node("b"))
    assert result.fetch is not None and result.fetch.node == "b"
    alone = plan(busy, node("b", budget=None))  # b reports no budget: no load on demand
    assert [c.node for c in alone.candidates] == ["a"] and alone.fetch is None
    assert alone.candidates[0].reasons[-1] == "busy"


def test_the_fastest_copy_wins_then_no_eviction_then_the_least_busy() -> None:
    holder = node("a", has=100 * MB, budget=MB, host="10.0.0.2")
    near = node("near", host="10.0.0.7", free=10 * MB)  # same LAN, would evict
    far = node("far", host="192.168.9.9")  # another network, lots of room
    assert plan(holder, near, far).fetch.node == "near"  # type: ignore[union-attr]
    measured = {("a", "far"): 10e9}  # a measured link beats the LAN guess
    assert plan(holder, near, far, links=measured).fetch.node == "far"  # type: ignore[union-attr]
    roomy = node("roomy", host="10.0.0.8")
    assert plan(holder, near, roomy).fetch.node == "roomy"  # type: ignore[union-attr]


def test_the_internet_only_when_allowed_only_for_a_spec_and_only_when_nowhere() -> None:
    spec = "org/repo:model.Q4_0.gguf"
    assert plan(node("a"), model=spec).candidates == []
    result = plan(node("small", free=10 * MB), node("big"), model=spec, internet=True)
    assert [c.node for c in result.candidates] == ["big"]
    assert result.candidates[0].reason == "load:internet"
    assert result.fetch is not None and result.fetch.tier == "internet"
    assert plan(node("a"), model="plain-name", internet=True).candidates == []
    down = NodeStatus(NodeAddress("a", "http://a:1"), healthy=False, available={spec: 1})
    assert plan(down, node("b"), model=spec, internet=True).fetch is None  # not a download


def test_same_lan() -> None:
    assert same_lan("http://127.0.0.1:1", "http://127.0.0.1:2")
    assert same_lan("http://10.1.2.3:1", "http://10.1.2.200:2")
    assert not same_lan("http://10.1.2.3:1", "http://10.1.3.3:2")
    assert not same_lan("http://8.8.8.8:1", "http://8.8.8.9:1")
    assert same_lan("http://box.local:1", "http://box.local:2")


KV = 100_000  # bytes per token: 4096 tokens x 1 slot = 410 MB of KV cache


def kv_node(
    name: str, *, has: bool, budget: int, load_ctx: int | None, slots: int = 1
) -> NodeStatus:
    """A node as /health describes it: the model's KV figures where it has it on disk, and
    what its loads allocate (`load_ctx` x `load_slots`; None: an older node says neither)."""
    report = {
        "status": "ok",
        "memory_budget": budget,
        "memory_used": 0,
        "load_ctx": load_ctx,
        "load_slots": slots,
        "available": [
            {"name": "m", "size_bytes": 100 * MB, "kv_bytes_per_token": KV, "context_length": 8192}
        ]
        if has
        else [],
    }
    address = NodeAddress(name, f"http://{name}:8080")
    return status_from_health(address, report, {}, NOW)


def test_a_holder_that_cannot_hold_weights_plus_kv_cache_is_not_sent_the_model() -> None:
    # the file (100 MB) fits a's 300 MB budget, weights + KV (100 + 410 MB) do not: the node
    # would answer 503 model_too_large, so b (a 1 GB budget) pulls it instead
    holder = kv_node("a", has=True, budget=300 * MB, load_ctx=4096)
    result = plan(holder, kv_node("b", has=False, budget=1000 * MB, load_ctx=4096))
    assert result.rejected["a"] == "memory-budget-too-small"
    assert result.fetch is not None and result.fetch.node == "b"
    # the taker's need is its own: c, with 4 slots (100 + 1,638 MB), cannot take it either
    result = plan(holder, kv_node("c", has=False, budget=1000 * MB, load_ctx=4096, slots=4))
    assert result.fetch is None and result.candidates == []


def test_the_need_caps_the_context_at_the_trained_one_and_falls_back_to_the_file_size() -> None:
    # load_ctx 65536 is capped at the trained 8192: 100 + 819 MB fits a 1 GB budget
    assert [
        c.node for c in plan(kv_node("a", has=True, budget=1000 * MB, load_ctx=65536)).candidates
    ] == ["a"]
    # small contexts fit: 100 + 102 MB in 300 MB
    assert plan(kv_node("a", has=True, budget=300 * MB, load_ctx=1024)).candidates[0].node == "a"
    # a node that does not say what its loads allocate is judged by the file, as before
    older = kv_node("a", has=True, budget=300 * MB, load_ctx=None)
    assert [c.node for c in plan(older).candidates] == ["a"]


def test_no_eviction_means_room_for_weights_plus_kv_cache() -> None:
    roomy = kv_node("a", has=True, budget=1000 * MB, load_ctx=4096)
    assert plan(roomy).candidates[0].reason == "load:on-disk+no-eviction"
    tight = replace(roomy, memory_free=300 * MB)  # the file fits what is free, its load does not
    assert plan(tight).candidates[0].reason == "load:on-disk"
