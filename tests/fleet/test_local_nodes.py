"""The box sees its own nodes: a real `edgebox serve --port P` on 127.0.0.1 (advertised on mDNS
with no API port, as a loopback API must be) is found by `edgebox nodes` and `edgebox top` on
the same box through its runtime record, which goes away when the node stops."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from edgebox.fleet.identity import load_identity
from edgebox.fleet.local_nodes import LocalNode, local_nodes, run_dir
from tests.conftest import local_cli, start_node


def test_nodes_and_top_on_the_same_box_find_a_node_on_any_port(tmp_path: Path) -> None:
    home = tmp_path / "home"
    identity = load_identity(home, sshd_host_key=Path("/nonexistent"), name="desk")
    env = {"EDGEBOX_HOME": str(home), "EDGEBOX_MDNS_INTERFACES": "lo", "EDGEBOX_SSHD_HOST_KEY": ""}
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
    try:
        assert not node.url.endswith(":8080")
        listed = local_cli("nodes", "--json", "--wait", "2", home=home)
        assert listed.returncode == 0, listed.stderr
        (row,) = [n for n in json.loads(listed.stdout) if n["id"] == identity.node_id]
        assert row["local_url"] == node.url and "local" in row["sources"], row
        assert row["name"] == "desk"
        table = local_cli("nodes", "--wait", "0", home=home)
        assert node.url.rsplit(":", 1)[1] in table.stdout, table.stdout

        top = local_cli("top", "--once", "--json", "--interval", "0.2", home=home)
        assert top.returncode == 0, top.stderr
        rows = json.loads(top.stdout)["nodes"]
        assert [(n["url"], n["status"], n["name"]) for n in rows] == [
            (node.url, "online", "desk")
        ], rows  # and no "http://127.0.0.1:8080 unreachable" guess beside it
    finally:
        assert node.stop() == 0, node.log.read_text()
    assert local_nodes(home) == []
    assert list(run_dir(home).glob("node-*.json")) == []  # removed at exit


def test_a_record_left_by_a_killed_node_is_ignored_and_removed(tmp_path: Path) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    record = LocalNode(int(gone.stdout), "http://127.0.0.1:9", "127.0.0.1", 9, "x", "x", 1.0)
    path = run_dir(tmp_path) / f"node-{record.pid}.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record.__dict__))
    mine = LocalNode(os.getpid(), "http://127.0.0.1:8", "127.0.0.1", 8, "y", "y", 1.0)
    (run_dir(tmp_path) / f"node-{mine.pid}.json").write_text(json.dumps(mine.__dict__))
    assert local_nodes(tmp_path) == []  # a live pid with another start time: a reused pid
    assert not path.exists()


def test_sigterm_stops_the_node_as_ctrl_c_does(tmp_path: Path) -> None:
    """systemd stops the service with SIGTERM: the node must withdraw its record and exit 0,
    not die by the signal once uvicorn has finished its responses."""
    home = tmp_path / "home"
    env = {"EDGEBOX_HOME": str(home), "EDGEBOX_SSHD_HOST_KEY": ""}
    node = start_node(
        tmp_path,
        "--model",
        "smollm2-135m",
        "--parallel",
        "1",
        "--ctx",
        "512",
        "--threads",
        "1",
        "--no-tunnel",
        "--no-mdns",
        env=env,
    )
    assert len(local_nodes(home)) == 1
    node.proc.terminate()
    assert node.proc.wait(timeout=30) == 0, node.log.read_text()
    assert "stopped." in node.log.read_text()
    assert list(run_dir(home).glob("node-*.json")) == []
