"""Node sources beyond the static list: mDNS on the LAN, and the hub's node registry.

`MdnsNodes` browses `_edgebox._tcp.local.` and yields every node that advertises its API port
in the TXT record (`api=PORT`; a node whose API listens on loopback only leaves it out and is
not routable from here). `HubNodes` reads `GET /v1/hub/nodes` with the stored user login. The
hub's records carry no API address (only the SSH tunnel port on the relay), so a hub node is
routable only when this router also sees it on mDNS with the same SSH host-key fingerprint;
the others are skipped with one log line each.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from edgebox.fleet.advert import DiscoveredNode
from edgebox.fleet.identity import ssh_fingerprint
from edgebox.fleet.interfaces import LanInterface
from edgebox.fleet.logins import Login
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
        return [a for n in self.discovered() if (a := mdns_address(n)) is not None]


def hub_addresses(
    answer: Mapping[str, Any], discovered: Iterable[DiscoveredNode]
) -> tuple[list[NodeAddress], list[str]]:
    """Hub nodes (online, not revoked) matched to mDNS adverts by SSH host-key fingerprint.

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
        seen = by_fp.get(fp)
        address = mdns_address(seen) if seen is not None else None
        if address is None:
            skipped.append(str(node.get("name")))
        else:
            found.append(NodeAddress(str(node.get("name")), address.url))
    return found, skipped


class HubNodes:
    """The hub's online nodes that this router can reach on the LAN (see module doc)."""

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
        found, skipped = hub_addresses(self._answer, self.lan.discovered() if self.lan else ())
        for name in set(skipped) - self._logged:
            log.warning(
                "hub node %s skipped: the hub records no API address and it is not seen on "
                "this LAN's mDNS with an API port",
                name,
            )
        self._logged |= set(skipped)
        return found
