"""`edgebox top` without a hub: nodes found over mDNS on the LAN, polled directly.

`MdnsSource` runs an `edgebox.fleet.mdns.NodeBrowser` on the app's loop and feeds each
advertised API URL (`http://ADDRESS:API_PORT`; nodes whose API listens on loopback only advertise
no port and are skipped) into a `DirectSource`, next to the URLs given by hand. A node gone from
mDNS (goodbye) is dropped unless it was given by hand. A node reached twice (say as 127.0.0.1 and
at its LAN address) is shown once, by node id.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from edgebox.fleet.advert import DiscoveredNode
from edgebox.fleet.interfaces import LanInterface
from edgebox.fleet.mdns import NodeBrowser
from edgebox.tui.snapshot import FleetSnapshot
from edgebox.tui.source import DirectSource

log = logging.getLogger(__name__)


def api_url(node: DiscoveredNode) -> str | None:
    if node.api_port is None or not node.addresses:
        return None
    return f"http://{node.addresses[0]}:{node.api_port}"


class MdnsSource:
    """Known URLs plus whatever mDNS finds; the browser starts on the first poll."""

    def __init__(
        self,
        known: Iterable[str] = (),
        *,
        interfaces: Sequence[LanInterface] | None = None,
        offline_after: float | None = None,
    ) -> None:
        self.known = {u.rstrip("/") for u in known}
        self.direct = DirectSource(self.known, offline_after=offline_after)
        self.interfaces = interfaces
        self.browser: NodeBrowser | None = None
        self.error: str | None = None  # why mDNS is off (no LAN interface...), for the UI
        self._found: set[str] = set()

    async def _sync(self) -> None:
        if self.browser is None and self.error is None:
            browser = NodeBrowser(self.interfaces)
            try:
                await browser.start()
            except Exception as exc:  # no interface, no multicast: show the known nodes only
                self.error = f"mDNS off: {exc}"
                log.warning("%s", self.error)
                await browser.stop()
                return
            self.browser = browser
        if self.browser is None:
            return
        found = {u for n in self.browser.nodes.values() if (u := api_url(n))}
        for url in found - self._found:
            self.direct.add(url)
        for url in self._found - found - self.known:
            await self.direct.remove(url)
        self._found = found

    async def poll(self) -> FleetSnapshot:
        await self._sync()
        snap = await self.direct.poll()
        seen: set[str] = set()
        nodes = []
        for node in sorted(snap.nodes, key=lambda n: n.status != "online"):
            if node.id in seen:
                continue
            seen.add(node.id)
            nodes.append(node)
        return snap.model_copy(update={"nodes": tuple(nodes)})

    async def aclose(self) -> None:
        if self.browser is not None:
            await self.browser.stop()
        await self.direct.aclose()
