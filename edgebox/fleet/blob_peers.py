"""Which nodes to ask for a model blob before the internet: the hub's other nodes (from this
node's heartbeat answers, or for a logged-in laptop from `GET /v1/hub/blob-grants`), else mDNS
neighbours on the LAN. Hub peers come with a blob grant each (api/blob_grant.py).

The candidates are only asked; whether one holds a blob is what its `/v1/blobs/{sha256}`
routes answer (the fetcher keeps those whose chunk lists agree and checks every byte)."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgebox.models.transfer import Peer

if TYPE_CHECKING:
    from edgebox.fleet.hub_access import HubAccess

log = logging.getLogger(__name__)
MDNS_WAIT_S = 1.5  # how long a pull listens for LAN neighbours when no hub names peers
MDNS_CACHE_S = 30.0
GRANT_REFRESH_S = 300.0  # a laptop's pull asks its hub for fresh grants this often (they last 900)


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
    from edgebox.fleet.hub.client import HubError
    from edgebox.fleet.hub_access import HubAccessError, find_hub

    try:
        access = find_hub(home=home)
    except HubAccessError as exc:
        log.warning("not asking the hub for peers: %s", exc)
        return []
    if access is None or not access.fingerprint:
        return []
    grants = HubGrants(access)
    try:
        grants.fetch()
    except HubError as exc:
        log.warning("the hub at %s named no peers: %s", access.url, exc.message)
        return []
    return grants.peers()


def hub_blob_holders(digests: list[str], home: Path | None = None) -> set[str] | None:
    """The API addresses (as reachable from here) of the hub's online nodes that its blob
    registry says hold any of `digests` (`GET /v1/hub/blobs/{sha256}`, from their last
    beats). None where the hub cannot say (no login, out of reach, a hub without the
    registry): then a pull asks every node it was given."""
    from edgebox.fleet.hub.client import HubClient, HubError
    from edgebox.fleet.hub_access import HubAccessError, find_hub, seen_from_hub

    try:
        access = find_hub(home=home)
    except HubAccessError:
        return None
    if access is None or not access.fingerprint or not digests:
        return None
    found: set[str] = set()
    try:
        with HubClient([access.url], access.fingerprint, bearer=access.token, timeout=5) as hub:
            for digest in sorted({d.lower() for d in digests}):
                answer = hub.request("GET", f"/v1/hub/blobs/{digest}")
                for node in answer.get("nodes") or []:
                    url = node.get("api_url")
                    if _text(url) and str(url).startswith(("http://", "https://")):
                        found.add(seen_from_hub(str(url), access.url))
    except HubError as exc:
        log.warning(
            "the hub at %s did not say which nodes hold the model: %s", access.url, exc.message
        )
        return None
    return found


class HubGrants:
    """A logged-in box's blob grants from its hub (node URL → grant), asked again every
    `GRANT_REFRESH_S` while a pull uses them, so a pull longer than a grant keeps its peers."""

    def __init__(self, access: HubAccess, clock: Callable[[], float] = time.monotonic) -> None:
        self.access, self.clock = access, clock
        self._lock = threading.Lock()
        self._grants: dict[str, str] = {}
        self._at = -GRANT_REFRESH_S

    def fetch(self) -> dict[str, str]:
        """Ask the hub now (raises HubError)."""
        from edgebox.fleet.hub.client import HubClient
        from edgebox.fleet.hub_access import seen_from_hub

        a = self.access
        with HubClient([a.url], a.fingerprint or "", bearer=a.token, timeout=5) as hub:
            answer = hub.request("GET", "/v1/hub/blob-grants")
        found = {}
        for node in answer.get("data") or []:
            url, grant = node.get("api_url"), node.get("blob_grant")
            if _text(url) and str(url).startswith(("http://", "https://")) and _text(grant):
                found[seen_from_hub(str(url), a.url)] = str(grant)
        self._grants, self._at = found, self.clock()
        return found

    def current(self, url: str, fallback: str) -> str:
        """The grant for `url` now (from the worker threads of a pull, before each request)."""
        from edgebox.fleet.hub.client import HubError

        with self._lock:
            if self.clock() - self._at >= GRANT_REFRESH_S:
                try:
                    self.fetch()
                except HubError as exc:  # keep the grants held; ask again after the interval
                    log.warning("could not renew blob grants: %s", exc.message)
                    self._at = self.clock()
            return self._grants.get(url, fallback)

    def peers(self) -> list[Peer]:
        return [
            Peer(url, grant, renew=functools.partial(self.current, url, grant))
            for url, grant in self._grants.items()
        ]
