"""Linux network namespaces for fleet tests: real multicast between "boxes" on one machine.

`NetnsLab` builds a LAN: a "switch" namespace holding a bridge, and node namespaces each plugged
into it by a veth pair (`eth0`, 10.77.0.<n>/24, with a multicast route). Extra point-to-
point links (say, an interface named `docker0`) can join two namespaces outside the bridge.
Names carry a random run token, so parallel runs never collide, and `close()` deletes every
namespace (and with them every veth) after killing what still runs in them, also after a failed
setup.

Needs root and iproute2; without them the fixture FAILS with what is missing (never skips).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest


class NetnsUnavailable(RuntimeError):
    pass


def require_netns() -> None:
    """Raise NetnsUnavailable naming what to install or how to run when netns cannot work."""
    missing = []
    if shutil.which("ip") is None:
        missing.append("the `ip` command (Debian: apt-get install iproute2)")
    if os.geteuid() != 0:
        missing.append("root (network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN)")
    if missing:
        raise NetnsUnavailable("fleet mDNS tests need " + " and ".join(missing))


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise NetnsUnavailable(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")


@dataclass
class Namespace:
    name: str
    addresses: dict[str, str] = field(default_factory=dict)  # interface → IPv4 address

    def command(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def popen(self, argv: Sequence[str], *, log: Path, env: dict[str, str] | None = None):
        """Start `argv` inside this namespace, stdout+stderr to `log`."""
        return subprocess.Popen(
            self.command(argv),
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def run(
        self, argv: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(argv),
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
            timeout=timeout,
            check=False,
        )


class NetnsLab:
    """A bridged LAN of namespaces; use as a context manager (or call close())."""

    def __init__(self, subnet: int = 77) -> None:
        require_netns()
        self.token = uuid.uuid4().hex[:6]
        self.subnet = subnet
        self.namespaces: list[Namespace] = []
        self._next_port = 0
        try:
            self.switch = self._namespace("sw")
            _ip(
                "-n",
                self.switch.name,
                "link",
                "add",
                "br0",
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            )
            _ip("-n", self.switch.name, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise

    def _namespace(self, role: str) -> Namespace:
        ns = Namespace(f"eb{self.token}-{role}")
        _ip("netns", "add", ns.name)
        self.namespaces.append(ns)  # registered before anything else can fail
        _ip("-n", ns.name, "link", "set", "lo", "up")
        return ns

    def add_node(self, role: str, host: int) -> Namespace:
        """A namespace with `eth0` = 10.77.<subnet>.<host>/24 on the bridge."""
        ns = self._namespace(role)
        self._next_port += 1
        port = f"p{self._next_port}"
        _ip(
            "-n",
            self.switch.name,
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name,
        )
        _ip("-n", self.switch.name, "link", "set", port, "master", "br0")
        _ip("-n", self.switch.name, "link", "set", port, "up")
        self._configure(ns, "eth0", f"10.{self.subnet}.0.{host}")
        return ns

    def link(self, a: Namespace, a_if: str, b: Namespace, b_if: str, third_octet: int) -> None:
        """A point-to-point veth between `a` (`a_if`, .1) and `b` (`b_if`, .2) on its own /24."""
        _ip(
            "-n", a.name, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b.name
        )
        self._configure(a, a_if, f"10.{self.subnet}.{third_octet}.1", multicast_route=False)
        self._configure(b, b_if, f"10.{self.subnet}.{third_octet}.2")

    def _configure(
        self, ns: Namespace, ifname: str, address: str, *, multicast_route: bool = True
    ) -> None:
        _ip("-n", ns.name, "addr", "add", f"{address}/24", "dev", ifname)
        _ip("-n", ns.name, "link", "set", ifname, "up")
        if multicast_route:
            _ip("-n", ns.name, "route", "add", "224.0.0.0/4", "dev", ifname)
        ns.addresses[ifname] = address

    def close(self) -> None:
        """Kill what still runs in the namespaces (a failed test's processes), then delete them."""
        for ns in reversed(self.namespaces):
            pids = subprocess.run(["ip", "netns", "pids", ns.name], capture_output=True, text=True)
            for pid in pids.stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, check=False)
        self.namespaces.clear()

    def __enter__(self) -> NetnsLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def netns_lab() -> Iterator[NetnsLab]:
    """A fresh bridged LAN for one test; fails (not skips) when namespaces are unavailable."""
    try:
        lab = NetnsLab()
    except NetnsUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield lab
    finally:
        lab.close()
