"""`edgebox ssh` end to end: real OpenSSH servers in network namespaces (laptop, hub, node-a,
node-b), the hub running the relay sshd edgebox renders, node-a running the tunnel supervisor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgebox.fleet.tunnel import Backoff, TunnelSupervisor
from tests.sshnet import (
    JUMP_USER,
    PORTS,
    RELAY_PORT,
    REPO,
    TUNNEL_USER,
    Fleet,
    cafe_fleet,
    missing_prerequisites,
    wait_for_log,
)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    missing = missing_prerequisites()
    if missing:
        pytest.fail("the SSH namespace tests need: " + "; ".join(missing))
    with cafe_fleet(tmp_path_factory.mktemp("cafe")) as fleet:
        yield fleet


@pytest.fixture(scope="module")
def tunnel_a(fleet: Fleet) -> Iterator[TunnelSupervisor]:
    backoff = Backoff(initial=0.2, maximum=1.0, stable_after=30)
    supervisor = TunnelSupervisor(
        fleet.tunnel_spec("node-a"), backoff, ssh=fleet.cafe.ns("node-a").argv(["ssh"])
    )
    supervisor.start()
    try:
        assert supervisor.wait_up(15), f"tunnel never came up: {supervisor.last_error}"
        yield supervisor
    finally:
        supervisor.stop()


def _ssh(
    fleet: Fleet, role: str, key: Path, user: str, *args: str, timeout: float = 15
) -> subprocess.CompletedProcess[str]:
    known = fleet.dir / "hub_known"
    known.write_text(f"[{fleet.cafe.ns('hub').address}]:{RELAY_PORT} {fleet.host_keys['hub']}\n")
    return fleet.cafe.ns(role).run(
        [
            "ssh",
            "-F",
            "none",
            "-i",
            str(key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={known}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-p",
            str(RELAY_PORT),
            *args[:-1],
            f"{user}@{fleet.cafe.ns('hub').address}",
            *args[-1:],
        ],
        timeout=timeout,
    )


def test_ssh_reaches_node_through_hub_from_cafe(fleet: Fleet, tunnel_a: TunnelSupervisor) -> None:
    home = fleet.home("cafe-home", fleet.directory())
    # The café really cannot reach the node directly.
    direct = fleet.cafe.ns("laptop").run(
        ["ssh-keyscan", "-T", "2", fleet.cafe.ns("node-a").address]
    )
    assert "ssh-ed25519" not in direct.stdout
    done = fleet.edgebox("laptop", home, "ssh", "node-a", "--", "echo", "ok")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    assert "via hub" in done.stderr


def test_relay_gives_no_shell_to_users_or_nodes(fleet: Fleet) -> None:
    laptop_key = fleet.laptop_home / "id_ed25519"
    for role, key, user in (
        ("laptop", laptop_key, JUMP_USER),
        ("node-b", fleet.tunnel_keys["node-b"], TUNNEL_USER),
    ):
        done = _ssh(fleet, role, key, user, "echo PWNED")
        assert "PWNED" not in done.stdout
        assert done.returncode == 1, (done.returncode, done.stderr)
        assert "not available" in done.stdout + done.stderr  # nologin answered, not a shell
        tty = _ssh(fleet, role, key, user, "-tt", "id")
        assert "uid=" not in tty.stdout and tty.returncode != 0
        assert "PTY allocation request failed" in tty.stderr


def test_node_key_cannot_listen_on_another_nodes_port(fleet: Fleet) -> None:
    key = fleet.tunnel_keys["node-b"]
    stolen = _ssh(
        fleet,
        "node-b",
        key,
        TUNNEL_USER,
        "-N",
        "-o",
        "ExitOnForwardFailure=yes",
        "-R",
        f"127.0.0.1:{PORTS['node-a']}:127.0.0.1:22",
        "",
    )
    assert stolen.returncode == 255
    assert f"remote port forwarding failed for listen port {PORTS['node-a']}" in stolen.stderr
    wait_for_log(fleet.dir / "relay.log", f"port {PORTS['node-a']}, but the request was denied")
    # Control: the same key may listen on its own port (the refusal above is the permission).
    supervisor = TunnelSupervisor(
        fleet.tunnel_spec("node-b"),
        Backoff(initial=0.2, maximum=1.0),
        ssh=fleet.cafe.ns("node-b").argv(["ssh"]),
    )
    supervisor.start()
    try:
        assert supervisor.wait_up(10), supervisor.last_error
    finally:
        supervisor.stop()


def test_user_key_opens_only_registered_node_ports(fleet: Fleet) -> None:
    laptop_key = fleet.laptop_home / "id_ed25519"
    done = _ssh(fleet, "laptop", laptop_key, JUMP_USER, "-W", f"127.0.0.1:{RELAY_PORT}", "")
    assert done.returncode == 255
    assert "administratively prohibited" in done.stderr
    # A node key may not open anything, not even a registered node's port.
    node_b = _ssh(
        fleet,
        "node-b",
        fleet.tunnel_keys["node-b"],
        TUNNEL_USER,
        "-W",
        f"127.0.0.1:{PORTS['node-a']}",
        "",
    )
    assert node_b.returncode == 255
    assert "administratively prohibited" in node_b.stderr


def test_lan_route_only_when_the_pinned_key_answers(
    fleet: Fleet, tunnel_a: TunnelSupervisor
) -> None:
    node_a, node_b = fleet.cafe.ns("node-a").address, fleet.cafe.ns("node-b").address
    # From the hub's network node-a is on the "LAN": its pinned key answers there → direct.
    home = fleet.home("lan-home", fleet.directory(lan={"node-a": [node_a]}))
    done = fleet.edgebox("hub", home, "ssh", "node-a", "--", "hostname", "-I")
    assert done.returncode == 0, done.stderr
    assert f"via lan ({node_a}:22)" in done.stderr
    # A hint pointing at another box (node-b's key answers) is skipped: through the hub instead.
    home = fleet.home("lying-hint", fleet.directory(lan={"node-a": [node_b]}))
    done = fleet.edgebox("hub", home, "ssh", "node-a", "--", "echo", "ok")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok" and "via hub" in done.stderr


def test_changed_node_host_key_is_refused(fleet: Fleet, tunnel_a: TunnelSupervisor) -> None:
    # The registry pins node-b's key for node-a: what node-a presents now "differs".
    home = fleet.home("changed", fleet.directory(keys={"node-a": fleet.host_keys["node-b"]}))
    done = fleet.edgebox("laptop", home, "ssh", "node-a", "--", "echo", "PWNED")
    assert done.returncode == 255
    assert "PWNED" not in done.stdout
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in done.stderr
    assert "host key presented for node 'node-a' differs from the key pinned" in done.stderr


def test_forward_brings_a_node_port_to_the_laptop(fleet: Fleet, tunnel_a: TunnelSupervisor) -> None:
    site = fleet.dir / "site"
    site.mkdir()
    (site / "index.html").write_text("hello from node-a")
    node = fleet.cafe.ns("node-a")
    server = node.popen(
        [sys.executable, "-m", "http.server", "-b", "127.0.0.1", "-d", str(site), "18080"],
        fleet.dir / "http.log",
    )
    home = fleet.home("forward", fleet.directory())
    forward = subprocess.Popen(
        fleet.cafe.ns("laptop").argv(
            [sys.executable, "-m", "edgebox", "forward", "node-a", "18080:28080"]
        ),
        env={**os.environ, "EDGEBOX_HOME": str(home)},
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    fetch = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:28080/', timeout=2).read().decode())"
    try:
        deadline, body = time.monotonic() + 15, ""
        while time.monotonic() < deadline and forward.poll() is None:
            body = fleet.cafe.ns("laptop").run([sys.executable, "-c", fetch]).stdout
            if body:
                break
            time.sleep(0.2)
        assert body.strip() == "hello from node-a"
    finally:
        forward.terminate()
        _, stderr = forward.communicate(timeout=10)
        server.kill()
        server.wait()
    assert "node-a:18080 on http://127.0.0.1:28080 via hub" in stderr


def test_tunnel_command_keeps_node_b_reachable(fleet: Fleet) -> None:
    hub = fleet.cafe.ns("hub")
    tunnel = subprocess.Popen(
        fleet.cafe.ns("node-b").argv(
            [
                sys.executable,
                "-m",
                "edgebox",
                "tunnel",
                "--hub",
                f"{hub.address}:{RELAY_PORT}",
                "--hub-key",
                fleet.host_keys["hub"],
                "--port",
                str(PORTS["node-b"]),
                "--identity",
                str(fleet.tunnel_keys["node-b"]),
                "--user",
                TUNNEL_USER,
            ]
        ),
        env={**os.environ, "EDGEBOX_HOME": str(fleet.dir / "node-b-home")},
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert tunnel.stderr is not None
        deadline, line = time.monotonic() + 15, ""
        while "tunnel up" not in line and time.monotonic() < deadline and tunnel.poll() is None:
            line = tunnel.stderr.readline()
        assert "tunnel up" in line, line
        done = fleet.edgebox(
            "laptop", fleet.home("to-b", fleet.directory()), "ssh", "node-b", "--", "echo", "b"
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "b"
    finally:
        tunnel.terminate()
        stdout, _ = tunnel.communicate(timeout=10)
    assert tunnel.returncode == 0
    assert json.loads(stdout)["ups"] == 1


def test_tunnel_returns_after_hub_restart_and_rebind_refusal(
    fleet: Fleet, tunnel_a: TunnelSupervisor
) -> None:
    hub = fleet.cafe.ns("hub")
    ups = tunnel_a.ups
    hub.kill_all()  # the hub loses power: relay and every session die
    # An old session still holding node-a's port, as after a drop the hub has not noticed yet.
    squatter = subprocess.Popen(
        hub.argv(
            [
                sys.executable,
                "-c",
                (
                    "import socket,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1);"
                    f"s.bind(('127.0.0.1', {PORTS['node-a']})); s.listen(); print('held', flush=True); time.sleep(60)"
                ),
            ]
        ),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert squatter.stdout is not None and squatter.stdout.readline().strip() == "held"
        fleet.start_relay("relay-restarted.log")
        deadline = time.monotonic() + 10
        while "refused the port" not in tunnel_a.last_error and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "refused the port" in tunnel_a.last_error
        assert tunnel_a.ups == ups  # not up while the port is held
    finally:
        squatter.kill()
        squatter.wait()
    deadline = time.monotonic() + 10
    while tunnel_a.ups == ups and time.monotonic() < deadline:
        time.sleep(0.1)
    assert tunnel_a.ups == ups + 1, tunnel_a.last_error
    done = fleet.edgebox(
        "laptop",
        fleet.home("after-restart", fleet.directory()),
        "ssh",
        "node-a",
        "--",
        "echo",
        "ok",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
