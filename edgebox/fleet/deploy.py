"""`edgebox deploy`: what to do on each node, decided from their /health reports (pure).

For each node, in order:

    refuse   when the model's need exceeds the node's model memory budget (its `/health`
             `memory_budget`, else 80 % of the probe's `memory_total`), with both numbers;
    loaded   when it serves the model already (nothing to do);
    load     when the model is on its disk (`available`) and `--load` was asked;
    placed   when it is on its disk and no load was asked;
    pull     otherwise: the node pulls it (peers first: the nodes that have it), then loads it
             if asked.

The need is the node's own formula (`models/footprint.py`), from what the fleet reports:

    need = weights + kv_bytes_per_token x min(load_ctx, context_length) x load_slots

with the weights, KV bytes per token and trained context from a node that has the model
loaded or on disk, and `load_ctx`/`load_slots` (`--ctx`, `--parallel`) from the target
node's report (a node that does not report them: weights alone). Where no node has the
model, the check waits for the node's own load, which refuses a model over its budget with
the same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from edgebox.api.health import HealthReport
from edgebox.models.footprint import Footprint, format_size

BUDGET_SHARE = 0.8  # as the node's own default (node/ondemand.py)


@dataclass(frozen=True)
class NodeStep:
    """What deploy does on one node, and why."""

    node: str  # the node's URL
    action: str  # "refuse", "loaded", "load", "placed", "pull"
    why: str = ""
    peers: tuple[str, ...] = field(default=())  # nodes to pull from first


def model_facts(model: str, reports: Mapping[str, HealthReport]) -> Footprint | None:
    """The model's weights and KV figures as any node reports them; None: unknown."""
    for report in reports.values():
        loaded = report.models.get(model)
        if loaded is not None and loaded.size_bytes:
            kv = loaded.kv_bytes_per_token or 0
            return Footprint(loaded.size_bytes, kv, loaded.context_length)
        for entry in report.available:
            if entry.name == model and entry.size_bytes:
                kv = entry.kv_bytes_per_token or 0
                return Footprint(entry.size_bytes, kv, entry.context_length)
    return None


def node_need(facts: Footprint, report: HealthReport) -> tuple[int, str]:
    """Bytes the model takes once the node loads it, and how that figure was made."""
    if report.load_ctx is None or not facts.kv_bytes_per_token:
        return facts.weights, "for its weights alone"
    slots = report.load_slots or 1
    need = facts.need(report.load_ctx, slots)
    ctx = min(report.load_ctx, facts.context_length or report.load_ctx)
    return need, (
        f"(weights {format_size(facts.weights)} + KV cache {format_size(need - facts.weights)} "
        f"at {ctx} tokens x {slots} slot(s))"
    )


def node_budget(report: HealthReport) -> int | None:
    """The node's model memory budget: as it says, else from its hardware profile."""
    if report.memory_budget:
        return report.memory_budget
    total = (report.hardware or {}).get("memory_total")
    return int(total * BUDGET_SHARE) if isinstance(total, int) and total > 0 else None


def has_on_disk(model: str, report: HealthReport) -> bool:
    return model in report.models or any(e.name == model for e in report.available)


def plan_deploy(
    model: str, reports: Mapping[str, HealthReport], *, load: bool
) -> dict[str, NodeStep]:
    """One step per node (see the module's rules)."""
    facts = model_facts(model, reports)
    holders = tuple(url for url, r in reports.items() if has_on_disk(model, r))
    steps = {}
    for url, report in reports.items():
        budget = node_budget(report)
        need, how = node_need(facts, report) if facts is not None else (0, "")
        if facts is not None and budget is not None and need > budget:
            why = (
                f"{model} needs {format_size(need)} {how} and this node's model memory "
                f"budget is {format_size(budget)}"
            )
            steps[url] = NodeStep(url, "refuse", why)
        elif model in report.models:
            steps[url] = NodeStep(url, "loaded", "serves it already")
        elif has_on_disk(model, report):
            steps[url] = NodeStep(url, "load" if load else "placed", "on disk already")
        else:
            peers = tuple(p for p in holders if p != url)
            why = f"from {len(peers)} peer(s) first" if peers else "from its source"
            steps[url] = NodeStep(url, "pull", why, peers)
    return steps
