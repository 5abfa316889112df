"""Network namespaces with real OpenSSH servers in them, for the `edgebox ssh` tests.

`Cafe` builds the café layout: namespaces laptop, hub, node-a, node-b, each with a point-to-point
veth link to the hub (10.78.<n>.0/24, hub end .1) and a route to the hub's one address
10.78.0.1; the hub does not forward, so the laptop can reach ONLY the hub. Each node runs a real sshd with its own host key; the hub runs the relay
sshd from edgebox's rendered config. Names carry a run token so parallel runs never collide;
`close()` kills every process in the namespaces and deletes them (and their veths).

Needs root, iproute2 and OpenSSH; without them the fixture FAILS saying what to install.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgebox.fleet.relay import (
    NodeRecord,
    RelaySettings,
    UserRecord,
    render_node_keys,
    render_sshd_config,
    render_user_keys,
)
from edgebox.fleet.tunnel import TunnelSpec

REQUIRED = {
    "ip": "iproute2",
    "/usr/sbin/sshd": "openssh-server",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "ssh-keyscan": "openssh-client",
}


def missing_prerequisites() -> list[str]:
    """What this machine lacks for the SSH namespace tests, as install hints."""
    missing = [
        f"{tool} (apt-get install {pkg})"
        for tool, pkg in REQUIRED.items()
        if shutil.which(tool) is None and not os.access(tool, os.X_OK)
    ]
    if os.geteuid() != 0:
        missing.append("root (network namespaces need CAP_SYS_ADMIN/CAP_NET_ADMIN)")
    return missing


def _run(argv: Sequence[str]) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` failed: {done.stderr.strip()}")
    return done.stdout


def keygen(path: Path) -> str:
    """A fresh ed25519 key pair at `path`; returns the public key line."""
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)])
    return path.with_suffix(".pub").read_text().strip()


@dataclass
class Namespace:
    name: str
    address: str = ""

    def argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self, argv: Sequence[str], timeout: float = 20, env: dict[str, str] | None = None, **kw
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, **(env or {})},
            **kw,
        )

    def popen(self, argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as sink:
            return subprocess.Popen(self.argv(argv), stdout=sink, stderr=subprocess.STDOUT)

    def pids(self) -> list[int]:
        return [int(p) for p in _run(["ip", "netns", "pids", self.name]).split()]

    def kill_all(self) -> None:
        """SIGKILL every process in the namespace (a box losing power)."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.05)


def wait_for_log(log: Path, text: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        time.sleep(0.05)
    content = log.read_text(errors="replace") if log.exists() else "(no log)"
    raise TimeoutError(f"{log.name}: no {text!r} after {timeout} s:\n{content[-2000:]}")


def node_sshd_config(workdir: Path, host_key: Path, authorized_keys: Path) -> str:
    """A plain sshd for a test node: key auth for root only, run from a temp dir."""
    return "\n".join(
        [
            "Port 22",
            "ListenAddress 0.0.0.0",
            f"HostKey {host_key}",
            f"AuthorizedKeysFile {authorized_keys}",
            "PidFile none",
            "UsePAM no",
            "StrictModes no",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "LogLevel VERBOSE",
            "",
        ]
    )


@dataclass
class Cafe:
    """laptop ↔ hub ↔ node-a / node-b, with no route laptop → nodes."""

    workdir: Path
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    spaces: dict[str, Namespace] = field(default_factory=dict)

    def ns(self, role: str) -> Namespace:
        return self.spaces[role]

    def build(self) -> None:
        hub = self._add("hub")
        hub.address = "10.78.0.1"  # the hub's "public" address, routed to from every spoke
        _run(hub.argv(["ip", "addr", "add", f"{hub.address}/32", "dev", "lo"]))
        for n, role in enumerate(("laptop", "node-a", "node-b"), start=1):
            ns = self._add(role)
            ns.address = f"10.78.{n}.2"
            outer, inner = f"eb{self.token}h{n}", f"eb{self.token}x{n}"
            _run(["ip", "link", "add", outer, "type", "veth", "peer", "name", inner])
            _run(["ip", "link", "set", outer, "netns", hub.name])
            _run(["ip", "link", "set", inner, "netns", ns.name])
            _run(hub.argv(["ip", "addr", "add", f"10.78.{n}.1/24", "dev", outer]))
            _run(hub.argv(["ip", "link", "set", outer, "up"]))
            _run(ns.argv(["ip", "addr", "add", f"{ns.address}/24", "dev", inner]))
            _run(ns.argv(["ip", "link", "set", inner, "up"]))
            _run(ns.argv(["ip", "route", "add", hub.address, "via", f"10.78.{n}.1"]))
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation directory

    def _add(self, role: str) -> Namespace:
        ns = Namespace(f"eb{self.token}-{role}")
        _run(["ip", "netns", "add", ns.name])
        self.spaces[role] = ns
        _run(ns.argv(["ip", "link", "set", "lo", "up"]))
        return ns

    def start_sshd(self, role: str, config: Path, log: Path) -> None:
        """Run /usr/sbin/sshd -D in the namespace and wait until it listens."""
        ns = self.ns(role)
        ns.popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], log)
        wait_for_log(log, "Server listening on")

    def close(self) -> None:
        for ns in self.spaces.values():
            try:
                ns.kill_all()
            finally:
                subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, check=False)


REPO = Path(__file__).resolve().parents[1]
RELAY_PORT = 2222
PORTS = {"node-a": 42001, "node-b": 42002}
# Existing no-login accounts stand in for edgebox-tunnel / edgebox-jump on the test hub.
TUNNEL_USER, JUMP_USER = "daemon", "nobody"


@dataclass
class Fleet:
    cafe: Cafe
    dir: Path
    host_keys: dict[str, str]  # role → public host key
    tunnel_keys: dict[str, Path]  # node → private key it logs in to the hub with
    laptop_home: Path
    relay_settings: RelaySettings

    def directory(
        self, *, lan: dict[str, list[str]] | None = None, keys: dict[str, str] | None = None
    ) -> dict:
        lan, keys = lan or {}, {**self.host_keys, **(keys or {})}
        return {
            "hub": {
                "host": self.cafe.ns("hub").address,
                "port": RELAY_PORT,
                "user": JUMP_USER,
                "host_key": keys["hub"],
            },
            "nodes": [
                {
                    "name": n,
                    "id": f"id-{n}",
                    "host_key": keys[n],
                    "tunnel_port": PORTS[n],
                    "lan_addresses": lan.get(n, []),
                    "user": "root",
                }
                for n in PORTS
            ],
        }

    def home(self, name: str, directory: dict) -> Path:
        """An EDGEBOX_HOME holding the laptop's key and `directory` as fleet_nodes.json."""
        home = self.dir / name
        home.mkdir(exist_ok=True)
        for suffix in ("", ".pub"):
            src = self.laptop_home / f"id_ed25519{suffix}"
            (home / src.name).write_bytes(src.read_bytes())
            (home / src.name).chmod(0o600)
        (home / "fleet_nodes.json").write_text(json.dumps(directory))
        return home

    def edgebox(
        self, role: str, home: Path, *args: str, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return self.cafe.ns(role).run(
            [sys.executable, "-m", "edgebox", *args],
            timeout=timeout,
            env={"EDGEBOX_HOME": str(home)},
            cwd=REPO,
        )

    def start_relay(self, log_name: str) -> Path:
        log = self.dir / log_name
        self.cafe.start_sshd("hub", self.dir / "relay_sshd_config", log)
        return log

    def tunnel_spec(self, node: str) -> TunnelSpec:
        return TunnelSpec(
            hub_host=self.cafe.ns("hub").address,
            hub_port=RELAY_PORT,
            hub_host_key=self.host_keys["hub"],
            identity_file=self.tunnel_keys[node],
            tunnel_port=PORTS[node],
            user=TUNNEL_USER,
            known_hosts_file=self.dir / f"{node}_hub_known_hosts",
            server_alive_interval=2,
        )


@contextlib.contextmanager
def cafe_fleet(work: Path) -> Iterator[Fleet]:
    """Namespaces, keys, node sshds and the relay sshd up; everything stopped on exit."""
    cafe = Cafe(work)
    cleanup: list[Path] = []
    try:
        cafe.build()
        laptop_home = work / "laptop"
        laptop_home.mkdir()
        laptop_key = keygen(laptop_home / "id_ed25519")
        host_keys, tunnel_keys, nodes = {}, {}, []
        for role in ("hub", *PORTS):
            host_keys[role] = keygen(work / f"{role}_host_key")
        for node in PORTS:
            tunnel_keys[node] = work / f"{node}_tunnel_key"
            nodes.append(
                NodeRecord(
                    node, f"id-{node}", keygen(tunnel_keys[node]), host_keys[node], PORTS[node]
                )
            )
            (work / f"{node}_authorized_keys").write_text(laptop_key + "\n")
            config = work / f"{node}_sshd_config"
            config.write_text(
                node_sshd_config(work, work / f"{node}_host_key", work / f"{node}_authorized_keys")
            )
            cafe.start_sshd(node, config, work / f"{node}_sshd.log")
        # sshd reads authorized_keys as the relay account, so they live where it can read them.
        keys_dir = Path(tempfile.mkdtemp(prefix="edgebox-relay-"))
        cleanup.append(keys_dir)
        keys_dir.chmod(0o755)
        settings = RelaySettings(
            port=RELAY_PORT,
            host_key_file=str(work / "hub_host_key"),
            node_keys_file=str(keys_dir / "authorized_nodes"),
            user_keys_file=str(keys_dir / "authorized_users"),
            pid_file="none",
            tunnel_user=TUNNEL_USER,
            jump_user=JUMP_USER,
            strict_modes=False,
        )
        Path(settings.node_keys_file).write_text(render_node_keys(nodes))
        Path(settings.user_keys_file).write_text(
            render_user_keys([UserRecord("laptop", laptop_key)], nodes)
        )
        for path in (settings.node_keys_file, settings.user_keys_file):
            Path(path).chmod(0o644)
        (work / "relay_sshd_config").write_text(render_sshd_config(settings))
        fleet = Fleet(cafe, work, host_keys, tunnel_keys, laptop_home, settings)
        fleet.start_relay("relay.log")
        yield fleet
    finally:
        cafe.close()
        for path in cleanup:
            shutil.rmtree(path, ignore_errors=True)
