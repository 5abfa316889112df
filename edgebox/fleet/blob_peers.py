"""Which nodes to ask for a model blob before the internet: the hub's other nodes (from this
node's heartbeat answers, or for a logged-in laptop from `GET /v1/hub/blob-grants`), else mDNS
neighbours on the LAN. Hub peers come with a blob grant each (api/blob_grant.py).

The candidates are only asked; whether one holds a blob is what its `/v1/blobs/{sha256}`
routes answer (the fetcher keeps those whose chunk lists agree and checks every byte)."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgebox.models.transfer import Peer

log = logging.getLogger(__name__)
MDNS_WAIT_S = 1.5  # how long a pull listens for LAN neighbours when no hub names peers
MDNS_CACHE_S = 30.0


def hub_candidates(peers: list[dict[str, Any]], key: str | None) -> list[Peer]:
    """The hub's online nodes with an API address, each with the least credential that reads
    its blobs: the hub's blob grant for it, else its own API key when the hub gave it (a
    `--fleet` node's heartbeat, an older hub), else `key` (the fleet key these nodes share)."""
    found = []
    for p in peers:
        url = p.get("api_url")
        if isinstance(url, str) and url.startswith(("http://", "https://")):
            own = _credential(p)
            found.append(Peer(url, own or key))
    return found


def _credential(peer: dict[str, Any]) -> str | None:
    own = next((c for c in (peer.get("blob_grant"), peer.get("api_key")) if _text(c)), None)
    return str(own) if own else None


def renewing(peers: list[Peer], hub_peers: Callable[[], list[dict[str, Any]]]) -> list[Peer]:
    """`peers` whose key follows the hub's latest answer for their URL (a grant lasts 15
    minutes; heartbeats bring a fresh one every few seconds, so a longer pull keeps going)."""

    def current(url: str, key: str | None) -> str | None:
        for p in hub_peers():
            if p.get("api_url") == url:
                return _credential(p) or key
        return key

    return [Peer(p.url, p.key, renew=functools.partial(current, p.url, p.key)) for p in peers]


def _text(value: object) -> bool:
    return isinstance(value, str) and bool(value)


def mdns_candidates(own_id: str | None, key: str | None, wait: float = MDNS_WAIT_S) -> list[Peer]:
    """Nodes that answer mDNS within `wait` seconds, this one left out (blocking: run it in
    the pull's thread, never on the event loop)."""
    from edgebox.fleet.mdns import discover

    try:
        nodes = asyncio.run(discover(wait))
    except Exception as exc:  # mDNS is a hint: no neighbours rather than a failed pull
        log.warning("mDNS discovery failed: %s", exc)
        return []
    found = []
    for node in nodes:
        if node.node_id == own_id or node.api_port is None or not node.addresses:
            continue
        host = node.addresses[0]
        host = f"[{host}]" if ":" in host else host
        found.append(Peer(f"http://{host}:{node.api_port}", key))
    return found


class PeerFinder:
    """`NodeState.find_peers` for a running node: hub peers when joined, else mDNS (cached)."""

    def __init__(
        self,
        hub_peers: Callable[[], list[dict[str, Any]]],
        *,
        own_id: str | None,
        key: str | None,
        mdns: bool,
    ) -> None:
        self.hub_peers, self.own_id, self.key, self.mdns = hub_peers, own_id, key, mdns
        self._lan: tuple[float, list[Peer]] = (-MDNS_CACHE_S, [])

    def __call__(self) -> list[Peer]:
        peers = renewing(hub_candidates(self.hub_peers(), self.key), self.hub_peers)
        if peers or not self.mdns:
            return peers
        at, cached = self._lan
        if time.monotonic() - at < MDNS_CACHE_S:
            return cached
        found = mdns_candidates(self.own_id, self.key)
        self._lan = (time.monotonic(), found)
        return found


def hub_grant_peers(home: Path | None = None) -> list[Peer]:
    """For a box logged in to a hub (`edgebox login`, or the hub's own box): the hub's online
    nodes, each with a blob grant for it (`GET /v1/hub/blob-grants`), their addresses as seen
    from here. No login, or a hub out of reach: none (a warning), and the pull goes on."""
    from edgebox.fleet.hub.client import HubClient, HubError
    from edgebox.fleet.hub_access import HubAccessError, find_hub, seen_from_hub

    try:
        access = find_hub(home=home)
    except HubAccessError as exc:
        log.warning("not asking the hub for peers: %s", exc)
        return []
    if access is None or not access.fingerprint:
        return []
    try:
        with HubClient([access.url], access.fingerprint, bearer=access.token, timeout=5) as hub:
            answer = hub.request("GET", "/v1/hub/blob-grants")
    except HubError as exc:
        log.warning("the hub at %s named no peers: %s", access.url, exc.message)
        return []
    found = []
    for node in answer.get("data") or []:
        url, grant = node.get("api_url"), node.get("blob_grant")
        if _text(url) and str(url).startswith(("http://", "https://")) and _text(grant):
            found.append(Peer(seen_from_hub(str(url), access.url), str(grant)))
    return found
