"""`edgebox deploy`: what to do on each node, decided from their /health reports (pure).

For each node, in order:

    refuse   when the model's weights exceed the node's model memory budget (its `/health`
             `memory_budget`, else 80 % of the probe's `memory_total`), with both numbers;
    loaded   when it serves the model already (nothing to do);
    load     when the model is on its disk (`available`) and `--load` was asked;
    placed   when it is on its disk and no load was asked;
    pull     otherwise: the node pulls it (peers first: the nodes that have it), then loads it
             if asked.

The weights' size is what the fleet reports for the model (a node that has it loaded or on
disk); where no node has it, the check waits for the node's own load, which refuses a model
over its budget with the same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from edgebox.api.health import HealthReport
from edgebox.models.footprint import format_size

BUDGET_SHARE = 0.8  # as the node's own default (node/ondemand.py)


@dataclass(frozen=True)
class NodeStep:
    """What deploy does on one node, and why."""

    node: str  # the node's URL
    action: str  # "refuse", "loaded", "load", "placed", "pull"
    why: str = ""
    peers: tuple[str, ...] = field(default=())  # nodes to pull from first


def model_size(model: str, reports: Mapping[str, HealthReport]) -> int | None:
    """The model's size in bytes as any node reports it (loaded or on disk); None: unknown."""
    for report in reports.values():
        loaded = report.models.get(model)
        if loaded is not None and loaded.size_bytes:
            return loaded.size_bytes
        for entry in report.available:
            if entry.name == model and entry.size_bytes:
                return entry.size_bytes
    return None


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
    size = model_size(model, reports)
    holders = tuple(url for url, r in reports.items() if has_on_disk(model, r))
    steps = {}
    for url, report in reports.items():
        budget = node_budget(report)
        if size is not None and budget is not None and size > budget:
            why = (
                f"{model} needs {format_size(size)} for its weights alone and this node's "
                f"model memory budget is {format_size(budget)}"
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
