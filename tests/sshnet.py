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
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

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
            self.argv(argv), capture_output=True, text=True, timeout=timeout, check=False,
            env={**os.environ, **(env or {})}, **kw,
        )  # fmt: skip

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
    return "\n".join([
        "Port 22", "ListenAddress 0.0.0.0", f"HostKey {host_key}",
        f"AuthorizedKeysFile {authorized_keys}", "PidFile none", "UsePAM no", "StrictModes no",
        "PermitRootLogin prohibit-password", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "LogLevel VERBOSE", "",
    ])  # fmt: skip


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
