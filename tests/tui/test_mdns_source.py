"""MdnsSource with real mDNS on loopback: an advertised node's API appears as an online row and
leaves with its goodbye; a URL given by hand stays."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from edgebox.fleet.identity import load_identity
from edgebox.fleet.interfaces import LanInterface
from edgebox.fleet.mdns import Advertiser
from edgebox.tui.mdns_source import MdnsSource
from edgebox.tui.snapshot import FleetSnapshot
from tests.conftest import NodeProcess, free_port

LOOPBACK = [LanInterface("lo", "127.0.0.1", "255.0.0.0")]


async def poll_until(source: MdnsSource, want: set[str], timeout: float = 15) -> FleetSnapshot:
    deadline = time.monotonic() + timeout
    while True:
        snap = await source.poll()
        urls = {n.url for n in snap.nodes}
        if want <= urls and (want or not urls - source.known):
            return snap
        if time.monotonic() > deadline:
            raise AssertionError(f"wanted {want}, saw {urls}")
        await asyncio.sleep(0.2)


def test_an_advertised_node_is_polled_and_dropped_on_goodbye(
    node: NodeProcess, tmp_path: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    port = int(node.url.rsplit(":", 1)[1])
    identity = load_identity(tmp_path, sshd_host_key=Path("/nonexistent"))

    async def scenario() -> None:
        source = MdnsSource([dead], interfaces=LOOPBACK)
        advertiser = Advertiser(identity, accelerator="cpu", models=["m"], interfaces=LOOPBACK)
        try:
            await advertiser.start(port, api_on_lan=True)
            snap = await poll_until(source, {node.url, dead})
            rows = {n.url: n for n in snap.nodes}
            assert rows[node.url].status == "online" and rows[node.url].models
            assert rows[dead].status == "unreachable"
            await advertiser.stop()
            snap = await poll_until(source, set())
            assert [n.url for n in snap.nodes] == [dead]  # given by hand: kept
        finally:
            await advertiser.stop()
            await source.aclose()

    asyncio.run(scenario())
