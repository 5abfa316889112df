"""The hub's blob registry: heartbeats list the digests a node's store holds, and
`GET /v1/hub/blobs/{sha256}` names the online nodes (with their API addresses) that hold one;
the registry is kept in the hub's SQLite file; heartbeat answers carry a blob grant per peer."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.testclient import TestClient

from edgebox.api.blob_grant import GrantVerifier
from edgebox.fleet import tokens
from edgebox.fleet.hub.app import create_app
from edgebox.fleet.hub.context import BLOB_TTL_S, HubConfig
from edgebox.fleet.hub.store import HubStore

ADMIN = {"authorization": "Bearer hub-admin-key-for-tests-0002"}
DIGEST = "ab" * 32


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    config = HubConfig(
        urls=["https://hub.test:8443"],
        fingerprint="sha256:" + "ab" * 32,
        admin_key=ADMIN["authorization"].removeprefix("Bearer "),
    )
    app = create_app(HubStore(tmp_path / "hub.sqlite3"), config)
    with TestClient(app, client=("10.9.0.7", 40000)) as c:
        yield c


def _member(client: TestClient, name: str) -> dict[str, str]:
    made = client.post("/v1/hub/tokens", json={"ttl_seconds": 600}, headers=ADMIN)
    token = tokens.parse(made.json()["token"])
    body = {
        "token_id": token.token_id,
        "secret": token.secret,
        "ssh_public_key": f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{name} box-{name}",
        "profile": {"hostname": f"box-{name}"},
    }
    joined = client.post("/v1/hub/join", json=body)
    assert joined.status_code == 201, joined.text
    return {"authorization": f"Bearer {joined.json()['node_secret']}"}


def test_the_hub_names_the_nodes_holding_a_blob(client: TestClient) -> None:
    a, b = _member(client, "A"), _member(client, "B")
    beat = {"api": {"port": 8080}, "blobs": [DIGEST]}
    assert client.post("/v1/hub/heartbeat", json=beat, headers=a).status_code == 200
    assert client.post("/v1/hub/heartbeat", json={"api": {"port": 8081}}, headers=b).is_success
    found = client.get(f"/v1/hub/blobs/{DIGEST}", headers=ADMIN).json()
    assert [n["api_url"] for n in found["nodes"]] == ["http://10.9.0.7:8080"]
    assert client.get(f"/v1/hub/blobs/{'cd' * 32}", headers=ADMIN).json()["nodes"] == []
    # a later beat without the digest (the model was removed) takes it out
    client.post("/v1/hub/heartbeat", json={"api": {"port": 8080}}, headers=a)
    assert client.get(f"/v1/hub/blobs/{DIGEST}", headers=ADMIN).json()["nodes"] == []


def test_blob_lists_and_lookups_are_bounded_and_checked(client: TestClient) -> None:
    a = _member(client, "C")
    bad = client.post("/v1/hub/heartbeat", json={"blobs": ["../etc"]}, headers=a)
    assert bad.status_code == 400 and "blobs" in bad.json()["error"]["param"]
    many = client.post("/v1/hub/heartbeat", json={"blobs": [DIGEST] * 1025}, headers=a)
    assert many.status_code == 400
    assert client.get("/v1/hub/blobs/XYZ", headers=ADMIN).status_code == 400
    assert client.get(f"/v1/hub/blobs/{DIGEST}").status_code == 401


def _hub(path: Path) -> TestClient:
    config = HubConfig(
        urls=["https://hub.test:8443"],
        fingerprint="sha256:" + "ab" * 32,
        admin_key=ADMIN["authorization"].removeprefix("Bearer "),
        grant_key=Ed25519PrivateKey.generate(),
    )
    return TestClient(create_app(HubStore(path), config), client=("10.9.0.7", 40000))


def test_the_registry_outlives_a_hub_restart_and_forgets_revoked_nodes(tmp_path: Path) -> None:
    db = tmp_path / "hub.sqlite3"
    with _hub(db) as first:
        a, b = _member(first, "D"), _member(first, "E")
        first.post("/v1/hub/heartbeat", json={"api": {"port": 1}, "blobs": [DIGEST]}, headers=a)
        first.post("/v1/hub/heartbeat", json={"api": {"port": 2}, "blobs": [DIGEST]}, headers=b)
        nodes = first.get("/v1/hub/nodes", headers=ADMIN).json()["data"]
    with _hub(db) as second:  # a new hub process on the same file: nobody has beaten yet
        found = second.get(f"/v1/hub/blobs/{DIGEST}", headers=ADMIN).json()["nodes"]
        assert sorted(n["api_url"] for n in found) == ["http://10.9.0.7:1", "http://10.9.0.7:2"]
        second.delete(f"/v1/hub/nodes/{nodes[1]['id']}", headers=ADMIN)
        found = second.get(f"/v1/hub/blobs/{DIGEST}", headers=ADMIN).json()["nodes"]
        assert [n["id"] for n in found] == [nodes[0]["id"]]
    assert HubStore(db).blob_map() == {nodes[0]["id"]: frozenset({DIGEST})}


def test_heartbeat_answers_carry_a_blob_grant_per_peer(tmp_path: Path) -> None:
    with _hub(tmp_path / "hub.sqlite3") as hub:
        a, b = _member(hub, "F"), _member(hub, "G")
        hub.post("/v1/hub/heartbeat", json={"api": {"port": 1}}, headers=b)
        answer = hub.post("/v1/hub/heartbeat", json={"api": {"port": 2}}, headers=a).json()
        peers = {p["name"]: p for p in answer["peers"]}
        grant = peers["box-G"]["blob_grant"]
        verifier = GrantVerifier("sha256:" + "ab" * 32, peers["box-G"]["id"], answer["hub_key"])
        assert verifier.check(grant) == "member"
        assert "api_key" not in peers["box-G"]  # the grant, not the node's inference key


def test_entries_of_nodes_silent_for_over_a_week_are_dropped_at_start_and_while_serving(
    tmp_path: Path,
) -> None:
    db, now = tmp_path / "hub.sqlite3", [1_000_000.0]
    config = HubConfig(
        urls=["https://hub.test:8443"],
        fingerprint="sha256:" + "ab" * 32,
        admin_key=ADMIN["authorization"].removeprefix("Bearer "),
        heartbeat_interval=0.1,  # the sweeper runs every 0.05 s
        clock=lambda: now[0],
    )
    other = "cd" * 32

    def hub() -> TestClient:  # its app is the rate limiter around the hub's Starlette app
        return TestClient(create_app(HubStore(db), config), client=("10.9.0.7", 40000))

    with hub() as first:
        a, b, c = _member(first, "H"), _member(first, "I"), _member(first, "J")
        for node, port in ((a, 1), (b, 2), (c, 3)):
            beat = {"api": {"port": port}, "blobs": [DIGEST, other]}
            assert first.post("/v1/hub/heartbeat", json=beat, headers=node).is_success
        by_name = {
            n["name"]: n["id"] for n in first.get("/v1/hub/nodes", headers=ADMIN).json()["data"]
        }
        ids = [by_name["box-H"], by_name["box-I"], by_name["box-J"]]
    now[0] += BLOB_TTL_S - 60  # b beats again within the week; a and c stay silent
    with hub() as second:
        second.post("/v1/hub/heartbeat", json={"api": {"port": 2}, "blobs": [DIGEST]}, headers=b)
        assert set(second.app.app.state.hub.blobs) == set(ids)  # nobody is past the week yet
        now[0] += 120  # a and c are now silent for a week and a minute
        deadline = time.monotonic() + 5
        while len(second.app.app.state.hub.blobs) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert second.app.app.state.hub.blobs == {ids[1]: frozenset({DIGEST})}  # the sweeper's work
        # c comes back: its first beat lists what it holds again
        second.post("/v1/hub/heartbeat", json={"api": {"port": 3}, "blobs": [other]}, headers=c)
        found = second.get(f"/v1/hub/blobs/{other}", headers=ADMIN).json()["nodes"]
        assert [n["id"] for n in found] == [ids[2]]
    assert HubStore(db).blob_map() == {ids[1]: frozenset({DIGEST}), ids[2]: frozenset({other})}
    now[0] += BLOB_TTL_S + 1  # a hub that starts after a week of silence from all of them
    with hub() as third:
        assert third.app.app.state.hub.blobs == {}
    assert HubStore(db).blob_map() == {}
