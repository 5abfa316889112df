"""`edgebox top` through the real CLI: one JSON snapshot of a real node, and the node list."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgebox.commands.top import default_node_urls, known_node_urls
from tests.conftest import NodeProcess, free_port


def test_once_json_prints_the_live_node_and_an_unreachable_one(node: NodeProcess) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    cmd = [
        sys.executable,
        "-m",
        "edgebox",
        "top",
        "--once",
        "--json",
        "--interval",
        "0.2",
        "--node",
        node.url,
        "--node",
        dead,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    snap = json.loads(done.stdout)
    assert snap["totals"]["nodes"] == 2 and snap["totals"]["online"] == 1
    live, gone = snap["nodes"]
    assert live["status"] == "online" and live["url"] == node.url
    assert "smollm2-135m" in [m["name"] for m in live["models"]]  # + embeddings
    assert live["tokens_per_s"] is not None and live["tokens_per_s"] >= 0
    assert gone["status"] == "unreachable" and gone["error"]


def test_nodes_json_is_read_tolerantly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "nodes.json"
    assert known_node_urls(path) == []  # missing
    path.write_text("{not json")
    assert known_node_urls(path) == []
    path.write_text(
        json.dumps(
            {
                "nodes": [
                    {"name": "a", "api_url": "http://10.0.0.2:8080/"},
                    {"name": "b", "address": "10.0.0.3", "port": 8081},
                    {"name": "c", "address": "fe80::1", "port": 8080},
                    "http://10.0.0.4:8080",
                    {"name": "no address"},
                ]
            }
        )
    )
    assert known_node_urls(path) == [
        "http://10.0.0.2:8080/",
        "http://10.0.0.3:8081",
        "http://[fe80::1]:8080",
        "http://10.0.0.4:8080",
    ]
    monkeypatch.setenv("EDGEBOX_HOME", str(tmp_path))
    assert default_node_urls() == [
        "http://127.0.0.1:8080",
        "http://10.0.0.2:8080",
        "http://10.0.0.3:8081",
        "http://[fe80::1]:8080",
        "http://10.0.0.4:8080",
    ]
    path.write_text(json.dumps({"spark": {"url": "http://127.0.0.1:8080"}}))
    assert default_node_urls() == ["http://127.0.0.1:8080"]  # no repeats


@pytest.mark.parametrize("mdns", ["--mdns", "--no-mdns"])
def test_default_sources_read_nodes_json_with_and_without_mdns(
    node: NodeProcess, tmp_path: Path, mdns: str
) -> None:
    (tmp_path / "nodes.json").write_text(json.dumps([node.url]))
    cmd = [sys.executable, "-m", "edgebox", "top", "--once", "--json", "--interval", "0.2", mdns]
    env = {**os.environ, "EDGEBOX_HOME": str(tmp_path)}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    rows = {n["url"]: n for n in json.loads(done.stdout)["nodes"]}
    assert rows[node.url]["status"] == "online"
    assert "http://127.0.0.1:8080" in rows  # the local node's default address is always polled
