"""Per-stream speed estimates and placement under a burst: pure, no network."""

from __future__ import annotations

from collections import Counter

from edgebox.router.config import Weights
from edgebox.router.nodes import ModelLoad, NodeAddress, NodeStatus, with_inflight
from edgebox.router.placement import PlacementContext, PlacementPolicy, RouteRequest, place
from edgebox.router.speed import HALF_LIFE_S, SpeedBook

POLICY = PlacementPolicy.from_weights(Weights())


def status(name: str, *, running: int, total_tps: float, at: float, slots: int = 8) -> NodeStatus:
    load = ModelLoad(slots=slots, running=running, decode_tokens_per_s=total_tps)
    return NodeStatus(NodeAddress(name, f"http://{name}"), True, {"m": load}, checked_at=at)


def test_the_estimate_is_per_stream_and_ignores_idle_polls() -> None:
    book = SpeedBook()
    book.observe(status("a", running=4, total_tps=80.0, at=1.0))
    assert book.estimate("a", "m", 1.0) == (20.0, 1.0)
    book.observe(status("a", running=0, total_tps=0.0, at=2.0))  # idle: no sample
    rate, confidence = book.estimate("a", "m", 2.0)
    assert rate == 20.0 and 0.9 < confidence < 1.0


def test_an_estimate_decays_to_unknown() -> None:
    book = SpeedBook()
    book.observe(status("a", running=1, total_tps=30.0, at=0.0))
    assert book.estimate("a", "m", HALF_LIFE_S)[1] == 0.5
    assert book.estimate("a", "m", 10 * HALF_LIFE_S) == (0.0, 0.0)


def test_a_status_is_folded_in_once() -> None:
    book = SpeedBook()
    polled = status("a", running=1, total_tps=30.0, at=5.0)
    book.observe(polled)
    book.observe(status("a", running=1, total_tps=90.0, at=5.0))  # same poll, read again
    assert book.estimate("a", "m", 5.0)[0] == 30.0


def test_an_unknown_node_ranks_with_the_best_known_one() -> None:
    book = SpeedBook()
    busy = status("busy", running=4, total_tps=100.0, at=0.0)
    book.observe(busy)
    applied = book.apply({"busy": busy, "new": status("new", running=0, total_tps=0, at=0)}, 0)
    assert applied["new"].models["m"].decode_tokens_per_s == 25.0
    assert applied["busy"].models["m"].decode_tokens_per_s == 25.0


def test_a_burst_splits_evenly_over_two_equal_nodes() -> None:
    """The regression: the busy node's high total used to win `fastest` for the whole burst."""
    book = SpeedBook()
    # One node was busy at the last poll (its total is high), the other idle (total 0).
    polled = {
        "a": status("a", running=2, total_tps=60.0, at=0.0),
        "b": status("b", running=0, total_tps=0.0, at=0.0),
    }
    for s in polled.values():
        book.observe(s)
    inflight: Counter[str] = Counter()
    for _ in range(14):
        nodes = {
            n: with_inflight(s, inflight[n] + (2 if n == "a" else 0)) for n, s in polled.items()
        }
        ranked, _ = place(
            RouteRequest("m"),
            list(book.apply(nodes, 0.5).values()),
            POLICY,
            PlacementContext(now=0.5),
        )
        inflight[ranked[0].node] += 1
    assert abs(inflight["a"] - inflight["b"]) <= 3, inflight


def test_load_dominates_a_faster_but_saturated_node() -> None:
    book = SpeedBook()
    fast = status("fast", running=1, total_tps=40.0, at=0.0, slots=2)
    slow = status("slow", running=1, total_tps=20.0, at=0.0, slots=2)
    book.observe(fast)
    book.observe(slow)
    nodes = {"fast": with_inflight(fast, 6), "slow": slow}
    ranked, _ = place(
        RouteRequest("m"), list(book.apply(nodes, 0.0).values()), POLICY, PlacementContext(now=0.0)
    )
    assert ranked[0].node == "slow"
