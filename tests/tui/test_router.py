"""The router pane: metrics from a real prometheus_client registry, rendered by generate_latest
and served over HTTP on loopback; a missing router is "no router"."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest, make_asgi_app
from rich.text import Text
from textual.pilot import Pilot
from textual.widgets import Static

from edgebox.router.metrics import RouterMetrics
from edgebox.tui.app import FleetApp
from edgebox.tui.router import RouterSource, parse_router_metrics, router_text
from edgebox.tui.source import ReplaySource
from tests.conftest import free_port
from tests.tui.fleet import fleet
from tests.tui.test_app import drive


def router_registry(spend_as_counter: bool = False) -> CollectorRegistry:
    registry = CollectorRegistry()
    requests = Counter("edgebox_router_requests", "requests", ["route", "model"], registry=registry)
    requests.labels(route="local", model="a").inc(7)
    requests.labels(route="local", model="b").inc(3)
    requests.labels(route="cloud", model="a").inc(2)
    Counter("edgebox_router_other", "ignored", registry=registry).inc(99)
    if spend_as_counter:
        Counter("edgebox_router_cloud_spend_usd", "spend", registry=registry).inc(0.25)
    else:
        Gauge("edgebox_router_cloud_spend_usd", "spend", registry=registry).set(1.5)
    return registry


def test_requests_by_route_and_spend_from_a_real_registry() -> None:
    stats = parse_router_metrics(generate_latest(router_registry()).decode())
    assert stats.requests == {"local": 10.0, "cloud": 2.0}
    assert stats.cloud_spend_usd == 1.5 and stats.present
    counted = parse_router_metrics(generate_latest(router_registry(True)).decode())
    assert counted.cloud_spend_usd == 0.25
    line = router_text(stats).plain
    assert "12 requests" in line and "local 10" in line and "$1.50" in line


def test_the_routers_own_registry() -> None:
    """edgebox.router's RouterMetrics: requests by target and status, spend by upstream."""
    metrics = RouterMetrics(spent_today=lambda: 0.75)
    metrics.routed.labels("spark", "200").inc(5)
    metrics.routed.labels("spark", "503").inc(1)
    metrics.routed.labels("cloud:openai", "200").inc(2)
    metrics.cloud_usd.labels("openai").inc(1.25)
    stats = parse_router_metrics(generate_latest(metrics.registry).decode())
    assert stats.requests == {"spark": 6.0, "cloud:openai": 2.0}
    assert stats.cloud_spend_usd == 1.25 and stats.cloud_today_usd == 0.75
    assert "today $0.75" in router_text(stats).plain


def test_metrics_without_router_series_show_no_router() -> None:
    registry = CollectorRegistry()
    Counter("edgebox_requests", "a node, not a router", registry=registry).inc()
    stats = parse_router_metrics(generate_latest(registry).decode())
    assert not stats.present and "no router" in router_text(stats).plain


@pytest.fixture
def router_url() -> Iterator[str]:
    port = free_port()
    app = make_asgi_app(registry=router_registry())
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def pane(app: FleetApp) -> str:
    content = app.query_one("#router", Static).render()
    return content.plain if isinstance(content, Text) else str(content)


def test_the_pane_polls_a_live_router_and_a_dead_one_reads_no_router(router_url: str) -> None:
    async def steps(app: FleetApp, pilot: Pilot[None]) -> None:
        assert "12 requests" in pane(app) and "cloud 2" in pane(app)

    drive(ReplaySource([fleet()]), steps, router=RouterSource(router_url))

    async def dead_steps(app: FleetApp, pilot: Pilot[None]) -> None:
        assert "no router" in pane(app)

    drive(
        ReplaySource([fleet()]), dead_steps, router=RouterSource(f"http://127.0.0.1:{free_port()}")
    )
