"""Cloud burst: when a request may go to a cloud upstream, and the daily spend it may cost.

Policy per upstream (`when`):
- `always`: the cloud first, local nodes as fallback;
- `overflow`: the cloud first when every local candidate queues >= `overflow_queue_depth`,
  otherwise as `fallback`;
- `fallback`: local nodes first, the cloud when they all fail.
Under any policy, `ttft_target_s` puts the cloud first when every local candidate's predicted
wait for a slot (`predicted_wait_s`) exceeds it. A model no local node serves (or no node is
up, or none has the context for the request) goes to the cloud under any policy. A request
marked local-only (`x-edgebox-local-only: 1`, or sent with a local-only API key) never goes to
the cloud, and nothing bursts once the day's spend reaches `max_usd_per_day`.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgebox.router.config import CloudUpstream
from edgebox.router.nodes import ModelLoad
from edgebox.router.placement import Candidate


@dataclass(frozen=True)
class CloudTarget:
    upstream: CloudUpstream
    model: str  # the cloud's name for it

    @property
    def name(self) -> str:
        return "cloud:" + self.upstream.name


Target = Candidate | CloudTarget


def upstream_for(upstreams: Sequence[CloudUpstream], model: str) -> CloudUpstream | None:
    return next((u for u in upstreams if model in u.models), None)


def predicted_wait_s(load: ModelLoad) -> float:
    """Seconds a new request would wait for a slot: the requests ahead of it (beyond the free
    slots) over the slots, times the measured mean time a request holds a slot."""
    ahead = max(0, load.running + load.queued + 1 - load.slots)
    return ahead / max(1, load.slots) * load.mean_request_s


def plan_targets(
    model: str,
    local: Sequence[Candidate],
    queued: Mapping[str, int],
    upstreams: Sequence[CloudUpstream],
    *,
    local_only: bool,
    over_cap: bool,
    waits: Mapping[str, float] | None = None,
    no_local_reason: str = "no-local-node",
) -> tuple[list[tuple[Target, str]], str | None]:
    """Ordered targets with the reason each is there, and why the cloud was left out (if so)."""
    plan: list[tuple[Target, str]] = [(c, c.reason) for c in local]
    upstream = upstream_for(upstreams, model)
    if upstream is None:
        return plan, None
    if local_only:
        return plan, "local-only"
    if over_cap:
        return plan, "spend-cap"
    cloud = CloudTarget(upstream, upstream.models[model])
    if not local:
        return [(cloud, no_local_reason)], None
    target = upstream.ttft_target_s
    if target is not None and all((waits or {}).get(c.node, 0.0) > target for c in local):
        return [(cloud, "ttft"), *plan], None
    if upstream.when == "always":
        return [(cloud, "policy-always"), *plan], None
    if upstream.when == "overflow" and all(
        queued.get(c.node, 0) >= upstream.overflow_queue_depth for c in local
    ):
        return [(cloud, "overflow"), *plan], None
    return [*plan, (cloud, "fallback")], None


def cost_usd(upstream: CloudUpstream, cloud_model: str, usage: Mapping[str, Any]) -> float:
    price = upstream.prices.get(cloud_model)
    if price is None:
        return 0.0
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    return (prompt * price.input + completion * price.output) / 1e6


class SpendLedger:
    """Today's cloud spend, persisted as JSON so a restart does not reset the cap."""

    def __init__(self, path: Path, cap_usd: float | None) -> None:
        self.path = path
        self.cap_usd = cap_usd
        self._lock = threading.Lock()
        self._day, self._usd, self._by_model = self._load()

    @staticmethod
    def _today() -> str:
        return dt.datetime.now(dt.UTC).date().isoformat()

    def _load(self) -> tuple[str, float, dict[str, float]]:
        try:
            data = json.loads(self.path.read_text())
            if data.get("day") == self._today():
                return data["day"], float(data["usd"]), dict(data.get("by_model", {}))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
        return self._today(), 0.0, {}

    def spent_today(self) -> float:
        with self._lock:
            if self._day != self._today():
                self._day, self._usd, self._by_model = self._today(), 0.0, {}
            return self._usd

    def over_cap(self) -> bool:
        return self.cap_usd is not None and self.spent_today() >= self.cap_usd

    def add(self, model: str, usd: float) -> None:
        self.spent_today()  # rolls the day over
        with self._lock:
            self._usd += usd
            self._by_model[model] = self._by_model.get(model, 0.0) + usd
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(
                json.dumps({"day": self._day, "usd": self._usd, "by_model": self._by_model})
            )
            tmp.replace(self.path)
