"""Where `edgebox top` gets its snapshots: nodes polled directly, a hub, or a fixed replay."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Iterable, Sequence
from typing import Protocol

import httpx

from edgebox.fleet.hub_access import seen_from_hub
from edgebox.tui.parse import (
    MetricsSample,
    node_from_health,
    node_from_hub,
    parse_metrics,
    unreachable_node,
)
from edgebox.tui.snapshot import FleetSnapshot, NodeSnapshot

DEFAULT_TIMEOUT = httpx.Timeout(2.0, connect=1.0)
_LIMITS = httpx.Limits(max_connections=2, max_keepalive_connections=2)  # /health + /metrics


class FleetSource(Protocol):
    """One seam for every way of seeing the fleet; the TUI only ever calls `poll`."""

    async def poll(self) -> FleetSnapshot:
        """The fleet now. Must not raise for a node that fails: report it in the snapshot."""
        ...

    async def aclose(self) -> None: ...


class DirectSource:
    """Polls each node's `/health` and `/metrics` concurrently; rates come from two polls.

    A node that stops answering is `unreachable` at once and `offline` once it has not answered
    for `offline_after` seconds (`edgebox top` uses 3 poll intervals, as the hub's heartbeat TTL).
    """

    def __init__(
        self,
        urls: Iterable[str],
        *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        offline_after: float | None = None,
    ) -> None:
        self.offline_after = offline_after
        self._timeout = timeout
        # A small kept-alive pool per node: one shared pool scans all its connections for every
        # request, which made polling 200 nodes cost seconds of CPU.
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._previous: dict[str, tuple[float, MetricsSample]] = {}  # url → (monotonic, sample)
        self._last_seen: dict[str, float] = {}
        for url in urls:
            self.add(url)

    @property
    def urls(self) -> list[str]:
        return list(self._clients)

    def add(self, url: str) -> None:
        """Poll `url` too (from the next poll on); adding a known URL does nothing."""
        url = url.rstrip("/")
        if url not in self._clients:
            self._clients[url] = httpx.AsyncClient(timeout=self._timeout, limits=_LIMITS)

    async def remove(self, url: str) -> None:
        client = self._clients.pop(url.rstrip("/"), None)
        if client is not None:
            await client.aclose()

    async def poll(self) -> FleetSnapshot:
        nodes = await asyncio.gather(*(self._poll_one(u, c) for u, c in self._clients.items()))
        return FleetSnapshot(taken_at=time.time(), nodes=tuple(nodes))

    async def _poll_one(self, url: str, client: httpx.AsyncClient) -> NodeSnapshot:
        try:
            health_r, metrics_r = await asyncio.gather(
                client.get(url + "/health"), client.get(url + "/metrics")
            )
            health_r.raise_for_status()
            health = health_r.json()
            if not isinstance(health, dict):
                raise ValueError("/health did not answer a JSON object")
        except (httpx.HTTPError, ValueError) as exc:
            last = self._last_seen.get(url)
            row = unreachable_node(url, _describe(exc), last_seen=last)
            ttl = self.offline_after
            if last is not None and ttl is not None and time.time() - last > ttl:
                row = row.model_copy(update={"status": "offline"})
            return row
        clock, seen = time.monotonic(), time.time()
        metrics = None
        if metrics_r.status_code == 200:
            try:
                metrics = parse_metrics(metrics_r.text)
            except ValueError:
                metrics = None  # an older or foreign /metrics: show the node without rates
        before = self._previous.get(url)
        if metrics is not None:
            self._previous[url] = (clock, metrics)
        self._last_seen[url] = seen
        return node_from_health(
            url=url,
            health=health,
            metrics=metrics,
            previous=before[1] if before else None,
            elapsed_s=clock - before[0] if before else None,
            seen_at=seen,
        )

    async def aclose(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self._clients.values()))


class HubSource:
    """The hub's view: `GET {hub}/v1/hub/nodes` (admin bearer token) → `{"data": [node, ...]}`.

    `verify` is the TLS check: the hub's pinned-fingerprint context
    (`edgebox.fleet.hub.client.pinned_context`) for a real hub, True for a CA-signed one.
    """

    def __init__(
        self,
        hub_url: str,
        token: str | None = None,
        *,
        verify: ssl.SSLContext | bool = True,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        self.hub_url = hub_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.AsyncClient(
            timeout=timeout, headers=headers, verify=verify, trust_env=False
        )

    async def poll(self) -> FleetSnapshot:
        try:
            r = await self._client.get(self.hub_url + "/v1/hub/nodes")
            r.raise_for_status()
            body = r.json()
            entries = body.get(
                "data", body.get("nodes", [])
            )  # the hub answers an OpenAI-style list
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            hub = unreachable_node(self.hub_url, "hub: " + _hub_problem(exc))
            return FleetSnapshot(
                taken_at=time.time(), nodes=(hub.model_copy(update={"via": "hub"}),)
            )
        nodes = tuple(
            self._reachable(node_from_hub(e))
            for e in entries
            if isinstance(e, dict) and e.get("status") != "revoked"
        )
        return FleetSnapshot(taken_at=time.time(), nodes=nodes)

    def _reachable(self, node: NodeSnapshot) -> NodeSnapshot:
        """The hub records a node on its own box at a loopback address; from here that node
        is at the hub's host."""
        if node.url is None:
            return node
        return node.model_copy(update={"url": seen_from_hub(node.url, self.hub_url)})

    async def aclose(self) -> None:
        await self._client.aclose()


class MergedSource:
    """Several sources shown as one fleet (e.g. the local node directly plus a hub)."""

    def __init__(self, sources: Sequence[FleetSource]) -> None:
        self.sources = list(sources)

    async def poll(self) -> FleetSnapshot:
        snaps = await asyncio.gather(*(s.poll() for s in self.sources))
        nodes = one_row_per_node(n for snap in snaps for n in snap.nodes)
        return FleetSnapshot(taken_at=max(s.taken_at for s in snaps), nodes=nodes)

    async def aclose(self) -> None:
        for source in self.sources:
            await source.aclose()


def one_row_per_node(nodes: Iterable[NodeSnapshot]) -> tuple[NodeSnapshot, ...]:
    """The hub's entry for a node this box also reaches directly (mDNS, local) is left out:
    the direct one is polled live. One node is recognised by its key fingerprints, never by
    its name (two boxes may share one); a node with no fingerprint is always kept."""
    listed = list(nodes)
    live = [n for n in listed if n.via == "direct" and n.status == "online"]
    direct = {fp for n in live for fp in n.key_fingerprints}
    return tuple(n for n in listed if n.via != "hub" or not direct.intersection(n.key_fingerprints))


class ReplaySource:
    """Replays fixed snapshots (the last one repeats): for tests, demos and recorded fleets."""

    def __init__(self, snapshots: Sequence[FleetSnapshot]) -> None:
        if not snapshots:
            raise ValueError("ReplaySource needs at least one snapshot")
        self.snapshots = list(snapshots)
        self.polls = 0

    async def poll(self) -> FleetSnapshot:
        snap = self.snapshots[min(self.polls, len(self.snapshots) - 1)]
        self.polls += 1
        return snap

    async def aclose(self) -> None:
        return None


def _hub_problem(exc: BaseException) -> str:
    """Why the hub's list could not be read, and what to do about it."""
    if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code in (401, 403):
        return (
            f"HTTP {exc.response.status_code}: the hub refused this key; run `edgebox login "
            "ebu1_...` again, or pass --hub-token with the admin key"
        )
    if isinstance(exc, httpx.ConnectError) and "certificate" in str(exc).lower():
        return "its certificate is not the one pinned (check --hub-fingerprint and the URL)"
    return _describe(exc)


def _describe(exc: BaseException) -> str:
    """One line for the UI; never includes request headers (tokens)."""
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.ConnectError):
        return "connection refused" if "refused" in str(exc).lower() else "cannot connect"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
