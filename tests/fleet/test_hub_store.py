"""The hub registry on a real SQLite file: atomic redemption, names, offline marking, schema."""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from edgebox.fleet import tokens
from edgebox.fleet.hub.repository import JoinRefused, Registration
from edgebox.fleet.hub.store import HubStore
from edgebox.fleet.hub.store.schema import MIGRATIONS


def reg(name: str | None = None, hostname: str = "box", key: str = "A") -> Registration:
    return Registration(
        name, f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{key} test", None, {"hostname": hostname}, []
    )


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


def test_a_token_never_replaces_a_live_node_and_keys_are_unique(tmp_path: Path) -> None:
    """Finding 3: a second join with a live node's key (or its sshd host key) used to revoke
    that node and hand its tunnel port to the newcomer."""
    store = HubStore(tmp_path / "hub.sqlite3")
    host = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKey box-host"
    first_id, first_secret, _ = store.create_token(ttl=60, name=None, now=0)
    first = store.redeem(first_id, first_secret, replace(reg(), host_key=host), now=1)
    second_id, second_secret, _ = store.create_token(ttl=60, name=None, now=0)
    with pytest.raises(JoinRefused) as caught:  # same node key, another comment
        store.redeem(
            second_id,
            second_secret,
            replace(reg(), ssh_public_key=reg().ssh_public_key + "-other"),
            now=2,
        )
    assert (caught.value.status, caught.value.code) == (409, "key_registered")
    assert first["id"] in caught.value.message
    with pytest.raises(JoinRefused) as caught:  # same sshd host key, its comment dropped
        store.redeem(second_id, second_secret, replace(reg(key="B"), host_key=host[:-9]), now=2)
    assert caught.value.code == "host_key_registered"
    assert store.node(first["id"])["status"] == "online"  # type: ignore[index]
    assert store.heartbeat(first["node_secret"], {}, [], now=3) is not None
    assert store.list_tokens(now=3)[-1]["state"] == "valid"  # a refusal keeps the token
    # The database itself refuses a second live row with the key, whatever the code does.
    with pytest.raises(sqlite3.IntegrityError):
        store._db.execute(
            "INSERT INTO nodes (id, name, ssh_public_key, key_id, profile, secret_hash,"
            " tunnel_port, status, joined_at) VALUES ('x', 'x', 'k', ?, '{}', 'h', 1, 'online', 1)",
            (" ".join(reg().ssh_public_key.split()[:2]),),
        )
    # Once revoked, the key may join again (a new node, by the admin's new token).
    store.revoke_node(first["id"], now=4)
    again = store.redeem(second_id, second_secret, reg(), now=5)
    assert again["id"] != first["id"]


def test_a_box_name_from_its_hostname_is_sanitized(tmp_path: Path) -> None:
    store = HubStore(tmp_path / "hub.sqlite3")
    token_id, secret, _ = store.create_token(ttl=60, name=None, now=0)
    node = store.redeem(token_id, secret, reg(hostname="evil\nHost *\x1b[2J"), now=1)
    assert node["name"] == "evil-Host-2J"


def test_refused_redeems_cannot_grow_the_event_log(tmp_path: Path, monkeypatch) -> None:
    """Finding 4: every bad redeem used to add an event row (94 KB -> 4.3 MB for 1,000)."""
    from edgebox.fleet.hub.store import events as event_log

    store = HubStore(tmp_path / "hub.sqlite3")
    for i in range(2000):
        with pytest.raises(JoinRefused):
            store.redeem(f"tok_{i:06x}", "wrong", reg(), now=100 + i * 0.01)
    refused = [e for e in store.events() if e["kind"] == "join_refused"]
    assert len(refused) == 1 and refused[0]["count"] == 2000  # one row per minute, counted
    assert refused[0]["token_id"] == "tok_0007cf"  # the latest try's id
    with pytest.raises(JoinRefused):  # a new minute: a new row
        store.redeem("tok_late", "wrong", reg(), now=1000)
    assert len([e for e in store.events() if e["kind"] == "join_refused"]) == 2
    # Every other event is kept up to the cap, newest first.
    monkeypatch.setattr(event_log, "MAX_EVENTS", 150)
    for _ in range(400):
        store.create_token(ttl=60, name=None, now=2000)
    count = store._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    assert 150 <= count < 150 + event_log.TRIM_EVERY
    assert store.events(limit=1)[0]["kind"] == "token_create"


def test_schema_is_versioned_and_reopens(tmp_path: Path) -> None:
    store = HubStore(tmp_path / "hub.sqlite3")
    token_id, _, _ = store.create_token(ttl=60, name="n", now=0)
    store.close()
    again = HubStore(tmp_path / "hub.sqlite3")
    # 1: base; 2: users; 3: api_url; 4: unique keys; 5: ssh_user, api_key_gen; 6: node_blobs
    assert again.schema_version() == 6
    assert again.list_tokens(now=1)[0]["id"] == token_id
    journal = again._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert journal == "wal"


def test_a_version_2_data_dir_gains_api_url_and_keeps_its_nodes(tmp_path: Path) -> None:
    path = tmp_path / "hub.sqlite3"
    old = sqlite3.connect(path, isolation_level=None)  # a hub data dir from before api_url
    for step, script in enumerate(MIGRATIONS[:2], start=1):
        old.executescript(f"BEGIN; {script}; PRAGMA user_version={step}; COMMIT;")
    old.execute(
        "INSERT INTO nodes (id, name, ssh_public_key, profile, secret_hash, tunnel_port, status,"
        " joined_at) VALUES ('node_old', 'old', 'ssh-ed25519 AAAA', '{}', ?, 20000, 'online', 1)",
        (tokens.hash_secret("s3cret"),),
    )
    old.close()
    store = HubStore(path)
    assert store.schema_version() == len(MIGRATIONS)
    assert store.node("old")["api_url"] is None  # type: ignore[index]
    beat = store.heartbeat("s3cret", {}, [], now=2, api_url="http://10.0.0.9:8080")
    assert beat is not None and beat["api_url"] == "http://10.0.0.9:8080"
    cleared = store.heartbeat("s3cret", {}, [], now=3)  # a beat without `api` clears it
    assert cleared is not None and cleared["api_url"] is None


def test_a_version_3_registry_with_duplicate_keys_keeps_the_newest(tmp_path: Path) -> None:
    """Old hubs never compared host keys: the upgrade revokes the older of two live holders."""
    path = tmp_path / "hub.sqlite3"
    old = sqlite3.connect(path, isolation_level=None)
    for step, script in enumerate(MIGRATIONS[:3], start=1):
        old.executescript(f"BEGIN; {script}; PRAGMA user_version={step}; COMMIT;")
    for i, (node_id, key) in enumerate((("n_old", "AAAA1 a"), ("n_new", "AAAA2 b"))):
        old.execute(
            "INSERT INTO nodes (id, name, ssh_public_key, host_key, profile, secret_hash,"
            " tunnel_port, status, joined_at) VALUES (?, ?, ?, 'ssh-ed25519 HOST x', '{}', ?,"
            " ?, 'online', ?)",
            (node_id, node_id, f"ssh-ed25519 {key}", f"h{i}", 20000 + i, i),
        )
    old.close()
    store = HubStore(path)
    assert store.schema_version() == len(MIGRATIONS)
    assert store.node("n_old")["status"] == "revoked"  # type: ignore[index]
    assert store.node("n_new")["status"] == "online"  # type: ignore[index]
    assert "key_id" not in store.node("n_new")  # type: ignore[operator]
