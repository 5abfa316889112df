"""A request's route as values: what the router observed, and the plan made from it.

`Router.handle` (`service.py`) observes (node states, the request's tokens, the store in
`observations.py`) into an `Observed`, turns it into a `RoutePlan` with `plan_route` — a pure
function over those values and the config: placement, the burst plan, the split decision, each
with its reason — and then executes the plan: the split's KV hand-off, then the targets in
order until one answers. Keeping the decision pure keeps it testable without nodes, and the
reasons it records are the ones the route header reports.
"""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from edgebox.router.cloud import Target, plan_targets, predicted_wait_s
from edgebox.router.config import Disagg, RouterConfig
from edgebox.router.disagg import Handoff, should_split
from edgebox.router.fetch import Fetch, place_loading
from edgebox.router.nodes import NodeStatus
from edgebox.router.placement import (
    Candidate,
    PlacementContext,
    PlacementPolicy,
    RouteRequest,
    place,
)
from edgebox.router.tokens import prefix_note

SPLIT_PATHS = ("/v1/chat/completions", "/v1/completions")


@dataclass(frozen=True)
class Observed:
    """Everything a route decision reads, taken at one moment."""

    req: RouteRequest
    nodes: Mapping[str, NodeStatus]  # routable nodes, with this router's load and speed views
    ctx: PlacementContext  # now, prefix affinity, the token blocks each node holds
    local_only: bool = False  # the header or the client's key keeps it off the cloud
    over_cap: bool = False  # the day's cloud spend cap is reached
    prefill_rates: Mapping[str, float | None] = field(default_factory=dict)  # node → tokens/s
    link_rates: Mapping[tuple[str, str], float] = field(default_factory=dict)  # measured
    kv_bytes_per_token: float | None = None  # measured for the request's model
    logits_bytes: float | None = None  # sent with each snapshot of the model, measured


@dataclass(frozen=True)
class SplitPlan:
    """Whether to prefill on another node: `prefill` is that node, None to prefill on the
    decode node (`reason` still goes in the route header)."""

    decode: str
    prefill: str | None
    reason: str


@dataclass(frozen=True)
class RoutePlan:
    path: str
    req: RouteRequest
    nodes: Mapping[str, NodeStatus]  # the states the plan was made from (addresses, keys)
    targets: tuple[tuple[Target, str], ...]  # in the order to try, each with its reason
    rejected: Mapping[str, str]  # node → why placement left it out
    cloud_left_out: str | None  # why no cloud target is in `targets` ("local-only", ...)
    split: SplitPlan | None = None
    held: Mapping[str, Sequence[Container[str]]] = field(default_factory=dict)
    fetch: Fetch | None = None  # a pull to run on the first target before sending it there


def plan_route(
    path: str, seen: Observed, config: RouterConfig, policy: PlacementPolicy
) -> RoutePlan:
    """Rank the nodes, place the cloud among them, and decide the split. Pure."""
    req = seen.req
    local, rejected = place(req, list(seen.nodes.values()), policy, seen.ctx)
    fetch = None
    if not any(req.model in s.models for s in seen.nodes.values()):  # loaded nowhere
        loading = place_loading(req, list(seen.nodes.values()), seen.ctx, config.loading)
        local, rejected, fetch = loading.candidates, loading.rejected, loading.fetch
    local = stick_to_conversation(local, req, seen.ctx.affinity, seen.nodes)
    serving = {n: s.models[req.model] for n, s in seen.nodes.items() if req.model in s.models}
    too_small = any(r == "context-too-small" for r in rejected.values())
    targets, cloud_left_out = plan_targets(
        req.model,
        local,
        {n: load.queued for n, load in serving.items()},
        config.cloud,
        local_only=seen.local_only,
        over_cap=seen.over_cap,
        waits={n: predicted_wait_s(load) for n, load in serving.items()},
        no_local_reason="context" if too_small else "no-local-node",
    )
    if not targets and too_small and cloud_left_out != "spend-cap":  # (the cap: 429, retry)
        targets = _context_check(req, seen.nodes, rejected)
    split = plan_split(path, targets, seen, config.disagg) if targets else None
    first = targets[0][0] if targets else None
    if fetch is not None and not (isinstance(first, Candidate) and first.node == fetch.node):
        fetch = None  # the cloud goes first: no pull
    return RoutePlan(
        path,
        req,
        seen.nodes,
        tuple(targets),
        rejected,
        cloud_left_out,
        split,
        seen.ctx.blocks,
        fetch,
    )


def stick_to_conversation(
    local: Sequence[Candidate],
    req: RouteRequest,
    affinity: Mapping[str, str],
    nodes: Mapping[str, NodeStatus],
) -> list[Candidate]:
    """A conversation goes back to the node that served its last turn (its KV prefix is
    there) while that node is a candidate and has a free slot, or no other has one either;
    otherwise placement's order stands and the turn is replayed elsewhere from the full
    history (slower, never an error)."""
    holder = next((affinity[k] for k in req.conversation if k in affinity), None)
    chosen = next((c for c in local if c.node == holder), None)
    if chosen is None:
        return list(local)
    full = {c.node for c in local if _no_free_slot(nodes[c.node], req.model)}
    if chosen.node in full and any(c.node not in full for c in local):
        return list(local)  # waiting for its slot would cost more than the prefix saves
    first = replace(chosen, reasons=("affinity:conversation",))
    return [first, *(c for c in local if c is not chosen)]


def _no_free_slot(node: NodeStatus, model: str) -> bool:
    load = node.models[model]
    return load.running + load.queued >= max(1, load.slots)


def _context_check(
    req: RouteRequest, nodes: Mapping[str, NodeStatus], rejected: Mapping[str, str]
) -> list[tuple[Target, str]]:
    """A prompt too long for every node that serves the model (none down, no cloud): the one
    with the largest context gets it, to answer its own 400 `context_length_exceeded` (and to
    serve it, should the router's estimate be high). A 503 would tell clients to retry."""
    serving = [n for n in rejected if rejected[n] != "model-not-served"]
    if any(rejected[n] != "context-too-small" for n in serving):
        return []  # a node that is down may come back with room: 503 as before
    largest = max(serving, key=lambda n: (nodes[n].models[req.model].n_ctx, n))
    return [(Candidate(largest, 0.0, ()), "context-check")]


def plan_split(
    path: str, targets: Sequence[tuple[Target, str]], seen: Observed, settings: Disagg
) -> SplitPlan | None:
    """The decode node is the first target; the prefill node, the other local candidate with
    the highest prefill rate. None when there is nothing to report (no second node, or off)."""
    first = targets[0][0]
    if path not in SPLIT_PATHS or not isinstance(first, Candidate):
        return None
    others = [t for t, _ in targets[1:] if isinstance(t, Candidate)]
    if not others:
        return None
    rates = seen.prefill_rates
    helper = max(others, key=lambda c: rates.get(c.node) or 0.0)
    decide, reason = should_split(
        settings,
        seen.req.prompt_tokens,
        rates.get(first.node),
        rates.get(helper.node),
        link_bytes_per_s=seen.link_rates.get((helper.node, first.node)),
        kv_bytes_per_token=seen.kv_bytes_per_token,
        logits_bytes=seen.logits_bytes,
    )
    if not decide and reason == "split-off":
        return None
    return SplitPlan(first.node, helper.node if decide else None, reason)


@dataclass(frozen=True)
class Split:
    """A split as it went: the decode node, the reason (with how the hand-off ended)."""

    decode_node: str
    reason: str
    handoff: Handoff | None = None


@dataclass(frozen=True)
class Attempt:
    """One request being executed: its plan, the client's body and its encoded bytes (sent to
    nodes unchanged), and the split as it went."""

    plan: RoutePlan
    body: dict[str, Any]
    encoded: bytes
    split: Split | None = None

    def route_header(self, target: Target, reason: str, failures: Sequence[str]) -> str:
        """`x-edgebox-route`: the target, why, what failed before it, the split, the prefix."""
        route = f"{target_name(target)};reason={reason}"
        if failures:
            route += ";failover=" + ",".join(failures)
        split = self.split
        if split and isinstance(target, Candidate) and target.node == split.decode_node:
            route += f";split={split.reason}"
        if isinstance(target, Candidate):  # token blocks matched there, or message keys
            route += prefix_note(self.plan.req.blocks, self.plan.held.get(target.node, ()))
        return route


def target_name(target: Target) -> str:
    return target.node if isinstance(target, Candidate) else target.name
