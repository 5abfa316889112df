"""Where a model loaded nowhere is loaded, in the order the cost says (pure):

    on disk          a node that has it and can hold it            `load:on-disk`
    peer transfer    a node that can hold it pulls it from the     `load:peer-transfer+from=A,B`
                     nodes that have it, then loads it
    internet         (only with `[loading] internet = true`) a     `load:internet`
                     node downloads an `ORG/REPO:FILE.gguf` spec
                     no node has, then loads it

A node "can hold" a model when its memory budget covers what the node itself will allocate
to load it: weights + KV cache at its `load_ctx` x `load_slots` (`placement.load_need`, from
the KV figures the holders report; the file's size where they are not known).

A peer transfer's target is the node where the copy is fastest, then the one that needs no
eviction, then the least busy, then the one with the most free model memory:

    transfer_s(target) = size / max(link(holder, target) for holder in holders)
    link = bytes/s measured between the pair (KV hand-offs), else `[loading] lan_mbps` for
           nodes on one LAN (same host, or private addresses in one /24), else `wan_mbps`

The node runs the pull (`POST /admin/models/pull`, chunks from every holder at once, each
checked against its digest); `router/pulls.py` drives it.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from edgebox.models.pull import HF_SPEC
from edgebox.router.config import Loading
from edgebox.router.nodes import NodeStatus
from edgebox.router.placement import (
    Candidate,
    PlacementContext,
    RouteRequest,
    busyness,
    holds,
    load_need,
    model_facts,
    place_cold,
    too_busy,
)


@dataclass(frozen=True)
class Fetch:
    """A pull the router starts on `node` before sending it the request: `spec` from the
    `holders` (node names; none: the internet)."""

    node: str
    spec: str
    holders: tuple[str, ...]

    @property
    def tier(self) -> str:
        return "peer-transfer" if self.holders else "internet"


@dataclass(frozen=True)
class LoadingPlan:
    candidates: list[Candidate]
    rejected: dict[str, str]
    fetch: Fetch | None = None


def pullable(model: str) -> bool:
    """A spec a node can download by itself: `ORG/REPO:FILE.gguf` (as `edgebox pull` takes)."""
    return HF_SPEC.match(model) is not None


def place_loading(
    req: RouteRequest, nodes: Sequence[NodeStatus], ctx: PlacementContext, rules: Loading
) -> LoadingPlan:
    """On disk > fastest peer transfer > internet (see the module's rules). A busy holder
    still beats nothing: it is used when no other node can take the model."""
    on_disk, rejected = place_cold(req, nodes, ctx, rules)
    if on_disk and "busy" not in on_disk[0].reasons:
        return LoadingPlan(on_disk, rejected)
    # a draining holder takes no requests but still serves its blobs to a peer
    holders = [n for n in nodes if req.model in n.available and (n.usable(ctx.now) or n.draining)]
    if holders:
        size = max(n.available[req.model] for n in holders)
        facts = model_facts(req.model, holders)
        needs = {n.name: load_need(n, facts, size) for n in nodes if req.model not in n.available}
        takers = [n for n in nodes if n.name in needs and _can_take(n, ctx, rules, needs[n.name])]
        rate = functools.partial(link_rate, ctx=ctx, rules=rules)
        target = _transfer_target(takers, holders, size, rate, needs)
        if target is None:
            return LoadingPlan(on_disk, rejected)
        names = tuple(h.name for h in holders)
        reasons = ("load:peer-transfer", "from=" + ",".join(names))
        candidate = Candidate(target, 1.0, reasons)
        return LoadingPlan([candidate], rejected, Fetch(target, req.model, names))
    if any(req.model in n.available for n in nodes) or not rules.internet:
        return LoadingPlan(on_disk, rejected)  # its holders are down: 503, not a download
    if not pullable(req.model):
        return LoadingPlan([], rejected)
    target = _internet_target(nodes, ctx, rules)
    if target is None:
        return LoadingPlan([], {n.name: "cannot-load" for n in nodes})
    return LoadingPlan(
        [Candidate(target, 1.0, ("load:internet",))], rejected, Fetch(target, req.model, ())
    )


def _can_take(node: NodeStatus, ctx: PlacementContext, rules: Loading, need: int) -> bool:
    """Up, loads on demand (reports a memory budget), room for `need`, not too busy."""
    return (
        node.usable(ctx.now)
        and node.memory_budget is not None
        and holds(node, need)
        and not too_busy(node, rules)
    )


def _transfer_target(
    takers: Sequence[NodeStatus],
    holders: Sequence[NodeStatus],
    size: int,
    rate: Callable[[NodeStatus, NodeStatus], float],
    needs: Mapping[str, int],
) -> str | None:
    """The taker the copy reaches first (then no eviction, least busy, most room)."""

    def cost(node: NodeStatus) -> tuple[float, int, int, int, str]:
        best = max(rate(h, node) for h in holders)
        fits = node.memory_free is not None and needs[node.name] <= node.memory_free
        return (size / best, 0 if fits else 1, busyness(node), -(node.memory_free or 0), node.name)

    return min(takers, key=cost).name if takers else None


def _internet_target(
    nodes: Sequence[NodeStatus], ctx: PlacementContext, rules: Loading
) -> str | None:
    """The node with the most free model memory (then the least busy)."""
    takers = [n for n in nodes if _can_take(n, ctx, rules, 0)]
    if not takers:
        return None
    return min(takers, key=lambda n: (-(n.memory_free or 0), busyness(n), n.name)).name


def link_rate(src: NodeStatus, dst: NodeStatus, ctx: PlacementContext, rules: Loading) -> float:
    """Bytes/s between two nodes: measured, else by whether they share a LAN."""
    measured = ctx.links.get((src.name, dst.name)) or ctx.links.get((dst.name, src.name))
    if measured:
        return measured
    lan = same_lan(src.address.url, dst.address.url)
    mbps = rules.lan_mbps if lan else rules.wan_mbps
    return mbps * 1e6 / 8


def same_lan(a: str, b: str) -> bool:
    """One host, or private (or loopback) addresses in one /24."""
    host_a, host_b = urlsplit(a).hostname or "", urlsplit(b).hostname or ""
    if host_a == host_b:
        return True
    try:
        ip_a, ip_b = ipaddress.ip_address(host_a), ipaddress.ip_address(host_b)
    except ValueError:
        return False
    if ip_a.is_loopback and ip_b.is_loopback:
        return True
    if ip_a.version != 4 or ip_b.version != 4 or not (ip_a.is_private and ip_b.is_private):
        return False
    return ipaddress.ip_network(f"{ip_a}/24", strict=False) == ipaddress.ip_network(
        f"{ip_b}/24", strict=False
    )
