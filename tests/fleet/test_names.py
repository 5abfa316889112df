"""One node, one name: a box that joined its hub as `box2` is `box2` in /health, in its mDNS
advert, in `edgebox nodes`, in `edgebox top` and in the hub's list that `edgebox ssh` resolves
names from, whatever its hostname."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from edgebox.fleet.identity import load_identity
from edgebox.fleet.join import join
from tests.conftest import NodeProcess, free_port, local_cli, start_node
from tests.fleet.test_hub import PROFILE, Hub

NO_SSHD = Path("/nonexistent")


def test_a_joined_node_goes_by_its_joined_name_everywhere(tmp_path: Path) -> None:
    hub = Hub(tmp_path / "hub", free_port(), tmp_path / "hub.log", interval=0.5)
    hub.start()
    node: NodeProcess | None = None
    try:
        home = tmp_path / "vm"
        identity = load_identity(home, sshd_host_key=NO_SSHD, name="vm")  # the hostname
        member = join(hub.token(name="box2")["token"], home=home, profile=PROFILE)
        assert member["name"] == "box2"
        env = {
            "EDGEBOX_HOME": str(home),
            "EDGEBOX_MDNS_INTERFACES": "lo",
            "EDGEBOX_SSHD_HOST_KEY": "",
        }
        node = start_node(
            home,
            "--model",
            "smollm2-135m",
            "--parallel",
            "1",
            "--ctx",
            "512",
            "--threads",
            "1",
            "--no-tunnel",
            env=env,
        )
        health = httpx.get(node.url + "/health", timeout=5).json()
        assert health["node"]["name"] == "box2"

        listed = local_cli("nodes", "--json", "--wait", "2", home=tmp_path / "laptop")
        assert listed.returncode == 0, listed.stderr
        ours = [n for n in json.loads(listed.stdout) if n["id"] == identity.node_id]
        assert [n["name"] for n in ours] == ["box2"], listed.stdout  # the mDNS advert

        top = local_cli(
            "top",
            "--once",
            "--json",
            "--interval",
            "0.2",
            "--node",
            node.url,
            home=tmp_path / "laptop",
        )
        assert top.returncode == 0, top.stderr
        assert [n["name"] for n in json.loads(top.stdout)["nodes"]] == ["box2"]

        # `edgebox ssh NAME` resolves names from the hub's node list: the same name.
        (record,) = hub.get("/v1/hub/nodes")["data"]
        assert record["id"] == member["node_id"] and record["name"] == health["node"]["name"]
    finally:
        if node is not None:
            node.stop()
        hub.stop()
