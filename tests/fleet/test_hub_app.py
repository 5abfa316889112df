"""The hub's HTTP API in process, on a real SQLite registry, with an injected clock: tokens,
join, heartbeats and going offline without waiting out real time (test_hub.py runs the same
paths against a real `edgebox hub serve` process over TLS)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from edgebox.fleet import tokens
from edgebox.fleet.hub.app import create_app
from edgebox.fleet.hub.context import HubConfig
from edgebox.fleet.hub.store import HubStore
from tests.conftest import wait_until

ADMIN = {"authorization": "Bearer hub-admin-key-for-tests-0001"}
INTERVAL = 0.2  # heartbeat interval: the sweeper checks twice an interval, in real time


class Clock:
    """The hub's time, moved by the test instead of waited for."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[TestClient, Clock]]:
    clock = Clock()
    config = HubConfig(
        urls=["https://hub.test:8443"],
        fingerprint="sha256:" + "ab" * 32,
        admin_key=ADMIN["authorization"].removeprefix("Bearer "),
        heartbeat_interval=INTERVAL,
        clock=clock,
    )
    with TestClient(create_app(HubStore(tmp_path / "hub.sqlite3"), config)) as client:
        yield client, clock


def _token(client: TestClient, ttl: float = 600) -> tokens.JoinToken:
    made = client.post("/v1/hub/tokens", json={"ttl_seconds": ttl}, headers=ADMIN)
    assert made.status_code == 201, made.text
    return tokens.parse(made.json()["token"])


def _join(client: TestClient, token: tokens.JoinToken, key: str = "A") -> Any:
    body = {
        "token_id": token.token_id,
        "secret": token.secret,
        "ssh_public_key": f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{key} box-{key}",
        "profile": {"hostname": f"box-{key.lower()}"},
    }
    return client.post("/v1/hub/join", json=body)


def test_a_token_joins_one_node_which_beats_and_goes_offline_when_silent(
    hub: tuple[TestClient, Clock],
) -> None:
    client, clock = hub
    joined = _join(client, _token(client))
    assert joined.status_code == 201, joined.text
    member = joined.json()
    assert member["heartbeat_interval"] == INTERVAL and member["node_secret"]
    beat = {"authorization": f"Bearer {member['node_secret']}"}
    answer = client.post("/v1/hub/heartbeat", json={"models": ["m"]}, headers=beat)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "online"

    def status() -> str:
        got = client.get(f"/v1/hub/nodes/{member['node_id']}", headers=ADMIN)
        return str(got.json()["status"])

    assert status() == "online"
    clock.now += 3 * INTERVAL + 1  # three intervals without a beat, on the hub's clock
    wait_until(lambda: status() == "offline", timeout=5, what="the sweeper to mark it offline")
    assert client.post("/v1/hub/heartbeat", json={}, headers=beat).json()["status"] == "online"


def test_used_expired_and_revoked_tokens_are_refused_distinctly(
    hub: tuple[TestClient, Clock],
) -> None:
    client, clock = hub
    used = _token(client)
    assert _join(client, used, "A").status_code == 201
    expiring = _token(client, ttl=1)
    revoked = _token(client)
    gone = client.delete(f"/v1/hub/tokens/{revoked.token_id}", headers=ADMIN)
    assert gone.status_code in (200, 204), gone.text
    clock.now += 2  # past the 1 s token's expiry, without sleeping
    refusals = {}
    tries = [("used", used, "B"), ("expired", expiring, "C"), ("revoked", revoked, "D")]
    for label, token, key in tries:
        answer = _join(client, token, key)
        refusals[label] = (answer.status_code, answer.json()["error"]["code"])
    assert refusals == {
        "used": (409, "token_used"),
        "expired": (410, "token_expired"),
        "revoked": (403, "token_revoked"),
    }


def test_admin_and_node_routes_refuse_missing_or_wrong_credentials(
    hub: tuple[TestClient, Clock],
) -> None:
    client, _ = hub
    ttl = {"ttl_seconds": 60}
    missing = client.post("/v1/hub/tokens", json=ttl)
    wrong = client.post("/v1/hub/tokens", json=ttl, headers={"authorization": "Bearer not-the-key"})
    unknown = {"authorization": "Bearer no-such-node"}
    stranger = client.post("/v1/hub/heartbeat", json={}, headers=unknown)
    assert (missing.status_code, missing.json()["error"]["code"]) == (401, "missing_credentials")
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (401, "invalid_admin_key")
    assert stranger.status_code == 401
    assert "not-the-key" not in wrong.text and "hub-admin-key" not in wrong.text
