"""HubSource against a real hub process on loopback (pinned TLS, admin key) with a joined node."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgebox.fleet.heartbeat import Heartbeat
from edgebox.fleet.hub.client import HubClient, pinned_context
from edgebox.fleet.join import join
from edgebox.tui.snapshot import FleetSnapshot, NodeSnapshot
from edgebox.tui.source import HubSource
from tests.conftest import free_port
from tests.fleet.test_hub import PROFILE, Hub


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    h = Hub(tmp_path / "hub", free_port(), tmp_path / "hub.log", interval=30)  # stays online
    h.start()
    yield h
    h.stop()


def poll(hub: Hub, fingerprint: str) -> FleetSnapshot:
    key = (hub.data / "admin.key").read_text().strip()

    async def once() -> FleetSnapshot:
        source = HubSource(hub.info["urls"][0], key, verify=pinned_context(fingerprint))
        try:
            return await source.poll()
        finally:
            await source.aclose()

    return asyncio.run(once())


def test_hub_source_lists_a_joined_node_with_its_heartbeat(hub: Hub, tmp_path: Path) -> None:
    member = join(hub.token()["token"], home=tmp_path / "n", profile=PROFILE)
    beats = Heartbeat(member, models=lambda: ["smollm2-135m"])
    with HubClient(member["hub_urls"], member["hub_fingerprint"]) as client:
        assert beats.beat(client)["status"] == "online"

    (node,) = poll(hub, hub.info["fingerprint"]).nodes
    assert (node.id, node.status, node.via) == (member["node_id"], "online", "hub")
    assert node.hw_class == "cpu" and [m.name for m in node.models] == ["smollm2-135m"]
    assert node.memory_total and node.memory_total > 0  # from the heartbeat's telemetry
    assert node.cpu_pct is not None and node.last_seen is not None


def test_a_wrong_fingerprint_is_an_unreachable_hub_row(hub: Hub) -> None:
    (row,) = poll(hub, "sha256:" + "0" * 64).nodes
    assert row.status == "unreachable" and row.error and row.error.startswith("hub:")
    key = (hub.data / "admin.key").read_text().strip()
    assert key not in row.model_dump_json()


def test_a_node_on_the_hubs_own_box_is_shown_at_the_hubs_host() -> None:
    source = HubSource("https://hub.example.net:8443")
    here = NodeSnapshot(name="n", id="n", url="http://127.0.0.1:8080", status="online", via="hub")
    away = here.model_copy(update={"url": "http://10.1.2.3:8080"})
    assert source._reachable(here).url == "http://hub.example.net:8080"
    assert source._reachable(away).url == "http://10.1.2.3:8080"
    asyncio.run(source.aclose())
