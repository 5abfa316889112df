"""The laptop's node list: login lines, the hub answer → fleet_nodes.json, and its store."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgebox.fleet import logins
from edgebox.fleet.advert import DiscoveredNode
from edgebox.fleet.directory import SyncError, directory_document
from edgebox.fleet.hub.store import HubStore
from edgebox.fleet.identity import ssh_fingerprint
from edgebox.provisioning.ssh_config import parse_directory

FP = "sha256:" + "ab" * 32
KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOr4mS0d5kBqF3o5wMOKUIdpGGd7rqVWqRV8eEfGk1xR a"
KEY_B = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB5rQ2cX0Kp7Wc9Zb3Tq0S4m0b0xVq9i2n8H6m2yq3Lb b"
RELAY = {
    "host": "10.0.0.1",
    "port": 2222,
    "tunnel_user": "edgebox-tunnel",
    "jump_user": "edgebox-jump",
    "host_key": KEY_B,
}


def _node(name: str, **kw: object) -> dict:
    return {
        "id": f"node_{name}",
        "name": name,
        "host_key": KEY_A,
        "tunnel_port": 20000,
        "status": "online",
    } | kw


def test_login_line_round_trips_and_never_shows_its_token() -> None:
    line = logins.encode(["https://10.0.0.1:8443"], FP, "ebu_secret")
    parsed = logins.parse(line)
    assert parsed == logins.Login(("https://10.0.0.1:8443",), FP, "ebu_secret")
    assert "ebu_secret" not in repr(parsed)
    for bad, why in (
        (line.split(".")[0] + ".", "truncated"),
        ("ebx1_abc.def", "ebu1_"),
        ("ebu1_!!!.x", "damaged"),
    ):
        with pytest.raises(logins.LoginError, match=why) as caught:
            logins.parse(bad)
        assert "ebu_secret" not in str(caught.value)


def test_hub_answer_becomes_a_directory_the_ssh_side_accepts() -> None:
    answer = {
        "data": [
            _node("a"),
            _node("gone", status="revoked", tunnel_port=20001),
            _node("nokey", host_key=None, tunnel_port=20002),
        ],
        "relay": RELAY,
    }
    seen = DiscoveredNode(
        "uuid",
        "a",
        ("192.168.1.7",),
        8080,
        ssh_fingerprint(KEY_A),
        "cpu",
        "",
        1,
        "a._edgebox._tcp.local.",
    )
    liar = DiscoveredNode(
        "uuid2",
        "a",
        ("192.168.1.9",),
        8080,
        ssh_fingerprint(KEY_B),
        "cpu",
        "",
        1,
        "x._edgebox._tcp.local.",
    )
    doc = directory_document(answer, [seen, liar])
    hub, nodes = parse_directory(doc)
    assert (hub.host, hub.port, hub.user) == ("10.0.0.1", 2222, "edgebox-jump")
    assert [(n.name, n.tunnel_port, n.lan_addresses) for n in nodes] == [
        ("a", 20000, ("192.168.1.7",))  # only the mDNS record with the pinned key's fingerprint
    ]
    # Without a fresh mDNS answer the previous hints are kept.
    again = directory_document(answer, [], previous=doc)
    assert again["nodes"][0]["lan_addresses"] == ["192.168.1.7"]


def test_a_hub_without_a_relay_is_a_clear_error() -> None:
    with pytest.raises(SyncError, match="--relay"):
        directory_document({"data": [], "relay": RELAY | {"host_key": None}})


def test_users_are_stored_with_hashed_tokens(tmp_path: Path) -> None:
    store = HubStore(tmp_path / "hub.sqlite3")
    token = store.add_user("ana", KEY_A, now=1.0)
    assert store.user_for_token(token) == "ana"
    assert store.user_for_token(token + "x") is None
    assert token not in (tmp_path / "hub.sqlite3").read_bytes().decode(errors="replace")
    assert [u["name"] for u in store.users()] == ["ana"]
    assert store.remove_user("ana", now=2.0) and not store.remove_user("ana", now=3.0)
    assert store.user_for_token(token) is None
    assert store.schema_version() >= 2  # the users table came with version 2
    store.close()
