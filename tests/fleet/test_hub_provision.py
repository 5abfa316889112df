"""`edgebox provision` against a real OpenSSH sshd on loopback: install a wheel, join, report."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.fleet.test_hub import Hub

SSHD = "/usr/sbin/sshd"


@dataclass
class Sshd:
    port: int
    client_key: Path
    known_hosts: Path
    proc: subprocess.Popen[bytes]


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


def start_sshd(d: Path, address: str = "127.0.0.1", netns: str | None = None) -> Sshd:
    """A real OpenSSH sshd with its own host key, accepting one fresh client key."""
    if not os.path.exists(SSHD) or shutil.which("ssh-keygen") is None:
        pytest.fail("OpenSSH is required: apt-get install openssh-server openssh-client")
    d.mkdir()
    host_pub = _keygen(d / "host_key")
    client_pub = _keygen(d / "client_key")
    (d / "authorized_keys").write_text(client_pub + "\n")
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress {address}\nHostKey {d / 'host_key'}\n"
        f"PidFile {d / 'sshd.pid'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        "StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nUsePAM no\n"
    )
    known = d / "known_hosts"
    known.write_text(f"[{address}]:{port} {host_pub}\n")
    Path("/run/sshd").mkdir(exist_ok=True)
    prefix = ["ip", "netns", "exec", netns] if netns else []
    proc = subprocess.Popen(
        [*prefix, SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
        stderr=(d / "sshd.log").open("wb"),
    )
    deadline = time.monotonic() + 10
    while "Server listening" not in (d / "sshd.log").read_text():
        assert proc.poll() is None and time.monotonic() < deadline, (d / "sshd.log").read_text()
        time.sleep(0.05)
    return Sshd(port, d / "client_key", known, proc)


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    server = start_sshd(tmp_path / "sshd")
    yield server
    server.proc.terminate()
    server.proc.wait(5)


@pytest.fixture
def box_python(tmp_path: Path) -> Path:
    """A fresh venv standing in for the box's Python: no edgebox of its own; the test venv's
    dependencies are visible through a .pth line (so nothing is downloaded)."""
    venv = tmp_path / "box-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin" / "python"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    h = Hub(tmp_path / "hub", free_port(), tmp_path / "hub.log", interval=30)
    h.start()
    yield h
    h.stop()


def test_provision_installs_a_wheel_over_ssh_and_joins(
    hub: Hub, sshd: Sshd, box_python: Path, tmp_path: Path
) -> None:
    box_home = tmp_path / "box-home"
    cmd = [
        sys.executable,
        "-m",
        "edgebox",
        "provision",
        f"{os.environ.get('USER', 'root')}@127.0.0.1",
        "--port",
        str(sshd.port),
        "-i",
        str(sshd.client_key),
        "--known-hosts",
        str(sshd.known_hosts),
        "--name",
        "workstation",
        "--source",
        str(Path(__file__).resolve().parents[2]),
        "--python",
        str(box_python),
        "--pip-arg=--no-deps",
        "--pip-arg=--ignore-installed",
        "--pip-arg=--no-index",
        "--edgebox-home",
        str(box_home),
        "--no-service",
        "--json",
        "--data",
        str(hub.data),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    node = json.loads(done.stdout)
    assert node["name"] == "workstation" and node["status"] == "online"
    assert node["profile"]["hostname"] and node["profile"]["memory_total"] > 0
    # The box runs the edgebox that was installed into it, not the test's own.
    where = subprocess.run(
        [str(box_python), "-c", "import edgebox; print(edgebox.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    )
    assert where.stdout.startswith(str(box_python.parents[1]))
    fleet = json.loads((box_home / "fleet.json").read_text())
    assert fleet["node_id"] == node["id"]
    assert node["ssh_public_key"] == (box_home / "ssh" / "id_ed25519.pub").read_text().strip()
    (used,) = hub.get("/v1/hub/tokens")["data"]
    assert used["state"] == "used" and used["node_id"] == node["id"]


def test_provision_refuses_an_unknown_host_key(
    hub: Hub, sshd: Sshd, box_python: Path, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong_known_hosts"
    other = _keygen(tmp_path / "other_host_key")
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {other}\n")
    cmd = [
        sys.executable,
        "-m",
        "edgebox",
        "provision",
        "root@127.0.0.1",
        "--port",
        str(sshd.port),
        "-i",
        str(sshd.client_key),
        "--known-hosts",
        str(wrong),
        "--package",
        "edgebox",
        "--python",
        str(box_python),
        "--data",
        str(hub.data),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "cannot open SSH" in done.stderr
    assert hub.get("/v1/hub/tokens")["data"] == []  # no token was made for an unverified box


@dataclass
class Lan:
    hub_ns: str
    node_ns: str
    hub_ip: str
    node_ip: str


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def lan() -> Iterator[Lan]:
    """Two network namespaces joined by a veth pair: a hub box and a node box."""
    if shutil.which("ip") is None:
        pytest.fail("iproute2 is required: apt-get install iproute2")
    tag = f"{os.getpid() % 100000}"
    net = f"10.{200 + os.getpid() % 50}.{os.getpid() % 250}"
    lan = Lan(f"ebxhub{tag}", f"ebxnode{tag}", f"{net}.1", f"{net}.2")
    _ip("netns", "add", lan.hub_ns)
    _ip("netns", "add", lan.node_ns)
    try:
        _ip(
            "link",
            "add",
            f"ebxh{tag}",
            "netns",
            lan.hub_ns,
            "type",
            "veth",
            "peer",
            "name",
            f"ebxn{tag}",
            "netns",
            lan.node_ns,
        )
        for ns, dev, ip in (
            (lan.hub_ns, f"ebxh{tag}", lan.hub_ip),
            (lan.node_ns, f"ebxn{tag}", lan.node_ip),
        ):
            _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield lan
    finally:
        _ip("netns", "del", lan.hub_ns)
        _ip("netns", "del", lan.node_ns)


def test_provision_across_network_namespaces(lan: Lan, box_python: Path, tmp_path: Path) -> None:
    """The hub, the admin and the node on different network stacks: the node reaches the hub
    only at its LAN address, as a real box would."""
    hub_port = free_port()
    data = tmp_path / "hub"
    hub_log = (tmp_path / "hub.log").open("wb")
    hub_cmd = [
        "ip",
        "netns",
        "exec",
        lan.hub_ns,
        sys.executable,
        "-m",
        "edgebox",
        "hub",
        "serve",
        "--host",
        lan.hub_ip,
        "--port",
        str(hub_port),
        "--data",
        str(data),
        "--heartbeat-interval",
        "30",
    ]
    hub = subprocess.Popen(hub_cmd, stdout=hub_log, stderr=subprocess.STDOUT)
    server = start_sshd(tmp_path / "sshd", lan.node_ip, lan.node_ns)
    try:
        deadline = time.monotonic() + 30
        while not (data / "hub.json").exists():
            assert hub.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        assert json.loads((data / "hub.json").read_text())["urls"] == [
            f"https://{lan.hub_ip}:{hub_port}"
        ]
        box_home = tmp_path / "box-home"
        cmd = [
            "ip",
            "netns",
            "exec",
            lan.hub_ns,
            sys.executable,
            "-m",
            "edgebox",
            "provision",
            f"root@{lan.node_ip}",
            "--port",
            str(server.port),
            "-i",
            str(server.client_key),
            "--known-hosts",
            str(server.known_hosts),
            "--name",
            "spark",
            "--source",
            str(Path(__file__).resolve().parents[2]),
            "--python",
            str(box_python),
            "--pip-arg=--no-deps",
            "--pip-arg=--ignore-installed",
            "--pip-arg=--no-index",
            "--edgebox-home",
            str(box_home),
            "--no-service",
            "--json",
            "--data",
            str(data),
        ]
        for _ in range(50):  # the hub may still be binding its port
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            if "cannot reach the hub" not in done.stderr:
                break
            time.sleep(0.2)
        assert done.returncode == 0, done.stderr
        node = json.loads(done.stdout)
        assert node["name"] == "spark" and node["status"] == "online"
        fleet = json.loads((box_home / "fleet.json").read_text())
        assert fleet["hub_urls"] == [f"https://{lan.hub_ip}:{hub_port}"]
        assert fleet["hub_ssh"]["host"] == lan.hub_ip
    finally:
        hub.send_signal(signal.SIGINT)
        hub.wait(15)
        server.proc.terminate()
        server.proc.wait(5)
