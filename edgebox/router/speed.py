"""Per-stream decode speed of each node, as the router estimates it for placement.

A node reports `edgebox_decode_tokens_per_second`: tokens over the last few seconds, all
sequences together. That figure is high on a busy node and zero on an idle one, so ranking by it
sends new work to whichever node is already working (a burst piled 13 of 14 requests onto one of
two equal nodes). What placement needs is the speed one more stream would get, so the book keeps

    per_stream = aggregate tokens/s ÷ running sequences        (sampled when running > 0)

as a time-weighted average per (node, model). An estimate loses weight with age
(`HALF_LIFE_S`): a node that has been idle a while, or was measured under another load, drifts
back to "unknown", which ranks with the best known node (`SpeedBook.apply`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from edgebox.router.nodes import NodeStatus

HALF_LIFE_S = 60.0
_FORGET_BELOW = 0.05  # an estimate whose weight has decayed below this is dropped


@dataclass(frozen=True)
class SpeedEstimate:
    tokens_per_s: float  # one stream's decode rate
    weight: float  # confidence in [0, 1]; 1 right after a sample
    at: float  # monotonic time of the last sample

    def confidence(self, now: float, half_life_s: float = HALF_LIFE_S) -> float:
        return self.weight * 0.5 ** (max(0.0, now - self.at) / half_life_s)


def folded(old: SpeedEstimate | None, sample: float, now: float) -> SpeedEstimate:
    """`old` with one new per-stream sample: the sample counts as much as the old estimate's
    remaining confidence leaves room for (a stale estimate is mostly replaced)."""
    if old is None:
        return SpeedEstimate(sample, 1.0, now)
    kept = old.confidence(now) * 0.5  # a fresh sample always moves the estimate halfway or more
    rate = kept * old.tokens_per_s + (1.0 - kept) * sample
    return SpeedEstimate(rate, 1.0, now)


class SpeedBook:
    """Per (node, model) estimates, fed from the poller's statuses."""

    def __init__(self, half_life_s: float = HALF_LIFE_S) -> None:
        self.half_life_s = half_life_s
        self._estimates: dict[tuple[str, str], SpeedEstimate] = {}
        self._seen: dict[str, float] = {}  # node → checked_at of the status last folded in

    def observe(self, node: NodeStatus) -> None:
        """Fold in a polled status once (a status is re-read on every request)."""
        if self._seen.get(node.name) == node.checked_at:
            return
        self._seen[node.name] = node.checked_at
        for model, load in node.models.items():
            streams = load.running
            if streams > 0 and load.decode_tokens_per_s > 0:
                key = (node.name, model)
                sample = load.decode_tokens_per_s / streams
                self._estimates[key] = folded(self._estimates.get(key), sample, node.checked_at)

    def estimate(self, node: str, model: str, now: float) -> tuple[float, float]:
        """(per-stream tokens/s, confidence); (0, 0) when unknown."""
        found = self._estimates.get((node, model))
        if found is None:
            return 0.0, 0.0
        confidence = found.confidence(now, self.half_life_s)
        if confidence < _FORGET_BELOW:
            del self._estimates[(node, model)]
            return 0.0, 0.0
        return found.tokens_per_s, confidence

    def apply(self, nodes: dict[str, NodeStatus], now: float) -> dict[str, NodeStatus]:
        """`nodes` with each model's decode rate replaced by this book's per-stream estimate.

        An estimate counts by its confidence c, the rest is the best known estimate for the
        model: rate = c·estimate + (1 - c)·best, so an unknown node ranks with the fastest
        rather than last, and a stale one drifts toward that."""
        rates: dict[tuple[str, str], tuple[float, float]] = {}
        best: dict[str, float] = {}
        for node in nodes.values():
            for model in node.models:
                rate, confidence = self.estimate(node.name, model, now)
                rates[node.name, model] = (rate, confidence)
                if confidence > 0:
                    best[model] = max(best.get(model, 0.0), rate)
        out = {}
        for name, node in nodes.items():
            models = {}
            for model, load in node.models.items():
                rate, confidence = rates[name, model]
                blended = confidence * rate + (1.0 - confidence) * best.get(model, 0.0)
                models[model] = replace(load, decode_tokens_per_s=blended)
            out[name] = replace(node, models=models)
        return out
