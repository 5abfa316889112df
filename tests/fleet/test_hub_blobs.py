"""The hub's blob registry: heartbeats list the digests a node's store holds, and
`GET /v1/hub/blobs/{sha256}` names the online nodes (with their API addresses) that hold one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from edgebox.fleet import tokens
from edgebox.fleet.hub.app import create_app
from edgebox.fleet.hub.context import HubConfig
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
