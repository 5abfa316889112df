"""The hub as a real uvicorn process on loopback: tokens, join, refusals, restart, heartbeats."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgebox.fleet import tokens
from edgebox.fleet.heartbeat import Heartbeat
from edgebox.fleet.hub import identity
from edgebox.fleet.hub.client import HubClient, HubError
from edgebox.fleet.join import join
from tests.conftest import free_port

INTERVAL = 0.3  # heartbeat interval the test hubs run with
PROFILE = {"hostname": "box", "hw_class": "cpu", "memory_total": 1 << 30}


@dataclass
class Hub:
    data: Path
    port: int
    log: Path
    interval: float = INTERVAL
    extra: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None

    @property
    def info(self) -> dict[str, Any]:
        return json.loads((self.data / "hub.json").read_text())

    def admin(self) -> HubClient:
        key = (self.data / "admin.key").read_text().strip()
        return HubClient(self.info["urls"], self.info["fingerprint"], bearer=key)

    def start(self) -> None:
        (self.data / "hub.json").unlink(missing_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "edgebox",
            "hub",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data",
            str(self.data),
            "--heartbeat-interval",
            str(self.interval),
            *self.extra,
        ]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            if (self.data / "hub.json").exists():
                try:
                    with self.admin() as c:
                        c.request("GET", "/health")
                    return
                except HubError:
                    pass
            time.sleep(0.1)
        raise AssertionError("hub did not start:\n" + self.log.read_text())

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def token(self, ttl: float = 60, name: str | None = None) -> dict[str, Any]:
        with self.admin() as c:
            made: dict[str, Any] = c.request(
                "POST", "/v1/hub/tokens", json={"ttl_seconds": ttl, "name": name}
            )
        return made

    def get(self, path: str) -> Any:
        with self.admin() as c:
            return c.request("GET", path)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    h = Hub(tmp_path / "hub", free_port(), tmp_path / "hub.log")
    h.start()
    yield h
    h.stop()


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"EDGEBOX_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "edgebox", *args],
        env=env,
        text=True,
        capture_output=True,
        timeout=60,
    )


@pytest.fixture
def slow_hub(tmp_path: Path) -> Iterator[Hub]:
    """A hub with a 30 s heartbeat interval, for tests where CLI start-up outlasts 3 beats."""
    h = Hub(tmp_path / "hub", free_port(), tmp_path / "hub.log", interval=30)
    h.start()
    yield h
    h.stop()


def test_token_create_then_join_registers_the_node(slow_hub: Hub, tmp_path: Path) -> None:
    hub = slow_hub
    made = _cli("token", "create", "--ttl", "10m", "--json", "--data", str(hub.data), home=tmp_path)
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    line, secret = created["token"], created["token"].rsplit(".", 1)[1]
    assert created["join_command"] == f"pipx run edgebox join {line}"

    node_home = tmp_path / "node"
    joined = _cli(
        "join",
        line,
        "--name",
        "spark-1",
        "--no-service",
        "--no-user-keys",
        "--json",
        home=node_home,
    )
    assert joined.returncode == 0, joined.stderr
    fleet = json.loads((node_home / "fleet.json").read_text())
    assert fleet["name"] == "spark-1" and fleet["tunnel_port"] >= 20000
    assert fleet["hub_fingerprint"] == hub.info["fingerprint"]
    for private in ("fleet.json", "ssh/id_ed25519"):
        assert (node_home / private).stat().st_mode & 0o777 == 0o600
    assert (hub.data / "admin.key").stat().st_mode & 0o777 == 0o600

    listed = _cli("hub", "nodes", "--json", "--data", str(hub.data), home=tmp_path)
    assert listed.returncode == 0, listed.stderr
    (node,) = json.loads(listed.stdout)
    assert node["id"] == fleet["node_id"] and node["status"] == "online"
    assert node["ssh_public_key"] == (node_home / "ssh" / "id_ed25519.pub").read_text().strip()
    assert node["profile"]["hw_class"] in ("cpu", "nvidia-rtx", "nvidia-datacenter")
    assert "secret_hash" not in node and "node_secret" not in node

    beat = _cli("node", "heartbeat", "--count", "1", home=node_home)
    assert beat.returncode == 0, beat.stderr
    beaten = hub.get(f"/v1/hub/nodes/{node['id']}")
    assert beaten["last_heartbeat"] > node["last_heartbeat"] and beaten["telemetry"]["memory_total"]
    not_joined = _cli("node", "heartbeat", "--count", "1", home=tmp_path / "elsewhere")
    assert not_joined.returncode == 1 and "edgebox join" in not_joined.stderr

    tokens_ls = _cli("token", "ls", "--json", "--data", str(hub.data), home=tmp_path)
    (row,) = json.loads(tokens_ls.stdout)
    assert row["state"] == "used" and row["node_id"] == node["id"]
    # The secrets appear nowhere but where they belong (the token line, fleet.json).
    hub_log = hub.log.read_text()
    for text in (
        hub_log,
        joined.stdout,
        joined.stderr,
        listed.stdout,
        tokens_ls.stdout,
        beat.stdout,
        beat.stderr,
    ):
        assert secret not in text and fleet["node_secret"] not in text
    assert row["id"] in hub_log  # the log does talk about the token, by id
    db = (hub.data / "hub.sqlite3").read_bytes()
    assert secret.encode() not in db and fleet["node_secret"].encode() not in db

    # A lost box is revoked by name: its heartbeats stop working.
    gone = _cli("hub", "revoke", "spark-1", "--json", "--data", str(hub.data), home=tmp_path)
    assert gone.returncode == 0, gone.stderr
    assert json.loads(gone.stdout)["status"] == "revoked"
    refused = _cli("node", "heartbeat", "--count", "1", home=node_home)
    assert refused.returncode != 0
    unknown = _cli("hub", "revoke", "no-such-box", "--data", str(hub.data), home=tmp_path)
    assert unknown.returncode != 0 and "no-such-box" in unknown.stderr


def test_replayed_expired_and_revoked_tokens_are_refused_distinctly(
    hub: Hub, tmp_path: Path
) -> None:
    used = hub.token()["token"]
    join(used, home=tmp_path / "a", profile=PROFILE)
    expiring = hub.token(ttl=1)["token"]
    revoked = hub.token()
    with hub.admin() as c:
        c.request("DELETE", f"/v1/hub/tokens/{revoked['id']}")
    time.sleep(1.1)

    seen = {}
    for label, line in (("used", used), ("expired", expiring), ("revoked", revoked["token"])):
        with pytest.raises(HubError) as caught:
            join(line, home=tmp_path / label, profile=PROFILE)
        seen[label] = (caught.value.status, caught.value.code)
        assert line.rsplit(".", 1)[1] not in caught.value.message
    assert seen == {
        "used": (409, "token_used"),
        "expired": (410, "token_expired"),
        "revoked": (403, "token_revoked"),
    }
    # A forged secret for a real token id is refused and does not burn the token.
    fresh = tokens.parse(hub.token()["token"])
    forged = tokens.encode(tokens.JoinToken(fresh.hub_urls, fresh.fingerprint, fresh.token_id, "x"))
    with pytest.raises(HubError) as caught:
        join(forged, home=tmp_path / "forged", profile=PROFILE)
    assert (caught.value.status, caught.value.code) == (401, "invalid_token")
    join(tokens.encode(fresh), home=tmp_path / "fresh", profile=PROFILE)

    cli = _cli("join", used, "--no-service", "--no-user-keys", home=tmp_path / "cli")
    assert cli.returncode == 1 and "already used" in cli.stderr
    kinds = [e["detail"] for e in hub.get("/v1/hub/events")["data"] if e["kind"] == "join_refused"]
    assert kinds.count("token_used") == 2 and "token_expired" in kinds
    hub_log = hub.log.read_text()
    assert "token_used" in hub_log  # refusals are logged, by token id and reason only
    for line in (used, expiring, revoked["token"], tokens.encode(fresh)):
        assert line.rsplit(".", 1)[1] not in hub_log + cli.stderr


def test_wrong_fingerprint_is_refused_before_anything_is_sent(hub: Hub, tmp_path: Path) -> None:
    real = tokens.parse(hub.token()["token"])
    imposter = tokens.encode(
        tokens.JoinToken(real.hub_urls, "sha256:" + "0" * 64, real.token_id, real.secret)
    )
    result = _cli("join", imposter, "--no-service", "--no-user-keys", home=tmp_path / "node")
    assert result.returncode == 1
    assert "fingerprint" in result.stderr and "refusing" in result.stderr
    assert real.secret not in result.stderr + result.stdout
    assert not (tmp_path / "node" / "fleet.json").exists()
    # The hub never saw the request: no refusal logged, and the token still works.
    assert not any(e["kind"] == "join_refused" for e in hub.get("/v1/hub/events")["data"])
    join(tokens.encode(real), home=tmp_path / "ok", profile=PROFILE)


def test_an_imposter_hub_receives_no_bytes_at_all(hub: Hub, tmp_path: Path) -> None:
    """A server with another certificate at the token's address: the handshake is aborted by
    the client, so not one byte of HTTP (let alone the secret) reaches it."""
    other = identity.load_or_create(tmp_path / "imposter")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(other.cert_path, other.key_path)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    received: list[bytes] = []

    def serve_one() -> None:
        conn, _ = listener.accept()
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                tls.settimeout(5)
                while chunk := tls.recv(65536):
                    received.append(chunk)
        except (OSError, ssl.SSLError):
            pass

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    real = tokens.parse(hub.token()["token"])
    pointed = tokens.JoinToken(
        (f"https://127.0.0.1:{port}",), real.fingerprint, real.token_id, real.secret
    )
    with pytest.raises(HubError) as caught:
        join(tokens.encode(pointed), home=tmp_path / "node", profile=PROFILE)
    thread.join(10)
    listener.close()
    assert caught.value.code == "fingerprint_mismatch"
    assert other.fingerprint in caught.value.message and real.secret not in caught.value.message
    assert b"".join(received) == b""


def test_restart_keeps_registry_identity_and_tokens(hub: Hub, tmp_path: Path) -> None:
    member = join(hub.token(name="keeper")["token"], home=tmp_path / "n", profile=PROFILE)
    pending = hub.token()
    fingerprint = hub.info["fingerprint"]
    hub.stop()
    assert hub.proc is not None and hub.proc.returncode == 0
    hub.start()
    assert hub.info["fingerprint"] == fingerprint
    (node,) = hub.get("/v1/hub/nodes")["data"]
    assert (node["id"], node["name"]) == (member["node_id"], "keeper")
    states = {t["id"]: t["state"] for t in hub.get("/v1/hub/tokens")["data"]}
    assert states[pending["id"]] == "valid"
    join(pending["token"], home=tmp_path / "m", profile=PROFILE)  # issued before, used after
    # The node's own credentials still work against the restarted hub.
    with HubClient(member["hub_urls"], fingerprint) as client:
        assert Heartbeat(member).beat(client)["status"] == "online"


def test_heartbeats_then_three_missed_beats_mark_the_node_offline(hub: Hub, tmp_path: Path) -> None:
    member = join(hub.token()["token"], home=tmp_path / "n", profile=PROFILE)
    assert member["heartbeat_interval"] == INTERVAL
    beats = Heartbeat(member, models=lambda: ["smollm2-135m"])
    beats.run(count=3)
    assert beats.sent == 3
    # Status is read from the beat's own answer: on a loaded machine a GET could come late
    # enough for the sweeper to have acted already.
    with HubClient(member["hub_urls"], member["hub_fingerprint"]) as client:
        assert beats.beat(client)["status"] == "online"
    node = hub.get(f"/v1/hub/nodes/{member['node_id']}")
    assert node["models"] == ["smollm2-135m"]
    assert node["telemetry"]["memory_total"] > 0 and "cpu_pct" in node["telemetry"]

    deadline = time.monotonic() + 5
    while hub.get(f"/v1/hub/nodes/{member['node_id']}")["status"] != "offline":
        assert time.monotonic() < deadline, "node never went offline"
        time.sleep(0.1)
    silent = time.time() - hub.get(f"/v1/hub/nodes/{member['node_id']}")["last_heartbeat"]
    assert silent >= 3 * INTERVAL
    assert [n["status"] for n in hub.get("/v1/hub/nodes")["data"]] == ["offline"]  # listed, kept
    assert "offline" in [e["kind"] for e in hub.get("/v1/hub/events")["data"]]

    with HubClient(member["hub_urls"], member["hub_fingerprint"]) as client:
        assert beats.beat(client)["status"] == "online"  # it comes back
    assert "online" in [e["kind"] for e in hub.get("/v1/hub/events")["data"]]


def test_bad_requests_get_openai_shaped_errors_and_the_hub_keeps_serving(hub: Hub) -> None:
    info = hub.info
    with HubClient(info["urls"], info["fingerprint"]) as anon:
        with pytest.raises(HubError) as caught:
            anon.request("GET", "/v1/hub/nodes")
        assert (caught.value.status, caught.value.code) == (401, "missing_credentials")
        with pytest.raises(HubError) as caught:
            anon.request("GET", "/v1/hub/nodes", bearer="not-the-admin-key")
        assert caught.value.code == "invalid_admin_key"
        with pytest.raises(HubError) as caught:
            anon.request("POST", "/v1/hub/heartbeat", json={}, bearer="unknown")
        assert (caught.value.status, caught.value.code) == (401, "unknown_node")
        with pytest.raises(HubError) as caught:
            anon.request("POST", "/v1/hub/join", json={"token_id": "t", "secret": "s"})
        assert caught.value.status == 400 and "ssh_public_key" in caught.value.message
    with hub.admin() as admin:
        with pytest.raises(HubError) as caught:
            admin.request("POST", "/v1/hub/tokens", json={"ttl_seconds": -1})
        assert caught.value.status == 400 and "ttl_seconds" in caught.value.message
        with pytest.raises(HubError) as caught:
            admin.request("DELETE", "/v1/hub/tokens/tok_nope")
        assert caught.value.status == 404
        with pytest.raises(HubError) as caught:
            admin.request("POST", "/v1/hub/tokens", json={"name": "x" * (2 << 20)})
        assert caught.value.status == 413
        assert admin.request("GET", "/health")["status"] == "ok"


def test_relay_authorized_keys_follow_joins_rejoins_and_revocations(tmp_path: Path) -> None:
    keys_file = tmp_path / "authorized_nodes"
    relay_key = tmp_path / "relay_host_key.pub"
    relay_key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIRelayHostKey relay\n")
    hub = Hub(
        tmp_path / "hub",
        free_port(),
        tmp_path / "hub.log",
        interval=30,
        extra=(
            "--relay-node-keys",
            str(keys_file),
            "--ssh-host",
            "relay.example",
            "--ssh-host-key-file",
            str(relay_key),
        ),
    )
    hub.start()
    try:
        assert keys_file.read_text().count("\n") == 1  # the header alone, before any node

        def lines() -> list[str]:
            return [x for x in keys_file.read_text().splitlines() if not x.startswith("#")]

        a = join(hub.token()["token"], home=tmp_path / "a", profile=PROFILE)
        b = join(hub.token()["token"], home=tmp_path / "b", profile=PROFILE)
        assert b["hub_ssh"] == {
            "host": "relay.example",
            "port": 2222,
            "user": "edgebox-tunnel",
            "host_key": relay_key.read_text().strip(),
        }
        assert len(lines()) == 2 and keys_file.stat().st_mode & 0o777 == 0o644
        key_a = (tmp_path / "a" / "ssh" / "id_ed25519.pub").read_text().split()[1]
        (line_a,) = [x for x in lines() if key_a in x]
        assert f'permitlisten="127.0.0.1:{a["tunnel_port"]}"' in line_a
        assert 'command="/usr/sbin/nologin"' in line_a and line_a.startswith("restrict,")

        # The same box joining again re-registers, signed by its key: the same node and port
        # (a token used to revoke the node and make a new one: identity takeover, issue 15).
        again = join(hub.token()["token"], home=tmp_path / "a", profile=PROFILE)  # same box
        assert again["tunnel_port"] == a["tunnel_port"] and again["node_id"] == a["node_id"]
        assert len(lines()) == 2
        states = {n["id"]: n["status"] for n in hub.get("/v1/hub/nodes")["data"]}
        assert states[a["node_id"]] == "online" and len(states) == 2

        with hub.admin() as c:
            c.request("DELETE", f"/v1/hub/nodes/{b['node_id']}")
        assert len(lines()) == 1 and key_a in lines()[0]
    finally:
        hub.stop()


def test_the_recorded_api_address_is_the_peer_the_beat_came_from_never_a_node_claim() -> None:
    from edgebox.fleet.hub.app import NodeApi, observed_api_url

    lan = NodeApi(port=8080)
    assert observed_api_url("10.0.0.7", lan) == "http://10.0.0.7:8080"
    assert observed_api_url("::ffff:10.0.0.7", lan) == "http://10.0.0.7:8080"
    assert observed_api_url("fd00::7", NodeApi(port=443, scheme="https")) == "https://[fd00::7]:443"
    assert observed_api_url("10.0.0.7", None) is None  # an older node says no port
    loopback_only = NodeApi(port=8080, loopback_only=True)
    assert observed_api_url("10.0.0.7", loopback_only) is None  # unreachable from there
    assert observed_api_url("127.0.0.1", loopback_only) == "http://127.0.0.1:8080"
    with pytest.raises(ValueError):
        NodeApi.model_validate({"port": 8080, "host": "evil.example"})  # no host field at all
