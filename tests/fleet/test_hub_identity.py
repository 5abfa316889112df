"""Identity by proof of possession, against a real hub process on loopback (issue 15, finding 3).

A join token creates a new node and never replaces one; a node re-registers or rotates its key
only with a statement signed by its current key, which the hub checks against its record.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgebox.fleet import proof, tokens
from edgebox.fleet.heartbeat import Heartbeat
from edgebox.fleet.hub.client import HubClient, HubError
from edgebox.fleet.join import join, rejoin
from tests.conftest import free_port
from tests.fleet.test_hub import PROFILE, Hub

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKo7dWxjMfJOxR5nkNjd0Bt0bRtDs6mVDp4fr0HHsRkG box"


@pytest.fixture
def relay_hub(tmp_path: Path) -> Iterator[Hub]:
    """A hub keeping a relay authorized_keys file in step (no sshd needed)."""
    keys = tmp_path / "authorized_nodes"
    h = Hub(
        tmp_path / "hub",
        free_port(),
        tmp_path / "hub.log",
        interval=30,
        extra=("--relay-node-keys", str(keys)),
    )
    h.start()
    yield h
    h.stop()


def _node_key(home: Path) -> Ed25519PrivateKey:
    key = serialization.load_ssh_private_key((home / "ssh" / "id_ed25519").read_bytes(), None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


def _anon(hub: Hub) -> HubClient:
    return HubClient(hub.info["urls"], hub.info["fingerprint"])


def test_a_token_and_a_public_key_cannot_take_over_a_live_node(
    relay_hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = relay_hub
    host_file = tmp_path / "host.pub"
    host_file.write_text(HOST_KEY + "\n")
    monkeypatch.setenv("EDGEBOX_SSHD_HOST_KEY", str(host_file))
    victim = join(hub.token()["token"], home=tmp_path / "victim", profile=PROFILE)
    public = (tmp_path / "victim" / "ssh" / "id_ed25519.pub").read_text().strip()

    # The attacker holds a fresh token and the victim's public keys, not its private key.
    stolen = tokens.parse(hub.token()["token"])
    body = {
        "token_id": stolen.token_id,
        "secret": stolen.secret,
        "ssh_public_key": public,
        "host_key": HOST_KEY,
        "profile": PROFILE,
    }
    with _anon(hub) as anon:
        with pytest.raises(HubError) as caught:
            anon.request("POST", "/v1/hub/join", json=body)
        assert (caught.value.status, caught.value.code) == (409, "key_registered")
        assert "edgebox node rejoin" in caught.value.message
        other = "ssh-ed25519 " + public.split()[1][:-8] + "AAAAAAAA"  # another node key
        with pytest.raises(HubError) as caught:
            anon.request("POST", "/v1/hub/join", json=body | {"ssh_public_key": other})
        assert (caught.value.status, caught.value.code) == (409, "host_key_registered")
        # Nor can the attacker sign a re-registration with its own key for the victim's.
        forged = proof.signed_request(
            Ed25519PrivateKey.generate(), hub=hub.info["fingerprint"], host_key=None
        )
        forged["statement"]["key"] = public
        with pytest.raises(HubError) as caught:
            anon.request("POST", "/v1/hub/rejoin", json=forged)
        assert (caught.value.status, caught.value.code) == (401, "bad_signature")

    (node,) = hub.get("/v1/hub/nodes")["data"]
    assert (node["id"], node["status"]) == (victim["node_id"], "online")
    with _anon(hub) as client:  # the victim's own secret still works
        assert Heartbeat(victim).beat(client)["node_id"] == victim["node_id"]
    states = {t["id"]: t["state"] for t in hub.get("/v1/hub/tokens")["data"]}
    assert states[stolen.token_id] == "valid"


def test_a_node_re_registers_and_rotates_its_key_by_signature(
    relay_hub: Hub, tmp_path: Path
) -> None:
    hub, home = relay_hub, tmp_path / "node"
    first = join(hub.token()["token"], home=home, profile=PROFILE)
    old_public = (home / "ssh" / "id_ed25519.pub").read_text().strip()

    # Joining again with a token: the box proves it is that node instead of spending the token.
    token = hub.token()
    again = join(token["token"], home=home, profile=PROFILE)
    assert (again["node_id"], again["tunnel_port"]) == (first["node_id"], first["tunnel_port"])
    assert again["node_secret"] != first["node_secret"]
    states = {t["id"]: t["state"] for t in hub.get("/v1/hub/tokens")["data"]}
    assert states[token["id"]] == "valid"
    with _anon(hub) as client:
        with pytest.raises(HubError) as caught:  # the old secret is gone
            Heartbeat(first).beat(client)
        assert caught.value.code == "unknown_node"

    rotated = rejoin(home=home, rotate=True)
    new_public = (home / "ssh" / "id_ed25519.pub").read_text().strip()
    assert new_public.split()[1] != old_public.split()[1]
    assert (home / "ssh" / "id_ed25519").stat().st_mode & 0o777 == 0o600
    assert not (home / "ssh" / "id_ed25519.next").exists()
    node = hub.get(f"/v1/hub/nodes/{first['node_id']}")
    assert node["ssh_public_key"].split()[:2] == new_public.split()[:2]
    relay_keys = (tmp_path / "authorized_nodes").read_text()
    assert new_public.split()[1] in relay_keys and old_public.split()[1] not in relay_keys
    with _anon(hub) as client:
        assert Heartbeat(rotated).beat(client)["status"] == "online"
    kinds = [e["kind"] for e in hub.get("/v1/hub/events")["data"]]
    assert kinds.count("node_rejoin") == 1 and kinds.count("node_key_rotate") == 1


def test_signed_statements_cannot_be_replayed_or_bent(relay_hub: Hub, tmp_path: Path) -> None:
    hub, home = relay_hub, tmp_path / "node"
    join(hub.token()["token"], home=home, profile=PROFILE)
    key, fingerprint = _node_key(home), hub.info["fingerprint"]
    with _anon(hub) as anon:
        body = proof.signed_request(key, hub=fingerprint, host_key=None)
        anon.request("POST", "/v1/hub/rejoin", json=body)
        with pytest.raises(HubError) as caught:  # the same request again
            anon.request("POST", "/v1/hub/rejoin", json=body)
        assert (caught.value.status, caught.value.code) == (401, "stale_statement")

        old = proof.signed_request(key, hub=fingerprint, host_key=None, now=time.time() - 3600)
        with pytest.raises(HubError) as caught:
            anon.request("POST", "/v1/hub/rejoin", json=old)
        assert caught.value.code == "stale_statement" and "clock" in caught.value.message

        elsewhere = proof.signed_request(key, hub="sha256:" + "0" * 64, host_key=None)
        with pytest.raises(HubError) as caught:
            anon.request("POST", "/v1/hub/rejoin", json=elsewhere)
        assert (caught.value.status, caught.value.code) == (400, "wrong_statement")

        bent = proof.signed_request(key, hub=fingerprint, host_key=None)
        bent["statement"]["host_key"] = HOST_KEY  # changed after signing
        with pytest.raises(HubError) as caught:
            anon.request("POST", "/v1/hub/rejoin", json=bent)
        assert caught.value.code == "bad_signature"

        # A rotation must be signed by the new key too: nobody claims a key they do not hold.
        theirs = Ed25519PrivateKey.generate()
        claim = proof.signed_request(key, hub=fingerprint, host_key=None, new=theirs)
        claim["new_key_signature"] = proof.sign(Ed25519PrivateKey.generate(), claim["statement"])
        with pytest.raises(HubError) as caught:
            anon.request("POST", "/v1/hub/rejoin", json=claim)
        assert caught.value.code == "bad_signature"
        unsigned = copy.deepcopy(claim)
        del unsigned["new_key_signature"]
        with pytest.raises(HubError) as caught:
            anon.request("POST", "/v1/hub/rejoin", json=unsigned)
        assert caught.value.code == "bad_signature"
    fleet = json.loads((home / "fleet.json").read_text())
    assert hub.get(f"/v1/hub/nodes/{fleet['node_id']}")["status"] == "online"
    assert "node_secret" not in hub.log.read_text()
