"""The whole remote-access path, end to end in network namespaces (tests/sshnet.py's café:
laptop, hub, node-a, node-b; the laptop has a route to the hub only):

the hub namespace runs `edgebox hub serve --relay` (which writes the relay files and supervises
its sshd), node-a runs a real sshd, `edgebox join`, and `edgebox serve` (bundled SmolLM2-135M),
which starts the tunnel from fleet.json next to its heartbeats; the laptop runs `edgebox login` (a user added with `edgebox hub user add`) and `edgebox ssh node-a`.
Then the hub process is stopped and started again on the same data dir: the registry survives,
the relay comes back with the same host key, the node's tunnel reconnects and ssh works again.

Needs root, iproute2 and OpenSSH; fails (never skips) without them. Existing no-login accounts
(daemon, nobody) stand in for edgebox-tunnel / edgebox-jump so the test creates no accounts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.sshnet import (
    JUMP_USER,
    REPO,
    TUNNEL_USER,
    Cafe,
    keygen,
    missing_prerequisites,
    node_sshd_config,
    wait_for_log,
)

HUB_PORT, RELAY_PORT = 8443, 2222


@pytest.fixture
def cafe(tmp_path: Path) -> Iterator[Cafe]:
    missing = missing_prerequisites()
    if missing:
        pytest.fail("the hub relay test needs: " + "; ".join(missing), pytrace=False)
    cafe = Cafe(tmp_path)
    try:
        cafe.build()
        yield cafe
    finally:
        cafe.close()


def _edgebox(
    cafe: Cafe,
    role: str,
    home: Path,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 30,
) -> subprocess.CompletedProcess[str]:
    return cafe.ns(role).run(
        [sys.executable, "-m", "edgebox", *args],
        timeout=timeout,
        env={"EDGEBOX_HOME": str(home), **(env or {})},
        cwd=REPO,
    )


def _start_hub(cafe: Cafe, data: Path, log: Path) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable,
        "-m",
        "edgebox",
        "hub",
        "serve",
        "--host",
        cafe.ns("hub").address,
        "--port",
        str(HUB_PORT),
        "--data",
        str(data),
        "--relay",
        "--ssh-port",
        str(RELAY_PORT),
        "--ssh-user",
        TUNNEL_USER,
        "--jump-user",
        JUMP_USER,
        "--heartbeat-interval",
        "2",
    ]
    with log.open("ab") as sink:
        proc = subprocess.Popen(
            cafe.ns("hub").argv(argv),
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "EDGEBOX_HOME": str(data.parent)},
        )
    return proc


def _wait_count(log: Path, text: str, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.read_text(errors="replace").count(text) >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"{log.name}: fewer than {count} x {text!r}:\n{log.read_text()[-3000:]}")


def test_hub_relay_join_tunnel_ssh_and_hub_restart(cafe: Cafe, tmp_path: Path) -> None:
    # sshd checks every directory above the relay's authorized_keys (StrictModes) and reads
    # them as the relay accounts: /run is root-owned 0755, pytest's tmp dirs are 0700.
    root = Path(tempfile.mkdtemp(prefix="edgebox-hub-", dir="/run"))
    root.chmod(0o755)
    data, hub_log = root / "hub", tmp_path / "hub.log"
    hub = _start_hub(cafe, data, hub_log)
    try:
        wait_for_log(hub_log, "Server listening on", timeout=20)  # the relay sshd, via the hub
        relay = data / "relay"
        assert (relay / "sshd_config").stat().st_mode & 0o777 == 0o644
        assert (relay / "ssh_host_ed25519_key").stat().st_mode & 0o777 == 0o600
        relay_key = (relay / "ssh_host_ed25519_key.pub").read_text().split()[:2]

        token = _edgebox(
            cafe, "hub", root, "token", "create", "--name", "node-a", "--json", "--data", str(data)
        )
        assert token.returncode == 0, token.stderr
        token_line = json.loads(token.stdout)["token"]

        laptop = tmp_path / "laptop"
        laptop.mkdir()
        laptop_key = keygen(laptop / "id_ed25519")
        added = _edgebox(
            cafe,
            "hub",
            root,
            "hub",
            "user",
            "add",
            "laptop",
            "--key",
            str(laptop / "id_ed25519.pub"),
            "--json",
            "--data",
            str(data),
        )
        assert added.returncode == 0, added.stderr
        login_line = json.loads(added.stdout)["login"]
        assert laptop_key.split()[1] in (relay / "authorized_users").read_text()

        # node-a: a real sshd (its own host key), then join and the tunnel from fleet.json.
        node_home = tmp_path / "node-a-home"
        host_pub = keygen(tmp_path / "node-a_host_key")
        (tmp_path / "node-a_keys").write_text(laptop_key + "\n")
        config = tmp_path / "node-a_sshd_config"
        config.write_text(
            node_sshd_config(tmp_path, tmp_path / "node-a_host_key", tmp_path / "node-a_keys")
        )
        cafe.start_sshd("node-a", config, tmp_path / "node-a_sshd.log")
        node_env = {"EDGEBOX_SSHD_HOST_KEY": str(tmp_path / "node-a_host_key.pub")}
        joined = _edgebox(
            cafe,
            "node-a",
            node_home,
            "join",
            token_line,
            "--no-service",
            "--no-user-keys",
            "--no-start",
            "--json",
            env=node_env,
        )
        assert joined.returncode == 0, joined.stderr
        member = json.loads(joined.stdout)
        assert member["hub_ssh"]["host_key"].split()[:2] == relay_key
        assert "node:" in (relay / "authorized_nodes").read_text()
        tunnel_log = tmp_path / "serve.log"
        serve = cafe.ns("node-a").popen(
            [
                "env",
                f"EDGEBOX_HOME={node_home}",
                sys.executable,
                "-m",
                "edgebox",
                "serve",
                "--no-mdns",
                "--host",
                "127.0.0.1",
                "--port",
                "18080",
            ],
            tunnel_log,
        )
        _wait_count(tunnel_log, "tunnel up", 1, timeout=15)

        # The laptop: log in (pulls the node list), then ssh through the hub.
        logged = _edgebox(cafe, "laptop", laptop, "login", login_line, "--mdns-wait", "0", "--json")
        assert logged.returncode == 0, logged.stderr
        nodes = json.loads(logged.stdout)["nodes"]
        assert [(n["name"], n["host_key"]) for n in nodes] == [("node-a", host_pub)]
        done = _edgebox(cafe, "laptop", laptop, "ssh", "node-a", "--", "echo", "ok")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "ok" and "via hub" in done.stderr
        # The user token reads the node list, and is no admin key.
        (laptop / "user.key").write_text(login_line.split(".", 1)[1])
        hub_url = f"https://{cafe.ns('hub').address}:{HUB_PORT}"
        fingerprint = json.loads((data / "hub.json").read_text())["fingerprint"]
        minted = _edgebox(
            cafe,
            "laptop",
            laptop,
            "token",
            "create",
            "--hub",
            hub_url,
            "--fingerprint",
            fingerprint,
            "--admin-key-file",
            str(laptop / "user.key"),
        )
        assert minted.returncode == 1 and "admin key is not valid" in minted.stderr

        # Restart the hub process: its relay sshd goes with it and comes back with it.
        hub.terminate()
        assert hub.wait(15) in (0, -15)  # uvicorn re-raises SIGTERM after shutdown
        assert cafe.ns("hub").pids() == [], "the relay sshd outlived the hub"
        _wait_count(tunnel_log, "tunnel to", 1, timeout=10)  # the node noticed ("... down")
        hub = _start_hub(cafe, data, hub_log)
        _wait_count(hub_log, "Server listening on", 2, timeout=20)
        assert (relay / "ssh_host_ed25519_key.pub").read_text().split()[:2] == relay_key
        _wait_count(tunnel_log, "tunnel up", 2, timeout=25)
        listed = _edgebox(cafe, "hub", root, "hub", "nodes", "--json", "--data", str(data))
        assert [n["name"] for n in json.loads(listed.stdout)] == ["node-a"]  # registry survived
        again = _edgebox(cafe, "laptop", laptop, "ssh", "node-a", "--", "echo", "ok")
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip() == "ok"
        assert "warning" not in again.stderr  # the node list was refreshed from the new hub
        serve.terminate()  # SIGTERM, as systemd stops it: the tunnel's ssh must go with it
        serve.wait(20)
        left = [p.cmdline() for p in map(psutil.Process, cafe.ns("node-a").pids())]
        assert not [c for c in left if c[:1] == ["ssh"]], left
    finally:
        hub.terminate()
        try:
            hub.wait(10)
        except subprocess.TimeoutExpired:
            hub.kill()
        shutil.rmtree(root, ignore_errors=True)


def _listening(cafe: Cafe, port: int) -> bool:
    done = cafe.ns("hub").run(["ss", "-ltnH", f"sport = :{port}"])
    return f"127.0.0.1:{port}" in done.stdout


def _wait_listening(cafe: Cafe, port: int, want: bool, timeout: float) -> float:
    started = time.monotonic()
    while _listening(cafe, port) != want:
        assert time.monotonic() - started < timeout, f"port {port} listening != {want}"
        time.sleep(0.1)
    return time.monotonic() - started


def test_rotation_and_revocation_end_live_relay_sessions(cafe: Cafe, tmp_path: Path) -> None:
    """sshd reads authorized_keys only at login: a revoked node's tunnel used to live on until
    it reconnected. Now the hub ends the session holding the node's port at once; a key
    rotation ends the old key's session and the node comes back with the new key."""
    root = Path(tempfile.mkdtemp(prefix="edgebox-hub-", dir="/run"))
    root.chmod(0o755)
    data, hub_log = root / "hub", tmp_path / "hub.log"
    hub = _start_hub(cafe, data, hub_log)
    tunnel = None
    try:
        wait_for_log(hub_log, "Server listening on", timeout=20)
        token = _edgebox(cafe, "hub", root, "token", "create", "--json", "--data", str(data))
        assert token.returncode == 0, token.stderr
        home = tmp_path / "node-a-home"
        joined = _edgebox(
            cafe,
            "node-a",
            home,
            "join",
            json.loads(token.stdout)["token"],
            "--no-user-keys",
            "--no-service",
            "--json",
            env={"EDGEBOX_SSHD_HOST_KEY": ""},
        )
        assert joined.returncode == 0, joined.stderr
        member = json.loads(joined.stdout)
        port, tunnel_log = member["tunnel_port"], tmp_path / "tunnel.log"
        tunnel = cafe.ns("node-a").popen(
            [
                "env",
                f"EDGEBOX_HOME={home}",
                f"PYTHONPATH={REPO}",
                sys.executable,
                "-m",
                "edgebox",
                "tunnel",
            ],
            tunnel_log,
        )
        _wait_count(tunnel_log, "tunnel up", 1, timeout=15)
        assert _listening(cafe, port)

        old_key = (home / "ssh" / "id_ed25519.pub").read_text().split()[1]
        rotated = _edgebox(cafe, "node-a", home, "node", "rejoin", "--rotate-key", "--json")
        assert rotated.returncode == 0, rotated.stderr
        assert old_key not in (data / "relay" / "authorized_nodes").read_text()
        _wait_count(tunnel_log, "tunnel to", 1, timeout=10)  # the old key's session ended
        _wait_count(tunnel_log, "tunnel up", 2, timeout=25)  # back, with the new key
        assert "ended" in hub_log.read_text() and _listening(cafe, port)

        revoke = (
            "import json, sys; from edgebox.fleet.hub.client import HubClient; "
            "h = json.load(open(sys.argv[1])); k = open(sys.argv[2]).read().strip(); "
            "HubClient(h['urls'], h['fingerprint'], bearer=k).request("
            "'DELETE', '/v1/hub/nodes/' + sys.argv[3])"
        )
        done = cafe.ns("hub").run(
            [
                sys.executable,
                "-c",
                revoke,
                str(data / "hub.json"),
                str(data / "admin.key"),
                member["node_id"],
            ],
            cwd=REPO,
        )
        took = _wait_listening(cafe, port, False, timeout=5)
        print(f"revoked node's tunnel port closed {took:.1f} s after the revoke returned")
        time.sleep(3)  # the node keeps retrying; the relay keeps refusing its key
        assert done.returncode == 0 and not _listening(cafe, port), done.stderr
    finally:
        if tunnel is not None:
            tunnel.terminate()
            tunnel.wait(10)
        hub.terminate()
        try:
            hub.wait(10)
        except subprocess.TimeoutExpired:
            hub.kill()
        shutil.rmtree(root, ignore_errors=True)
