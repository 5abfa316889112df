"""Node sources beyond the static list: mDNS on the LAN, and the hub's node registry.

`MdnsNodes` browses `_edgebox._tcp.local.` and yields every node that advertises its API port
in the TXT record (`api=PORT`; a node whose API listens on loopback only leaves it out and is
not routable from here), as *unverified*: an advert is a claim anyone on the LAN can make, so
the router asks the node to prove it holds a pinned key first (`router.trust`). `HubNodes`
reads `GET /v1/hub/nodes` with the stored user login. A hub node is reached at the `api_url`
the hub recorded (the address the hub saw its heartbeats come from, with the API port the node
reported); when an advert with its fingerprint is seen on the LAN, the advert's address is
tried first but used only once the node there proves it holds the key the hub recorded for
that node (mDNS never overrides what the hub says by itself). A loopback `api_url` means "on
the hub's box", so it is reached at the hub's own host. Hub nodes with no usable address are
skipped with one log line each.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

from edgebox.fleet.advert import DiscoveredNode, distinct_names
from edgebox.fleet.hub_access import seen_from_hub
from edgebox.fleet.identity import ssh_fingerprint
from edgebox.fleet.interfaces import LanInterface
from edgebox.fleet.logins import Login
from edgebox.router.nodes import Every, NodeAddress

log = logging.getLogger("edgebox.router")

HUB_REFRESH_S = 30.0


def mdns_address(
    node: DiscoveredNode, keys: Iterable[str] = (), name: str | None = None
) -> NodeAddress | None:
    """The node's API address from its advertisement, unverified until it proves it holds one
    of `keys`; None when it advertises no API port."""
    if node.api_port is None or not node.addresses:
        return None
    host = node.addresses[0]
    host = f"[{host}]" if ":" in host else host
    return NodeAddress(
        name or node.name,
        f"http://{host}:{node.api_port}",
        trust="unverified",
        node_id=node.node_id,
        keys=frozenset(keys),
    )


class MdnsNodes:
    """Nodes seen on mDNS that advertise their API port (unverified; `pins` are the node-key
    fingerprints the operator trusts)."""

    def __init__(
        self,
        interfaces: Sequence[LanInterface] | None = None,
        *,
        exclude_id: str | None = None,
        pins: Iterable[str] = (),
    ) -> None:
        self.interfaces = interfaces
        self.exclude_id = exclude_id  # this node's own id under `serve --fleet`
        self.pins = frozenset(pins)
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
        return [
            replace(a, name=name)
            for n, name in zip(found, names, strict=True)
            if (a := mdns_address(n, self.pins))
        ]


def _fingerprints(*key_lines: object) -> set[str]:
    found = set()
    for line in key_lines:
        try:
            found.add(ssh_fingerprint(str(line or "")))
        except ValueError:
            continue
    return found


def hub_address(
    node: Mapping[str, Any], by_fp: Mapping[str, DiscoveredNode], hub_url: str
) -> NodeAddress | None:
    """One online hub node: at its LAN address if an advert matches it (to be proved with the
    key the hub recorded), falling back to the address the hub recorded; None with neither."""
    name = str(node.get("name"))
    recorded = node.get("api_url")
    hub = seen_from_hub(recorded, hub_url) if isinstance(recorded, str) and recorded else None
    # Adverts carry the sshd host key's fingerprint, or the node key's when sshd's is unreadable.
    advert_fps = _fingerprints(node.get("host_key"), node.get("ssh_public_key"))
    seen = next((by_fp[fp] for fp in sorted(advert_fps) if fp in by_fp), None)
    provable = _fingerprints(node.get("ssh_public_key"))  # what the node signs with
    lan = mdns_address(seen, provable, name) if seen is not None else None
    key = node.get("api_key") or None  # its own key, sent once it is trusted (router.trust)
    if lan is not None and (provable or hub is None):
        return replace(lan, fallback_url=hub, key=key)
    return NodeAddress(name, hub, trust="hub", key=key) if hub else None


def hub_addresses(
    answer: Mapping[str, Any], discovered: Iterable[DiscoveredNode], hub_url: str = ""
) -> tuple[list[NodeAddress], list[str]]:
    """Hub nodes (online, not revoked), each by `hub_address`.

    Returns the addresses and the names of hub nodes skipped for want of one."""
    by_fp = {d.host_key_fingerprint: d for d in discovered}
    found, skipped = [], []
    for node in answer.get("data", []):
        if not isinstance(node, Mapping) or node.get("status") != "online":
            continue
        address = hub_address(node, by_fp, hub_url)
        if address is None:
            skipped.append(str(node.get("name")))
        else:
            found.append(address)
    return found, skipped


class HubNodes:
    """The hub's online nodes, at their proved LAN or hub-recorded address (see module doc)."""

    def __init__(self, login: Login, lan: MdnsNodes | None, refresh_s: float = HUB_REFRESH_S):
        self.login = login
        self.lan = lan
        self.refresh_s = refresh_s
        self._answer: Mapping[str, Any] = {}
        self._logged: set[str] = set()
        self._every = Every(refresh_s, self.refresh)

    def fetch(self) -> Mapping[str, Any]:
        """The node list, each node with its API key (`GET /v1/hub/node-keys`, a separate
        route so that keys never travel with the list `edgebox nodes` prints)."""
        from edgebox.fleet.hub.client import HubClient, HubError

        with HubClient(self.login.hub_urls, self.login.fingerprint, bearer=self.login.token) as hub:
            answer: dict[str, Any] = hub.request("GET", "/v1/hub/nodes")
            try:
                keys = hub.request("GET", "/v1/hub/node-keys").get("data", [])
            except HubError as exc:  # an older hub mints no node keys
                if exc.status != 404:
                    raise
                keys = []
        by_id = {k.get("id"): k.get("api_key") for k in keys if isinstance(k, dict)}
        nodes = [
            n | {"api_key": by_id.get(n.get("id"))}
            for n in answer.get("data", [])
            if isinstance(n, dict)
        ]
        return answer | {"data": nodes}

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

    @property
    def peers(self) -> list[dict[str, Any]]: ...

    @property
    def hub_url(self) -> str: ...


class HubPeers:
    """For `serve --fleet` on a node joined to a hub: the other online nodes the hub lists in
    its heartbeat answers (no user login needed), at the address the hub recorded, or at their
    LAN address when the heartbeat names their node key and the node there proves it."""

    def __init__(self, beats: PeerRecords, lan: MdnsNodes | None = None) -> None:
        self.beats = beats
        self.lan = lan

    def addresses(self) -> Iterable[NodeAddress]:
        lan = self.lan.discovered() if self.lan else ()
        found, _ = hub_addresses({"data": self.beats.peers}, lan, self.beats.hub_url)
        return found
