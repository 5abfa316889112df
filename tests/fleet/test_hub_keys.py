"""The hub's keys for the fleet, against a real hub process on loopback: each node's own API
key (minted at join, kept across a plain rejoin and a hub restart, replaced by a rotation),
who may read it, and users registering their laptop's SSH key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgebox.fleet.heartbeat import Heartbeat, api_endpoint
from edgebox.fleet.hub.client import HubClient, HubError
from edgebox.fleet.join import join, rejoin
from edgebox.fleet.user_keys import merged
from tests.fleet.test_hub import PROFILE, Hub, hub

__all__ = ["hub"]
USER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHxXFoA3b9G8lJ5zZr1d2oQvO3rK7yJ7Yk8vJm3xYt9a laptop"


def _keys(hub: Hub, bearer: str | None = None) -> dict[str, str]:
    info = hub.info
    if bearer is None:
        answer = hub.get("/v1/hub/node-keys")
    else:
        with HubClient(info["urls"], info["fingerprint"], bearer=bearer) as client:
            answer = client.request("GET", "/v1/hub/node-keys")
    return {n["name"]: n["api_key"] for n in answer["data"]}


def _user(hub: Hub, name: str, key: str | None = None) -> str:
    with hub.admin() as admin:
        added = admin.request("POST", "/v1/hub/users", json={"name": name, "ssh_public_key": key})
    return str(added["login"]).split(".", 1)[1]


def test_each_node_gets_its_own_key_which_only_logins_and_peers_that_ask_read(
    hub: Hub, tmp_path: Path
) -> None:
    a = join(hub.token(name="a")["token"], home=tmp_path / "a", profile=PROFILE)
    b = join(hub.token(name="b")["token"], home=tmp_path / "b", profile=PROFILE)
    assert a["api_key"].startswith("ebk_") and a["api_key"] != b["api_key"]
    assert json.loads((tmp_path / "a" / "fleet.json").read_text())["api_key"] == a["api_key"]
    assert (tmp_path / "a" / "fleet.json").stat().st_mode & 0o777 == 0o600
    token = _user(hub, "reader")
    assert _keys(hub, token) == _keys(hub) == {"a": a["api_key"], "b": b["api_key"]}
    listed = json.dumps([hub.get("/v1/hub/nodes"), hub.get(f"/v1/hub/nodes/{a['node_id']}")])
    assert a["api_key"] not in listed and b["api_key"] not in listed
    for bearer in (a["node_secret"], "ebu_not-a-user"):  # a node's secret reads no keys
        with pytest.raises(HubError) as refused:
            _keys(hub, bearer)
        assert refused.value.status == 401 and a["api_key"] not in refused.value.message

    api = api_endpoint(8080, loopback_only=False)
    with HubClient(a["hub_urls"], a["hub_fingerprint"]) as client:
        Heartbeat(b, api=api).beat(client)  # b online with an API address: a's peer
        plain = Heartbeat(a, api=api)
        plain.beat(client)
        keyed = Heartbeat(a, api=api, peer_keys=True)
        keyed.beat(client)
    assert [p["name"] for p in plain.peers] == ["b"] and "api_key" not in plain.peers[0]
    assert [(p["name"], p["api_key"]) for p in keyed.peers] == [("b", b["api_key"])]


def test_a_rotation_replaces_the_key_and_a_plain_rejoin_or_restart_keeps_it(
    hub: Hub, tmp_path: Path
) -> None:
    home = tmp_path / "n"
    first = join(hub.token(name="n")["token"], home=home, profile=PROFILE)["api_key"]
    assert rejoin(home=home)["api_key"] == first == _keys(hub)["n"]
    hub.stop()
    hub.start()  # derived from the data dir's secret: the same after a restart
    assert _keys(hub)["n"] == first
    rotated = rejoin(home=home, rotate=True)["api_key"]
    assert rotated != first and _keys(hub)["n"] == rotated
    assert json.loads((home / "fleet.json").read_text())["api_key"] == rotated


def test_a_user_registers_their_laptop_key_and_nodes_receive_it(hub: Hub, tmp_path: Path) -> None:
    token = _user(hub, "ana")
    info = hub.info
    with HubClient(info["urls"], info["fingerprint"], bearer=token) as me:
        assert me.request("GET", "/v1/hub/me") == {"name": "ana", "ssh_public_key": None}
        with pytest.raises(HubError) as bad:
            me.request(
                "PUT", "/v1/hub/me/key", json={"ssh_public_key": "ssh-rsa !!!!!!!!!!!!!!!!!!!!"}
            )
        assert bad.value.status == 400 and bad.value.code == "invalid_key"
        me.request("PUT", "/v1/hub/me/key", json={"ssh_public_key": USER_KEY})
        assert me.request("GET", "/v1/hub/me")["ssh_public_key"] == " ".join(USER_KEY.split()[:2])
    with hub.admin() as admin, pytest.raises(HubError) as not_a_user:
        admin.request("GET", "/v1/hub/me")
    assert not_a_user.value.status == 401
    member = join(hub.token()["token"], home=tmp_path / "n", profile=PROFILE)
    with HubClient(member["hub_urls"], member["hub_fingerprint"]) as client:
        answer = Heartbeat(member).beat(client)
    assert answer["users"] == [{"name": "ana", "ssh_public_key": " ".join(USER_KEY.split()[:2])}]


def test_only_marked_lines_of_an_authorized_keys_file_change() -> None:
    own = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOwn owner@box"
    text = f"{own}\nno-pty ssh-ed25519 AAAAold edgebox-user:gone\n"
    users = [
        {"name": "ana\nssh-rsa AAAAinjected x", "ssh_public_key": USER_KEY},
        {"name": "bad", "ssh_public_key": "not a key\nssh-ed25519 AAAAinjected"},
    ]
    after = merged(text, users)
    lines = after.splitlines()
    assert lines[0] == own and len(lines) == 2 and "gone" not in after
    assert lines[1].endswith("edgebox-user:ana_ssh-rsa_AAAAinjected_x")
    assert lines[1].startswith("no-agent-forwarding,no-X11-forwarding ssh-ed25519 ")
    assert "injected" not in lines[1].split()[2]


HOSTILE_KEYS = [
    USER_KEY + '\rcommand="/bin/sh" ssh-ed25519 AAAAinjected',
    USER_KEY + '\u2028command="/bin/sh"',
    USER_KEY + "\x00\nssh-ed25519 AAAAinjected",
    'command="/bin/sh" ' + USER_KEY,
    'restrict,command="x" ' + USER_KEY,
    USER_KEY.replace("laptop", 'command="/bin/sh",permitopen="*:*"'),
    "ssh-ed25519 " + "A" * 5000,
]


@pytest.mark.parametrize("key", HOSTILE_KEYS)
def test_a_user_key_line_can_carry_no_option_command_or_second_line(key: str) -> None:
    after = merged("", [{"name": "eve", "ssh_public_key": key}])
    for line in filter(None, after.splitlines()):  # refused keys add no line
        options, key_type, blob, mark = line.split(" ")  # exactly our four fields
        assert options == "no-agent-forwarding,no-X11-forwarding"
        assert key_type == "ssh-ed25519" and blob.isalnum() and mark == "edgebox-user:eve"
    assert "command" not in after and "injected" not in after


def test_the_hub_stores_only_the_type_and_blob_of_one_openssh_key(hub: Hub) -> None:
    token, info = _user(hub, "eve"), hub.info
    with HubClient(info["urls"], info["fingerprint"], bearer=token) as eve:
        for key in HOSTILE_KEYS[2:5]:  # a second line, or options before the key
            with pytest.raises(HubError) as refused:
                eve.request("PUT", "/v1/hub/me/key", json={"ssh_public_key": key})
            assert refused.value.status == 400, key
        for key in (*HOSTILE_KEYS[:2], HOSTILE_KEYS[5]):  # CR, U+2028, options in the comment
            stored = eve.request("PUT", "/v1/hub/me/key", json={"ssh_public_key": key})
            assert stored["ssh_public_key"] == " ".join(USER_KEY.split()[:2])  # comment dropped
