"""Node sources beyond the static list: mDNS on the LAN, and the hub's node registry.

`MdnsNodes` browses `_edgebox._tcp.local.` and yields every node that advertises its API port
in the TXT record (`api=PORT`; a node whose API listens on loopback only leaves it out and is
not routable from here). `HubNodes` reads `GET /v1/hub/nodes` with the stored user login. A
hub node seen on mDNS with the same SSH host-key fingerprint is reached at its mDNS address
(the LAN path); otherwise at the `api_url` the hub recorded (the address the hub saw its
heartbeats come from, with the API port the node reported). A loopback `api_url` means "on the
hub's box", so it is reached at the hub's own host. Hub nodes with neither are skipped with
one log line each.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol
from urllib.parse import urlsplit

from edgebox.fleet.advert import DiscoveredNode, distinct_names
from edgebox.fleet.identity import ssh_fingerprint
from edgebox.fleet.interfaces import LanInterface
from edgebox.fleet.logins import Login
from edgebox.node.security import is_loopback
from edgebox.router.nodes import Every, NodeAddress

log = logging.getLogger("edgebox.router")

HUB_REFRESH_S = 30.0


def mdns_address(node: DiscoveredNode) -> NodeAddress | None:
    """The node's API address from its advertisement; None when it advertises no API port."""
    if node.api_port is None or not node.addresses:
        return None
    return NodeAddress(node.name, f"http://{node.addresses[0]}:{node.api_port}")


class MdnsNodes:
    """Nodes seen on mDNS that advertise their API port."""

    def __init__(
        self, interfaces: Sequence[LanInterface] | None = None, *, exclude_id: str | None = None
    ) -> None:
        self.interfaces = interfaces
        self.exclude_id = exclude_id  # this node's own id under `serve --fleet`
        self._browser: Any = None

    async def start(self) -> None:
        from edgebox.fleet.mdns import NodeBrowser

        self._browser = NodeBrowser(self.interfaces)
        try:
            await self._browser.start()
        except Exception as exc:  # no usable interface: the router still serves static nodes
            log.warning("mDNS node discovery is off: %s", exc)
            self._browser = None

    async def stop(self) -> None:
        browser, self._browser = self._browser, None
        if browser is not None:
            await browser.stop()

    def discovered(self) -> list[DiscoveredNode]:
        if self._browser is None:
            return []
        return [n for n in self._browser.nodes.values() if n.node_id != self.exclude_id]

    def addresses(self) -> Iterable[NodeAddress]:
        found = self.discovered()
        names = distinct_names(found)  # the poller keys nodes by name: clones must not merge
        return [replace(a, name=names[n.node_id]) for n in found if (a := mdns_address(n))]


def seen_from_hub(api_url: str, hub_url: str) -> str:
    """`api_url` as the hub recorded it, reachable from here: a loopback host (node on the hub's
    own box) becomes the hub's host."""
    parts = urlsplit(api_url)
    hub_host = urlsplit(hub_url).hostname
    if not is_loopback(parts.hostname or "") or not hub_host:
        return api_url
    host = f"[{hub_host}]" if ":" in hub_host else hub_host
    return f"{parts.scheme}://{host}:{parts.port}"


def hub_addresses(
    answer: Mapping[str, Any], discovered: Iterable[DiscoveredNode], hub_url: str = ""
) -> tuple[list[NodeAddress], list[str]]:
    """Hub nodes (online, not revoked) at their mDNS address when an advert with the same SSH
    host-key fingerprint is seen, else at the API address the hub recorded.

    Returns the routable addresses and the names of hub nodes skipped for want of one."""
    by_fp = {d.host_key_fingerprint: d for d in discovered}
    found, skipped = [], []
    for node in answer.get("data", []):
        if not isinstance(node, Mapping) or node.get("status") != "online":
            continue
        try:
            fp = ssh_fingerprint(str(node.get("host_key") or ""))
        except ValueError:
            fp = ""
        seen = by_fp.get(fp) if fp else None
        address = mdns_address(seen) if seen is not None else None
        recorded = node.get("api_url")
        if address is not None:
            found.append(NodeAddress(str(node.get("name")), address.url))
        elif isinstance(recorded, str) and recorded:
            found.append(NodeAddress(str(node.get("name")), seen_from_hub(recorded, hub_url)))
        else:
            skipped.append(str(node.get("name")))
    return found, skipped


class HubNodes:
    """The hub's online nodes, at their mDNS or hub-recorded address (see module doc)."""

    def __init__(self, login: Login, lan: MdnsNodes | None, refresh_s: float = HUB_REFRESH_S):
        self.login = login
        self.lan = lan
        self.refresh_s = refresh_s
        self._answer: Mapping[str, Any] = {}
        self._logged: set[str] = set()
        self._every = Every(refresh_s, self.refresh)

    def fetch(self) -> Mapping[str, Any]:
        from edgebox.fleet.hub.client import HubClient

        with HubClient(self.login.hub_urls, self.login.fingerprint, bearer=self.login.token) as hub:
            answer: Mapping[str, Any] = hub.request("GET", "/v1/hub/nodes")
        return answer

    async def refresh(self) -> None:
        from edgebox.fleet.hub.client import HubError

        try:
            self._answer = await asyncio.to_thread(self.fetch)
        except HubError as exc:  # the message is the hub's; it never holds the token
            log.warning("hub node list unavailable: %s", exc.message)

    async def start(self) -> None:
        await self.refresh()
        self._every.start()

    async def stop(self) -> None:
        await self._every.stop()

    def addresses(self) -> Iterable[NodeAddress]:
        lan = self.lan.discovered() if self.lan else ()
        found, skipped = hub_addresses(self._answer, lan, self.login.hub_urls[0])
        for name in set(skipped) - self._logged:
            log.warning(
                "hub node %s skipped: the hub records no API address for it (an older node, or "
                "its API listens on loopback only) and it is not seen on this LAN's mDNS",
                name,
            )
        self._logged |= set(skipped)
        return found


class PeerRecords(Protocol):
    """What `HubPeers` reads: the peers in the hub's last heartbeat answer (a `Heartbeat`)."""

    peers: list[dict[str, Any]]

    @property
    def hub_url(self) -> str: ...


class HubPeers:
    """For `serve --fleet` on a node joined to a hub: the other online nodes the hub lists in
    its heartbeat answers (no user login needed), at their mDNS address when seen on the LAN,
    else at the address the hub recorded."""

    def __init__(self, beats: PeerRecords, lan: MdnsNodes | None = None) -> None:
        self.beats = beats
        self.lan = lan

    def addresses(self) -> Iterable[NodeAddress]:
        lan = self.lan.discovered() if self.lan else ()
        found, _ = hub_addresses({"data": self.beats.peers}, lan, self.beats.hub_url)
        return found
