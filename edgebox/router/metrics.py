"""The router's Prometheus metrics: routes taken, failovers, splits, cloud spend."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge


class RouterMetrics:
    def __init__(self, spent_today: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.routed = Counter(
            "edgebox_router_requests",
            "Requests answered, by target (node name or cloud:NAME) and status",
            ["target", "status"],
            registry=r,
        )
        self.failovers = Counter(
            "edgebox_router_failovers",
            "Targets that failed before answering",
            ["target"],
            registry=r,
        )
        self.splits = Counter(
            "edgebox_router_splits",
            "Prefill/decode split attempts by outcome",
            ["outcome"],
            registry=r,
        )
        self.cloud_usd = Counter(
            "edgebox_router_cloud_usd",
            "US dollars spent on cloud upstreams",
            ["upstream"],
            registry=r,
        )
        spend = Gauge(
            "edgebox_router_cloud_usd_today", "Cloud spend so far today (UTC)", registry=r
        )
        spend.set_function(spent_today)
