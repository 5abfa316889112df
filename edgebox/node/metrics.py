"""Prometheus metrics for one node, in a registry of its own (several apps per process in tests)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgebox.runtimes.base import BATCH_BUCKETS, RuntimeStats

disable_created_metrics()  # the *_created series only add noise to every scrape

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_ITL_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)


class _RuntimeCollector(Collector):
    """Reads queue depth, slot use and batching figures from the runtimes at scrape time."""

    def __init__(self, stats: Callable[[], dict[str, RuntimeStats]]) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        families: dict[str, GaugeMetricFamily] = {
            "queued": GaugeMetricFamily(
                "edgebox_queue_depth", "Requests waiting for a sequence slot", labels=["model"]
            ),
            "running": GaugeMetricFamily(
                "edgebox_running_requests", "Requests holding a sequence slot", labels=["model"]
            ),
            "slots": GaugeMetricFamily(
                "edgebox_sequence_slots", "Sequence slots decoded together", labels=["model"]
            ),
            "decode_tokens_per_s": GaugeMetricFamily(
                "edgebox_decode_tokens_per_second",
                "Tokens generated per second over the last few seconds, all sequences",
                labels=["model"],
            ),
            "prefill_tokens_per_s": GaugeMetricFamily(
                "edgebox_prefill_tokens_per_second",
                "Prompt tokens processed per second, measured on prefill-dominated steps "
                "(0: not measured yet)",
                labels=["model"],
            ),
        }
        steps = CounterMetricFamily(
            "edgebox_engine_steps", "Batched decode calls", labels=["model"]
        )
        step_seconds = CounterMetricFamily(
            "edgebox_engine_step_seconds", "Time spent in batched decode steps", labels=["model"]
        )
        batch = HistogramMetricFamily(
            "edgebox_engine_batch_tokens",
            "Tokens per batched decode step (decode tokens plus prefill chunks)",
            labels=["model"],
        )
        failures = CounterMetricFamily(
            "edgebox_decode_failures",
            "Failed batched decodes; the engine retries each sequence alone to find the cause",
            labels=["model"],
        )
        rebuilds = CounterMetricFamily(
            "edgebox_engine_rebuilds",
            "Backend contexts rebuilt because a failure left them unusable",
            labels=["model"],
        )
        for model, stats in self._stats().items():
            for field, family in families.items():
                family.add_metric([model], getattr(stats, field))
            failures.add_metric([model], stats.decode_failures_total)
            rebuilds.add_metric([model], stats.engine_rebuilds_total)
            steps.add_metric([model], stats.steps_total)
            step_seconds.add_metric([model], stats.step_seconds_total)
            if stats.batch_size_buckets:
                counts = list(stats.batch_size_buckets)
                buckets = [(str(b), c) for b, c in zip(BATCH_BUCKETS, counts, strict=True)]
                buckets.append(("+Inf", stats.steps_total))
                batch.add_metric([model], buckets, sum_value=stats.batch_tokens_total)
        yield from families.values()
        yield from (steps, step_seconds, batch, failures, rebuilds)


class NodeMetrics:
    def __init__(self, runtime_stats: Callable[[], dict[str, RuntimeStats]]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "edgebox_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.ttft = Histogram(
            "edgebox_time_to_first_token_seconds",
            "Time from request arrival to the first generated token",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "edgebox_inter_token_seconds",
            "Time between consecutive generated tokens of one sequence",
            ["model"],
            buckets=_ITL_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "edgebox_queue_wait_seconds",
            "Time a request waited for a sequence slot",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.service = Histogram(
            "edgebox_request_service_seconds",
            "Time a request held a sequence slot (arrival to finish, less the queue wait)",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.generated = Counter(
            "edgebox_generated_tokens", "Tokens generated", ["model"], registry=r
        )
        self.prompt = Counter(
            "edgebox_prompt_tokens", "Prompt tokens received", ["model"], registry=r
        )
        self.cached = Counter(
            "edgebox_prompt_tokens_cached",
            "Prompt tokens served from a reused KV-cache prefix",
            ["model"],
            registry=r,
        )
        r.register(_RuntimeCollector(runtime_stats))


class RequestCounterMiddleware:
    """Counts every response by route template and status (pure ASGI; streaming-safe)."""

    def __init__(self, app: ASGIApp, metrics: NodeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or ("unmatched" if status == 404 else "other")
            self.metrics.requests.labels(path, str(status)).inc()


def now() -> float:
    return time.perf_counter()
