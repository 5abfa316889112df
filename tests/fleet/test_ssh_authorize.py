"""Authorizing a laptop for `edgebox ssh` through the fleet, with real sshds in namespaces
(tests/sshnet.py's café: the laptop reaches only the hub).

The hub runs `edgebox hub serve --relay`; node-a runs a stock-like sshd (passwords allowed,
so a fall-through to a password prompt would show) whose authorized_keys starts empty, joins,
and keeps its tunnel up. The admin adds a user with no key; the laptop, with no key at all,
runs `edgebox login LINE`, which makes its key and registers it at the hub. Before the node
has heard of the key, `edgebox ssh node-a` fails naming the node and what to run, without a
password prompt; once the node's heartbeat has installed the key, it works.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.fleet.test_hub_relay import _edgebox, _start_hub, _wait_count, cafe
from tests.sshnet import REPO, Cafe, keygen, node_sshd_config, wait_for_log

__all__ = ["cafe"]


def _node_sshd(cafe: Cafe, tmp_path: Path, keys: Path) -> str:
    """node-a's sshd, reading `keys`; password logins on, as on a stock server."""
    host_pub = keygen(tmp_path / "node-a_host_key")
    config = node_sshd_config(tmp_path, tmp_path / "node-a_host_key", keys)
    config = config.replace("PasswordAuthentication no", "PasswordAuthentication yes")
    config = config.replace("KbdInteractiveAuthentication no", "KbdInteractiveAuthentication yes")
    (tmp_path / "node-a_sshd_config").write_text(config)
    cafe.start_sshd("node-a", tmp_path / "node-a_sshd_config", tmp_path / "node-a_sshd.log")
    return host_pub


def _wait_file_has(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and text in path.read_text()):
        assert time.monotonic() < deadline, f"{path} never got {text[:40]}..."
        time.sleep(0.2)


def test_login_authorizes_a_fresh_laptop_on_the_node_and_errors_name_the_node(
    cafe: Cafe, tmp_path: Path
) -> None:
    root = Path(tempfile.mkdtemp(prefix="edgebox-hub-", dir="/run"))
    root.chmod(0o755)
    data, hub_log = root / "hub", tmp_path / "hub.log"
    hub = _start_hub(cafe, data, hub_log)
    running: list[subprocess.Popen[bytes]] = []
    try:
        wait_for_log(hub_log, "Server listening on", timeout=20)
        token = _edgebox(cafe, "hub", root, "token", "create", "--json", "--data", str(data))
        added = _edgebox(
            cafe, "hub", root, "hub", "user", "add", "ana", "--json", "--data", str(data)
        )
        assert token.returncode == 0 and added.returncode == 0, token.stderr + added.stderr

        keys = tmp_path / "node-a_authorized_keys"
        owner = keygen(tmp_path / "owner_key")  # the account's own key, never touched
        keys.write_text(owner + "\n")
        host_pub = _node_sshd(cafe, tmp_path, keys)
        node_home = tmp_path / "node-a-home"
        node_env = {"EDGEBOX_SSHD_HOST_KEY": str(tmp_path / "node-a_host_key.pub")}
        joined = _edgebox(
            cafe,
            "node-a",
            node_home,
            "join",
            json.loads(token.stdout)["token"],
            "--name",
            "node-a",
            "--no-service",
            "--authorized-keys",
            str(keys),
            env=node_env,
        )
        assert joined.returncode == 0, joined.stderr
        env = ["env", f"EDGEBOX_HOME={node_home}", f"PYTHONPATH={REPO}", sys.executable, "-m"]
        tunnel_log = tmp_path / "tunnel.log"
        running.append(cafe.ns("node-a").popen([*env, "edgebox", "tunnel"], tunnel_log))
        _wait_count(tunnel_log, "tunnel up", 1, timeout=20)

        # A laptop with no key at all: the login makes one and registers it at the hub.
        laptop = tmp_path / "laptop"
        logged = _edgebox(
            cafe,
            "laptop",
            laptop,
            "login",
            json.loads(added.stdout)["login"],
            "--mdns-wait",
            "0",
            "--json",
        )
        assert logged.returncode == 0, logged.stderr
        laptop_pub = (laptop / "id_ed25519.pub").read_text().split()[1]
        assert laptop_pub in (data / "relay" / "authorized_users").read_text()
        assert "registered this laptop's key" in logged.stderr
        again = _edgebox(cafe, "laptop", laptop, "ssh", "--setup")  # changes nothing now
        assert again.returncode == 0 and "this laptop's key is registered for ana" in again.stdout

        # The node has not beaten since: it does not know the key yet.
        denied = _edgebox(cafe, "laptop", laptop, "ssh", "node-a", "--", "true")
        flat = " ".join(denied.stderr.split())
        assert denied.returncode == 255, denied.stderr
        assert "node 'node-a' refused this laptop's key for root." in flat, denied.stderr
        assert "edgebox ssh --setup" in flat and "'s password" not in denied.stderr
        unknown = _edgebox(cafe, "laptop", laptop, "ssh", "nope", "--", "true")
        flat = " ".join(unknown.stderr.split())
        assert unknown.returncode == 1 and "unknown node 'nope' (known: node-a)" in flat
        assert "`edgebox nodes` lists the fleet" in flat

        beats_log = tmp_path / "beats.log"
        running.append(cafe.ns("node-a").popen([*env, "edgebox", "node", "heartbeat"], beats_log))
        _wait_file_has(keys, laptop_pub, timeout=20)
        text = keys.read_text()
        assert text.startswith(owner + "\n")
        assert "edgebox-user:ana" in text and keys.stat().st_mode & 0o777 == 0o600
        done = _edgebox(cafe, "laptop", laptop, "ssh", "node-a", "--", "echo", "ok")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "ok" and "via hub" in done.stderr
        nodes = json.loads((laptop / "fleet_nodes.json").read_text())["nodes"]
        assert [(n["name"], n["user"], n["host_key"]) for n in nodes] == [
            ("node-a", "root", host_pub)
        ]

        # The user removed at the hub: the node drops the key at its next beat.
        removed = _edgebox(cafe, "hub", root, "hub", "user", "rm", "ana", "--data", str(data))
        assert removed.returncode == 0, removed.stderr
        deadline = time.monotonic() + 20
        while laptop_pub in keys.read_text():
            assert time.monotonic() < deadline, "the removed user's key stayed on the node"
            time.sleep(0.2)
        assert keys.read_text() == owner + "\n"
    finally:
        for proc in running:
            proc.terminate()
            proc.wait(10)
        hub.terminate()
        try:
            hub.wait(10)
        except subprocess.TimeoutExpired:
            hub.kill()
        shutil.rmtree(root, ignore_errors=True)
