"""The hub registry on a real SQLite file: atomic redemption, names, offline marking, schema."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from edgebox.fleet import tokens
from edgebox.fleet.hub.store import _MIGRATIONS, HubStore, JoinRefused, Registration


def reg(name: str | None = None, hostname: str = "box", key: str = "A") -> Registration:
    return Registration(name, f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{key} test", None,
                        {"hostname": hostname}, [])  # fmt: skip


def test_one_token_cannot_register_two_nodes_even_when_raced(tmp_path: Path) -> None:
    store = HubStore(tmp_path / "hub.sqlite3")
    token_id, secret, _ = store.create_token(ttl=60, name=None, now=0)
    outcomes: list[str] = []

    def attempt(i: int) -> None:
        try:
            store.redeem(token_id, secret, reg(hostname=f"h{i}"), now=1)
            outcomes.append("joined")
        except JoinRefused as refusal:
            outcomes.append(refusal.code)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["joined"] + ["token_used"] * 7
    assert len(store.nodes()) == 1


def test_names_ports_and_offline(tmp_path: Path) -> None:
    store = HubStore(tmp_path / "hub.sqlite3", tunnel_port_base=30000)
    nodes = []
    for i in range(3):
        token_id, secret, _ = store.create_token(ttl=60, name=None, now=0)
        nodes.append(store.redeem(token_id, secret, reg(key=str(i)), now=1))
    assert [n["name"] for n in nodes] == ["box", "box-2", "box-3"]
    assert [n["tunnel_port"] for n in nodes] == [30000, 30001, 30002]
    token_id, secret, _ = store.create_token(ttl=60, name=None, now=0)
    with pytest.raises(JoinRefused) as caught:
        store.redeem(token_id, secret, reg(name="box-2", key="new"), now=1)
    assert caught.value.code == "name_taken"
    assert store.list_tokens(now=2)[-1]["state"] == "valid"  # a refused name keeps the token

    assert store.heartbeat(nodes[0]["node_secret"], {"cpu_percent": 5}, ["m"], now=10)
    assert store.mark_offline(older_than=5, now=11) == [nodes[1]["id"], nodes[2]["id"]]
    assert [n["status"] for n in store.nodes()] == ["online", "offline", "offline"]
    assert store.revoke_node("box", now=12)["status"] == "revoked"
    assert store.heartbeat(nodes[0]["node_secret"], {}, [], now=13) is None


def test_a_box_joining_again_replaces_its_record_and_keeps_its_port(tmp_path: Path) -> None:
    store = HubStore(tmp_path / "hub.sqlite3")
    first_id, first_secret, _ = store.create_token(ttl=60, name=None, now=0)
    first = store.redeem(first_id, first_secret, reg(), now=1)
    second_id, second_secret, _ = store.create_token(ttl=60, name=None, now=0)
    second = store.redeem(second_id, second_secret, reg(), now=2)
    assert second["name"] == "box" and second["tunnel_port"] == first["tunnel_port"]
    assert store.node(first["id"])["status"] == "revoked"  # type: ignore[index]
    assert store.heartbeat(first["node_secret"], {}, [], now=3) is None
    assert "node_replaced" in [e["kind"] for e in store.events()]


def test_schema_is_versioned_and_reopens(tmp_path: Path) -> None:
    store = HubStore(tmp_path / "hub.sqlite3")
    token_id, _, _ = store.create_token(ttl=60, name="n", now=0)
    store.close()
    again = HubStore(tmp_path / "hub.sqlite3")
    assert again.schema_version() == 3  # 1: nodes, tokens, events; 2: users; 3: api_url
    assert again.list_tokens(now=1)[0]["id"] == token_id
    journal = again._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert journal == "wal"


def test_a_version_2_data_dir_gains_api_url_and_keeps_its_nodes(tmp_path: Path) -> None:
    path = tmp_path / "hub.sqlite3"
    old = sqlite3.connect(path, isolation_level=None)  # a hub data dir from before api_url
    for step, script in enumerate(_MIGRATIONS[:2], start=1):
        old.executescript(f"BEGIN; {script}; PRAGMA user_version={step}; COMMIT;")
    old.execute(
        "INSERT INTO nodes (id, name, ssh_public_key, profile, secret_hash, tunnel_port, status,"
        " joined_at) VALUES ('node_old', 'old', 'ssh-ed25519 AAAA', '{}', ?, 20000, 'online', 1)",
        (tokens.hash_secret("s3cret"),),
    )
    old.close()
    store = HubStore(path)
    assert store.schema_version() == 3
    assert store.node("old")["api_url"] is None  # type: ignore[index]
    beat = store.heartbeat("s3cret", {}, [], now=2, api_url="http://10.0.0.9:8080")
    assert beat is not None and beat["api_url"] == "http://10.0.0.9:8080"
    cleared = store.heartbeat("s3cret", {}, [], now=3)  # a beat without `api` clears it
    assert cleared is not None and cleared["api_url"] is None
