"""End to end: a real hub, two real node processes joined to it and heartbeating, and the fleet
monitor over the hub. Both nodes show live figures; a killed node turns offline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from textual.pilot import Pilot

from edgebox.fleet.hub.client import pinned_context
from edgebox.fleet.join import join
from edgebox.tui.app import FleetApp
from edgebox.tui.snapshot import FleetSnapshot
from edgebox.tui.source import HubSource
from tests.conftest import NodeProcess, free_port, start_node
from tests.fleet.test_hub import PROFILE, Hub
from tests.tui.test_app import drive, table

BEAT_S = 0.5  # the hub's heartbeat interval; offline after 3 missed beats


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    h = Hub(tmp_path / "hub", free_port(), tmp_path / "hub.log", interval=BEAT_S)
    h.start()
    yield h
    h.stop()


def source(hub: Hub) -> HubSource:
    key = (hub.data / "admin.key").read_text().strip()
    return HubSource(hub.info["urls"][0], key, verify=pinned_context(hub.info["fingerprint"]))


def poll(hub: Hub) -> FleetSnapshot:
    async def once() -> FleetSnapshot:
        s = source(hub)
        try:
            return await s.poll()
        finally:
            await s.aclose()

    return asyncio.run(once())


def wait_for(hub: Hub, done: Callable[[FleetSnapshot], bool], timeout: float = 30) -> FleetSnapshot:
    deadline = time.monotonic() + timeout
    while True:
        snapshot = poll(hub)
        if done(snapshot):
            return snapshot
        assert time.monotonic() < deadline, snapshot.model_dump_json(indent=1)
        time.sleep(0.2)


def test_two_live_nodes_then_a_killed_one_turns_offline(hub: Hub, tmp_path: Path) -> None:
    nodes: list[NodeProcess] = []
    ids: list[str] = []
    try:
        for i in range(2):
            home = tmp_path / f"node{i}"
            member = join(hub.token(name=f"box-{i}")["token"], home=home, profile=PROFILE)
            ids.append(member["node_id"])
            args = ["--model", "smollm2-135m", "--parallel", "1", "--ctx", "512", "--no-mdns"]
            nodes.append(start_node(home, *args, "--no-tunnel", env={"EDGEBOX_HOME": str(home)}))
        body = {"model": "smollm2-135m", "prompt": "Hello", "max_tokens": 4}
        assert httpx.post(nodes[0].base_url + "/completions", json=body, timeout=60).is_success

        def both_live(s: FleetSnapshot) -> bool:
            by_id = {n.id: n for n in s.nodes}
            return all(
                i in by_id and by_id[i].status == "online" and by_id[i].cpu_pct is not None
                for i in ids
            )

        wait_for(hub, both_live)

        async def shows_both_live(app: FleetApp, pilot: Pilot[None]) -> None:
            for node_id, name in zip(ids, ("box-0", "box-1"), strict=True):
                row = table(app).get_row(node_id)
                assert (str(row[0]), str(row[1])) == (name, "hub")  # online, known through the hub
                assert str(row[9]).startswith("smollm2-135m")  # models from the heartbeat

        drive(source(hub), shows_both_live)

        nodes[1].proc.kill()  # no goodbye: the hub must notice the missing beats
        nodes[1].proc.wait()
        snapshot = wait_for(hub, lambda s: {n.id: n.status for n in s.nodes}[ids[1]] == "offline")
        assert {n.id: n.status for n in snapshot.nodes}[ids[0]] == "online"

        async def shows_one_offline(app: FleetApp, pilot: Pilot[None]) -> None:
            assert str(table(app).get_row(ids[0])[1]) == "hub"  # still online
            assert str(table(app).get_row(ids[1])[1]) == "offline"  # still listed, marked

        drive(source(hub), shows_one_offline)
    finally:
        for node in nodes:
            node.stop()
