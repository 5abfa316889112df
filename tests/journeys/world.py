"""The machines of the journey: a hub, two boxes and a laptop, each a network namespace with a
private /root, /etc/ssh and /run, so each looks like its own Debian box to what runs in it.

    laptop (10.79.1.2) ──┐                       ┌── box1 eth0 10.80.0.11 ─┐
                         ├─ hub 10.79.0.1 ───────┤                         ├─ LAN (bridge)
    box1 (10.79.2.2) ────┤   (no forwarding)     └── box2 eth0 10.80.0.12 ─┤
    box2 (10.79.3.2) ────┘                          laptop eth0 10.80.0.20 ┘ (down until "home")

Every spoke has a point-to-point link to the hub and a route to its one public address; the hub
does not forward, so the laptop reaches only the hub until it "comes home" (its LAN link goes
up). Each box runs the system's sshd with Debian's stock config (UsePAM no) and fresh host keys.
Commands run through `ip netns exec`, which gives each a mount namespace: the machine's own
directories are bind-mounted over /root, /etc/ssh and /run there (and /etc/edgebox on the hub,
where `hub serve --relay` puts relay files sshd must accept). Root commands get a clean
environment (HOME=/root); the laptop's run as a real unprivileged account made with useradd.

Needs root, iproute2, OpenSSH server and client, useradd, setpriv and curl: without them the fixture
FAILS saying what is missing (never skips).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HUB_ADDRESS = "10.79.0.1"
LAN = {"box1": "10.80.0.11", "box2": "10.80.0.12", "laptop": "10.80.0.20"}
SPOKES = ("laptop", "box1", "box2")
REQUIRED = {
    "ip": "iproute2",
    "/usr/sbin/sshd": "openssh-server",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "useradd": "passwd",
    "setpriv": "util-linux",
    "curl": "curl",
}
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def missing_prerequisites() -> list[str]:
    missing = [
        f"{tool} (apt-get install {pkg})"
        for tool, pkg in REQUIRED.items()
        if shutil.which(tool) is None and not os.access(tool, os.X_OK)
    ]
    if os.geteuid() != 0:
        missing.append("root (network namespaces, bind mounts and a test account)")
    return missing


def sh(*argv: str) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` failed: {done.stderr.strip()}")
    return done.stdout


@dataclass
class Machine:
    role: str
    ns: str
    dir: Path  # this machine's private directories live here
    binds: dict[str, Path] = field(default_factory=dict)  # mount point → source
    user: tuple[str, int, int, Path] | None = None  # the laptop's account: name, uid, gid, home

    def argv(self, command: str, *, root: bool) -> list[str]:
        """`bash -c command` in this machine, as root or as its unprivileged user."""
        mounts = "".join(f"mount --rbind {src} {dst} && " for dst, src in self.binds.items())
        bin_dir = self.dir.parent / "bin"
        if root:
            env = ["HOME=/root", "USER=root", "LOGNAME=root"]
            cd, who = "/root", []
        else:
            assert self.user is not None, f"{self.role} has no unprivileged user"
            name, uid, gid, home = self.user
            env = [f"HOME={home}", f"USER={name}", f"LOGNAME={name}"]
            cd, who = str(home), ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--init-groups"]
        env += [f"PATH={bin_dir}:{PATH}", "LANG=C.UTF-8", "TERM=dumb", "COLUMNS=160"]
        inner = [*who, "env", "-i", *env, "bash", "-c", f"cd {cd} && {command}"]
        return ["ip", "netns", "exec", self.ns, "sh", "-c", mounts + 'exec "$@"', "sh", *inner]

    def run(
        self, command: str, *, root: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(command, root=root),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self, command: str, log: Path, *, root: bool = True) -> subprocess.Popen[bytes]:
        with log.open("ab") as sink:
            return subprocess.Popen(
                self.argv(command, root=root),
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def pids(self) -> list[int]:
        return [int(p) for p in sh("ip", "netns", "pids", self.ns).split()]

    def kill_all(self) -> None:
        """SIGKILL everything in the namespace (a box losing power)."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.05)


class World:
    """Build with `World.build(logs)`; `close()` undoes everything, also after a failed build."""

    def __init__(self, logs: Path) -> None:
        self.token = uuid.uuid4().hex[:6]
        self.logs = logs
        self.base = Path(tempfile.mkdtemp(prefix="edgebox-journey-"))
        self.base.chmod(0o755)
        self.machines: dict[str, Machine] = {}
        self.namespaces: list[str] = []
        self.account: str | None = None
        self.made_etc_edgebox = False
        self.accounts_before = {u for u in ("edgebox-tunnel", "edgebox-jump") if _exists(u)}

    def __getitem__(self, role: str) -> Machine:
        return self.machines[role]

    @classmethod
    def build(cls, logs: Path) -> World:
        world = cls(logs)
        try:
            world._tools()
            world._network()
            for role in ("hub", *SPOKES):
                world._private_dirs(world[role])
            world._laptop_account()
            for box in ("box1", "box2"):
                world.start_sshd(box)
        except BaseException:
            world.close()
            raise
        return world

    def _tools(self) -> None:
        """`edgebox` and `python` on every machine's PATH: this checkout, as after install.sh."""
        bin_dir = self.base / "bin"
        bin_dir.mkdir()
        python = Path(sys.executable)
        for name, tail in (("edgebox", "-m edgebox"), ("python", "")):
            script = bin_dir / name
            script.write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {python} {tail} "$@"\n')
            script.chmod(0o755)

    def _namespace(self, role: str) -> str:
        name = f"ebj{self.token}-{role}"
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def _network(self) -> None:
        hub = self._namespace("hub")
        self.machines["hub"] = Machine("hub", hub, self.base / "hub")
        sh("ip", "-n", hub, "addr", "add", f"{HUB_ADDRESS}/32", "dev", "lo")
        switch = self._namespace("lan")
        sh("ip", "-n", switch, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        sh("ip", "-n", switch, "link", "set", "br0", "up")
        for n, role in enumerate(SPOKES, start=1):
            ns = self._namespace(role)
            self.machines[role] = Machine(role, ns, self.base / role)
            outer, inner = f"ebj{self.token}h{n}", f"ebj{self.token}x{n}"
            sh(
                "ip",
                "link",
                "add",
                outer,
                "netns",
                hub,
                "type",
                "veth",
                "peer",
                "name",
                inner,
                "netns",
                ns,
            )
            sh("ip", "-n", hub, "addr", "add", f"10.79.{n}.1/24", "dev", outer)
            sh("ip", "-n", hub, "link", "set", outer, "up")
            sh("ip", "-n", ns, "addr", "add", f"10.79.{n}.2/24", "dev", inner)
            sh("ip", "-n", ns, "link", "set", inner, "up")
            sh("ip", "-n", ns, "route", "add", HUB_ADDRESS, "via", f"10.79.{n}.1")
            port = f"p{n}"
            sh(
                "ip",
                "-n",
                switch,
                "link",
                "add",
                port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
            )
            sh("ip", "-n", switch, "link", "set", port, "master", "br0")
            sh("ip", "-n", switch, "link", "set", port, "up")
            sh("ip", "-n", ns, "addr", "add", f"{LAN[role]}/24", "dev", "eth0")
            if role != "laptop":  # the laptop starts in the café
                self.lan_up(role)

    def lan_up(self, role: str) -> None:
        ns = self[role].ns
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "route", "replace", "224.0.0.0/4", "dev", "eth0")

    def lan_down(self, role: str) -> None:
        sh("ip", "-n", self[role].ns, "link", "set", "eth0", "down")

    def _private_dirs(self, m: Machine) -> None:
        m.dir.mkdir()
        root, run = m.dir / "root", m.dir / "run"
        root.mkdir(mode=0o700)
        (run / "sshd").mkdir(parents=True)
        run.chmod(0o755)
        # This machine's /root, but with the test's Python (pyenv lives in the real /root).
        m.binds = {f"{root}/.pyenv": Path("/root/.pyenv"), "/root": root, "/run": run}
        (root / ".pyenv").mkdir()
        if m.role == "laptop":
            root.chmod(0o711)  # so the laptop's user reaches that Python
            return
        etc_ssh = m.dir / "etc" / "ssh"
        shutil.copytree(
            "/etc/ssh", etc_ssh, symlinks=True, ignore=shutil.ignore_patterns("ssh_host_*")
        )
        sh("ssh-keygen", "-A", "-f", str(m.dir))  # fresh host keys in DIR/etc/ssh
        config = etc_ssh / "sshd_config"
        text = config.read_text()  # Debian's stock config, without PAM (the box)
        config.write_text(text.replace("UsePAM yes", "UsePAM no"))
        m.binds["/etc/ssh"] = etc_ssh
        if Path("/etc/systemd/system").is_dir():  # what `join` installs stays on this box
            (m.dir / "etc" / "systemd-system").mkdir()
            m.binds["/etc/systemd/system"] = m.dir / "etc" / "systemd-system"
        if m.role == "hub":  # where `hub serve --relay` puts relay files under a 0700 /root
            if not Path("/etc/edgebox").exists():
                Path("/etc/edgebox").mkdir(mode=0o755)
                self.made_etc_edgebox = True
            (m.dir / "etc" / "edgebox").mkdir(mode=0o755)
            m.binds["/etc/edgebox"] = m.dir / "etc" / "edgebox"

    def _laptop_account(self) -> None:
        name = f"ebj{self.token}"
        home = Path("/home") / name
        sh("useradd", "--create-home", "--home-dir", str(home), "--shell", "/bin/bash", name)
        self.account = name
        entry = pwd.getpwnam(name)
        self["laptop"].user = (name, entry.pw_uid, entry.pw_gid, home)

    def start_sshd(self, role: str) -> None:
        """The box's own sshd, as its init system would run it."""
        log = self.logs / f"{role}-sshd.log"
        self[role].start("/usr/sbin/sshd -D -e", log)
        deadline = time.monotonic() + 10
        while "Server listening" not in (log.read_text() if log.exists() else ""):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{role}'s sshd did not start:\n{log.read_text()}")
            time.sleep(0.05)

    def close(self) -> None:
        for ns in reversed(self.namespaces):
            with contextlib.suppress(RuntimeError):
                for pid in sh("ip", "netns", "pids", ns).split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
        time.sleep(0.2)
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        self.namespaces.clear()
        if self.account:
            subprocess.run(["userdel", "--remove", self.account], capture_output=True, check=False)
        for account in ("edgebox-tunnel", "edgebox-jump"):
            if account not in self.accounts_before and _exists(account):
                subprocess.run(["userdel", account], capture_output=True, check=False)
        if self.made_etc_edgebox:
            with contextlib.suppress(OSError):
                Path("/etc/edgebox").rmdir()
        shutil.rmtree(self.base, ignore_errors=True)


def _exists(account: str) -> bool:
    try:
        pwd.getpwnam(account)
    except KeyError:
        return False
    return True


def wait_for(predicate: Callable[[], bool], what: str, timeout: float, poll: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)
