"""The router pane of `edgebox top --router URL`: requests by route and cloud spend, read from
the router's Prometheus `/metrics`.

Parsing is generic so it follows the router as it grows: every series of
`edgebox_router_requests_total` is summed by its `route` label (or `target`, which
`edgebox.router` uses: a node name or `cloud:NAME`), and cloud spend is the sum of
`edgebox_router_cloud_usd_total` (the router's counter by upstream) or of
`edgebox_router_cloud_spend_usd` (gauge or counter); `edgebox_router_cloud_usd_today` is shown
too when present. A router that is down, or that exposes none of these, is "no router".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich.text import Text

REQUESTS = "edgebox_router_requests_total"
SPEND = (
    "edgebox_router_cloud_usd_total",
    "edgebox_router_cloud_spend_usd",
    "edgebox_router_cloud_spend_usd_total",
)
TODAY = "edgebox_router_cloud_usd_today"
_WANTED = (REQUESTS, TODAY, *SPEND)


@dataclass(frozen=True)
class RouterStats:
    requests: dict[str, float] = field(default_factory=dict)  # route → requests so far
    cloud_spend_usd: float | None = None
    cloud_today_usd: float | None = None
    error: str | None = None  # set when there is no router to show

    @property
    def present(self) -> bool:
        return self.error is None and (bool(self.requests) or self.cloud_spend_usd is not None)


def parse_router_metrics(text: str) -> RouterStats:
    """Requests by route and cloud spend from Prometheus text; other series are ignored."""
    lines = "\n".join(line for line in text.splitlines() if line.startswith(_WANTED))
    requests: dict[str, float] = {}
    spend: float | None = None
    today: float | None = None
    for family in text_string_to_metric_families(lines):
        for s in family.samples:
            if s.name == REQUESTS:
                route = s.labels.get("route") or s.labels.get("target") or "?"
                requests[route] = requests.get(route, 0.0) + s.value
            elif s.name in SPEND:
                spend = (spend or 0.0) + s.value
            elif s.name == TODAY:
                today = s.value
    return RouterStats(requests=requests, cloud_spend_usd=spend, cloud_today_usd=today)


class RouterSource:
    """Polls one router's `/metrics`; never raises into the UI."""

    def __init__(self, url: str, *, timeout: float = 2.0) -> None:
        self.url = url.rstrip("/")
        self._client = httpx.AsyncClient(timeout=timeout, trust_env=False)

    async def poll(self) -> RouterStats:
        try:
            r = await self._client.get(self.url + "/metrics")
            r.raise_for_status()
            return parse_router_metrics(r.text)
        except (httpx.HTTPError, ValueError) as exc:
            return RouterStats(error=type(exc).__name__)

    async def aclose(self) -> None:
        await self._client.aclose()


def router_text(stats: RouterStats | None) -> Text:
    text = Text("router  ", style="bold")
    if stats is None or not stats.present:
        why = f" ({stats.error})" if stats is not None and stats.error else ""
        text.append(f"no router{why}", style="dim")
        return text
    total = sum(stats.requests.values())
    text.append(f"{total:.0f} requests")
    for route, n in sorted(stats.requests.items(), key=lambda kv: -kv[1]):
        text.append(f"   {route} {n:.0f}")
    if stats.cloud_spend_usd is not None:
        text.append(f"   cloud spend ${stats.cloud_spend_usd:.2f}", style="yellow")
    if stats.cloud_today_usd is not None:
        text.append(f" (today ${stats.cloud_today_usd:.2f})", style="yellow")
    return text
