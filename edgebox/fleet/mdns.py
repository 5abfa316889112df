"""LAN discovery over mDNS/DNS-SD (`_edgebox._tcp.local.`) with python-zeroconf.

`Advertiser` publishes this node on explicit interfaces with explicit addresses; `NodeBrowser`
turns other nodes' advertisements into added/updated/removed `NodeEvent`s; `discover` is the
one-shot listing `edgebox nodes` uses. Both run on the caller's asyncio loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from edgebox.fleet.advert import (
    SERVICE_TYPE,
    DiscoveredNode,
    NodeEvent,
    instance_name,
    parse_advert,
    txt_properties,
)
from edgebox.fleet.identity import NodeIdentity
from edgebox.fleet.interfaces import LanInterface, lan_interfaces, nearest_first

log = logging.getLogger(__name__)
RESOLVE_TIMEOUT_MS = 3000


def _zeroconf(interfaces: Sequence[LanInterface]) -> AsyncZeroconf:
    return AsyncZeroconf(interfaces=[i.address for i in interfaces], ip_version=IPVersion.V4Only)


class Advertiser:
    """Publishes this node until `stop()`, which sends goodbyes so browsers drop it at once."""

    def __init__(
        self,
        identity: NodeIdentity,
        *,
        accelerator: str,
        models: Sequence[str],
        interfaces: Sequence[LanInterface] | None = None,
    ) -> None:
        self.identity = identity
        self.accelerator = accelerator
        self.models = list(models)
        self.interfaces = list(interfaces) if interfaces is not None else None
        self._zc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None
        self._api: tuple[int, bool, list[str]] = (0, False, [])
        # A model change during registration waits for it: an update racing the probe left
        # the old TXT registered (browsers that started later were answered the old digest).
        self._changing = asyncio.Lock()

    @property
    def service_name(self) -> str | None:
        return self._info.name if self._info else None

    async def start(self, api_port: int, *, api_on_lan: bool = True) -> None:
        """Register the service; returns once the announcements are sent.

        `api_on_lan` False (the API listens on loopback only) leaves the API port out of the TXT
        record: peers still learn the box and its SSH host key, but not an unreachable port.
        """
        interfaces = self.interfaces if self.interfaces is not None else lan_interfaces()
        self._api = (api_port, api_on_lan, [i.address for i in interfaces])
        async with self._changing:
            self._info = self._service_info()
            self._zc = _zeroconf(interfaces)
            try:
                announced = await self._zc.async_register_service(
                    self._info, allow_name_change=True
                )
                await announced
            except BaseException:
                await self.stop()
                raise
        log.info("mDNS: advertising %s on %s", self._info.name, _names(interfaces))

    async def update_models(self, models: Sequence[str]) -> None:
        """Re-announce with a new model digest (browsers see an `updated` event)."""
        async with self._changing:
            self.models = list(models)
            if self._zc is not None and self._info is not None:
                name = self._info.name  # keep a name zeroconf may have changed on a conflict
                self._info = self._service_info(name)
                await (await self._zc.async_update_service(self._info))

    def _service_info(self, name: str | None = None) -> AsyncServiceInfo:
        api_port, api_on_lan, addresses = self._api
        props = txt_properties(
            node_id=self.identity.node_id,
            name=self.identity.name,
            host_key_fingerprint=self.identity.host_key_fingerprint,
            api_port=api_port if api_on_lan else None,
            accelerator=self.accelerator,
            models=self.models,
        )
        label = instance_name(self.identity.name, self.identity.node_id)
        return AsyncServiceInfo(
            SERVICE_TYPE,
            name or f"{label}.{SERVICE_TYPE}",
            port=api_port,
            properties=props,
            server=f"edgebox-{self.identity.node_id[:12]}.local.",
            parsed_addresses=addresses,
        )

    async def stop(self) -> None:
        zc, info, self._zc = self._zc, self._info, None
        if zc is None:
            return
        if info is not None:
            with contextlib.suppress(Exception):
                await (await zc.async_unregister_service(info))
        await zc.async_close()


class NodeBrowser:
    """Watches `_edgebox._tcp.local.`; `nodes` is the current view, `events` a queue of changes.

    `on_event`, when given, is called on the loop for every event as well.
    """

    def __init__(
        self,
        interfaces: Sequence[LanInterface] | None = None,
        on_event: Callable[[NodeEvent], None] | None = None,
    ) -> None:
        self.interfaces = list(interfaces) if interfaces is not None else None
        self.on_event = on_event
        self.nodes: dict[str, DiscoveredNode] = {}  # by mDNS service name
        self.events: asyncio.Queue[NodeEvent] = asyncio.Queue()
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._browsing: list[LanInterface] = []  # the interfaces browsed (nearest_first)

    async def start(self) -> None:
        interfaces = self.interfaces if self.interfaces is not None else lan_interfaces()
        self._browsing = list(interfaces)
        self._zc = _zeroconf(interfaces)
        self._browser = AsyncServiceBrowser(
            self._zc.zeroconf, SERVICE_TYPE, handlers=[self._on_change]
        )

    async def stop(self) -> None:
        for task in self._resolving.values():
            task.cancel()
        self._resolving.clear()
        browser, zc, self._browser, self._zc = self._browser, self._zc, None, None
        if browser is not None:
            await browser.async_cancel()
        if zc is not None:
            await zc.async_close()

    async def next_event(self, timeout: float) -> NodeEvent:
        """The next event, or TimeoutError after `timeout` seconds."""
        return await asyncio.wait_for(self.events.get(), timeout)

    def _on_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        pending = self._resolving.pop(name, None)
        if pending is not None:
            pending.cancel()
        if state_change is ServiceStateChange.Removed:
            node = self.nodes.pop(name, None)
            if node is not None:
                self._emit(NodeEvent("removed", node))
            return
        self._resolving[name] = asyncio.get_running_loop().create_task(self._resolve(name))

    async def _resolve(self, name: str) -> None:
        assert self._zc is not None
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        try:
            if not await info.async_request(self._zc.zeroconf, RESOLVE_TIMEOUT_MS):
                log.debug("mDNS: %s did not resolve", name)
                return
        finally:
            if self._resolving.get(name) is asyncio.current_task():
                del self._resolving[name]
        addresses = nearest_first(info.parsed_addresses(IPVersion.V4Only), self._browsing)
        node = parse_advert(name, info.properties, addresses)
        if node is None:
            log.debug("mDNS: ignoring %s (not a protocol we speak)", name)
            return
        previous = self.nodes.get(name)
        self.nodes[name] = node
        if previous is None:
            self._emit(NodeEvent("added", node))
        elif previous != node:
            self._emit(NodeEvent("updated", node))

    def _emit(self, event: NodeEvent) -> None:
        self.events.put_nowait(event)
        if self.on_event is not None:
            self.on_event(event)


async def discover(
    wait: float, interfaces: Sequence[LanInterface] | None = None
) -> list[DiscoveredNode]:
    """Browse for `wait` seconds and return the nodes seen (this box's own included)."""
    browser = NodeBrowser(interfaces)
    await browser.start()
    try:
        await asyncio.sleep(wait)
        return sorted(browser.nodes.values(), key=lambda n: (n.name, n.node_id))
    finally:
        await browser.stop()


def _names(interfaces: Sequence[LanInterface]) -> str:
    return ", ".join(f"{i.name} ({i.address})" for i in interfaces)
