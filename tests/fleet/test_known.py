"""Nodes added by hand: the JSON store and what `edgebox nodes add` reads from /health."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from typer.testing import CliRunner

from edgebox.cli import app
from edgebox.fleet.identity import load_identity
from edgebox.fleet.known import (
    KnownNode,
    KnownNodes,
    KnownNodesError,
    known_node_from_health,
    parse_host_port,
)
from edgebox.node.app import create_app
from edgebox.node.state import NodeState
from tests.conftest import free_port


def _node(node_id: str, name: str) -> KnownNode:
    return KnownNode(node_id, name, "10.0.0.1", 8080, "SHA256:abc", added_at=1.0)


def test_add_replace_find_remove(tmp_path: Path) -> None:
    store = KnownNodes(tmp_path / "nodes.json")
    assert store.all() == []
    store.add(_node("a" * 32, "spark"))
    store.add(_node("b" * 32, "mac"))
    store.add(_node("a" * 32, "spark2"))  # same id: replaced
    assert [n.name for n in store.all()] == ["mac", "spark2"]
    assert store.find("spark2").node_id == "a" * 32
    assert store.find("bbbbbbbb").name == "mac"  # id prefix
    with pytest.raises(KnownNodesError, match="no added node"):
        store.find("bbb")  # too short a prefix
    assert store.remove("mac").node_id == "b" * 32
    assert [n.name for n in KnownNodes(tmp_path / "nodes.json").all()] == ["spark2"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_ambiguous_name_asks_for_the_id(tmp_path: Path) -> None:
    store = KnownNodes(tmp_path / "nodes.json")
    store.add(_node("a" * 32, "box"))
    store.add(_node("b" * 32, "box"))
    with pytest.raises(KnownNodesError, match="several nodes"):
        store.remove("box")


def test_corrupt_store_is_reported(tmp_path: Path) -> None:
    (tmp_path / "nodes.json").write_text("[]")
    with pytest.raises(KnownNodesError, match="unreadable"):
        KnownNodes(tmp_path / "nodes.json").all()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("spark", ("spark", 8080)),
        ("spark:9000", ("spark", 9000)),
        ("[fe80::1]", ("fe80::1", 8080)),
        ("[fe80::1]:81", ("fe80::1", 81)),
        ("fe80::1", ("fe80::1", 8080)),
    ],
)
def test_parse_host_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text) == expected


@pytest.mark.parametrize("text", ["spark:0", "spark:http", ":80", "[::1]x"])
def test_parse_host_port_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_host_port(text)


def test_health_without_identity_is_refused() -> None:
    with pytest.raises(KnownNodesError, match="without a node identity"):
        known_node_from_health("h", 1, {"status": "ok"})


@pytest.fixture
def health_server(tmp_path: Path) -> Iterator[tuple[str, dict]]:
    """The real node app (no models) on loopback, with a real identity in /health."""
    identity = load_identity(tmp_path / "served", sshd_host_key=Path("/nonexistent"))
    app_ = create_app(NodeState({}, node=identity.public()))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app_, port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    yield f"127.0.0.1:{port}", identity.public()
    server.should_exit = True
    thread.join(5)


def test_nodes_add_list_rm_through_the_cli(
    health_server: tuple[str, dict], tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("EDGEBOX_HOME", str(tmp_path / "home"))
    address, public = health_server
    runner = CliRunner()
    added = runner.invoke(app, ["nodes", "add", address, "--json"])
    assert added.exit_code == 0, added.output
    assert json.loads(added.output)["id"] == public["id"]
    listed = runner.invoke(app, ["nodes", "--json", "--wait", "0"])
    assert listed.exit_code == 0, listed.output
    (row,) = json.loads(listed.output)
    assert (row["id"], row["name"], row["sources"]) == (public["id"], public["name"], ["manual"])
    assert row["ssh_host_key_fingerprint"] == public["ssh_host_key_fingerprint"]
    assert row["addresses"] == ["127.0.0.1"]
    removed = runner.invoke(app, ["nodes", "rm", public["name"]])
    assert removed.exit_code == 0, removed.output
    assert json.loads(runner.invoke(app, ["nodes", "--json", "--wait", "0"]).output) == []


def test_nodes_add_unreachable_is_one_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("EDGEBOX_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(app, ["nodes", "add", f"127.0.0.1:{free_port()}"])
    assert result.exit_code == 1
    assert "could not read http://127.0.0.1:" in result.output
    assert "Traceback" not in result.output
