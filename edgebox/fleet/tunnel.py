"""The node's tunnel to the hub: a supervised `ssh -N -R` child that always comes back.

The system ssh client runs as a child process (not asyncssh in-process): it is the client
people already audit and configure, `ExitOnForwardFailure` makes a refused port a clean exit
the supervisor can retry, and a crash or leak in the tunnel can never take the node agent down.

After a tunnel dies without a goodbye (Wi-Fi drop, NAT timeout) the hub's sshd keeps the old
session, and with it the port, until its ClientAlive checks give up (~30-50 s). Until then the
hub refuses the re-bind; the supervisor treats that like any other failure: wait, retry, with
exponential backoff and jitter, and never give up.
"""

from __future__ import annotations

import logging
import random
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edgebox.fleet._proc import die_with_parent
from edgebox.fleet.relay import key_material

log = logging.getLogger(__name__)

HUB_ALIAS = "edgebox-hub"
_UP_MARK = "remote forward success"
_REFUSED_MARK = "remote port forwarding failed"


@dataclass(frozen=True)
class TunnelSpec:
    """Where the tunnel goes and what it carries."""

    hub_host: str
    hub_port: int
    hub_host_key: str  # pinned: the tunnel never trusts a key it has not been given
    identity_file: Path
    tunnel_port: int  # the node's loopback port on the hub
    known_hosts_file: Path
    user: str = "edgebox-tunnel"
    local_ssh_port: int = 22
    api_forward: tuple[int, int] | None = None  # (port on the hub, local API port)
    server_alive_interval: int = 15
    server_alive_count: int = 3
    connect_timeout: int = 10


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter; a tunnel that stayed up `stable_after` s resets it."""

    initial: float = 1.0
    maximum: float = 60.0
    factor: float = 2.0
    jitter: float = 0.5  # the delay is drawn from [(1 - jitter) * d, d]
    stable_after: float = 30.0

    def delay(self, failures: int, rng: random.Random) -> float:
        """Seconds to wait after `failures` consecutive failures (>= 1)."""
        base = min(self.maximum, self.initial * self.factor ** max(0, failures - 1))
        return base * (1 - self.jitter * rng.random())


def tunnel_argv(spec: TunnelSpec, ssh: Sequence[str] = ("ssh",)) -> list[str]:
    """The ssh client command line for one tunnel attempt."""
    argv = [
        *ssh,
        "-N",
        "-F",
        "none",
        "-R",
        f"127.0.0.1:{spec.tunnel_port}:127.0.0.1:{spec.local_ssh_port}",
    ]
    if spec.api_forward is not None:
        hub_port, local_port = spec.api_forward
        argv += ["-R", f"127.0.0.1:{hub_port}:127.0.0.1:{local_port}"]
    options = {
        "ExitOnForwardFailure": "yes",
        "ServerAliveInterval": str(spec.server_alive_interval),
        "ServerAliveCountMax": str(spec.server_alive_count),
        "ConnectTimeout": str(spec.connect_timeout),
        "StrictHostKeyChecking": "yes",
        "HostKeyAlias": HUB_ALIAS,
        "UserKnownHostsFile": str(spec.known_hosts_file),
        "GlobalKnownHostsFile": "/dev/null",
        "UpdateHostKeys": "no",
        "BatchMode": "yes",
        "IdentitiesOnly": "yes",
        "IdentityFile": str(spec.identity_file),
        "PasswordAuthentication": "no",
        "LogLevel": "DEBUG1",  # the "remote forward success" line tells us the tunnel is up
    }
    for name, value in options.items():
        argv += ["-o", f"{name}={value}"]
    argv += ["-p", str(spec.hub_port), f"{spec.user}@{spec.hub_host}"]
    return argv


def classify_exit(stderr: str) -> str:
    """One line on why an ssh attempt ended, for the log."""
    if _REFUSED_MARK in stderr:
        return "the hub refused the port (an old session may still hold it); retrying"
    if "Host key verification failed" in stderr or "HOST IDENTIFICATION HAS CHANGED" in stderr:
        return "the hub's host key differs from the pinned key; refusing to connect"
    if "Permission denied" in stderr:
        return (
            "the hub's relay refused this node's SSH login: the node was revoked or rejoined "
            "with another key, or the relay's account or files are refused by its sshd (the "
            "hub's log says which: 'account is locked', 'bad ownership or modes')"
        )
    for line in reversed(stderr.splitlines()):
        if line and not line.startswith("debug"):
            return line.strip()[:200]
    return "ssh exited"


State = Literal["idle", "connecting", "up", "waiting", "stopped"]


class TunnelSupervisor:
    """Runs the tunnel in a background thread until `stop()`."""

    def __init__(
        self,
        spec: TunnelSpec,
        backoff: Backoff | None = None,
        ssh: Sequence[str] = ("ssh",),
        rng: random.Random | None = None,
    ) -> None:
        self.spec = spec
        self.backoff = backoff or Backoff()
        self._ssh = tuple(ssh)
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._up = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen[str] | None = None
        self.state: State = "idle"
        self.attempts = 0  # ssh children started
        self.ups = 0  # times the hub confirmed the forward
        self.last_error = ""

    def start(self) -> None:
        self._write_known_hosts()
        self._thread = threading.Thread(target=self._run, name="edgebox-tunnel", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
        if self._thread is not None:
            self._thread.join(timeout)
        self.state = "stopped"

    def wait_up(self, timeout: float) -> bool:
        """True once the hub has confirmed the forward (and it has not dropped since)."""
        return self._up.wait(timeout)

    def _write_known_hosts(self) -> None:
        path = self.spec.known_hosts_file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{HUB_ALIAS} {key_material(self.spec.hub_host_key)}\n")

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            started = time.monotonic()
            stderr = self._attempt()
            if self._stop.is_set():
                break
            lived = time.monotonic() - started
            failures = 1 if lived >= self.backoff.stable_after else failures + 1
            self.last_error = classify_exit(stderr)
            delay = self.backoff.delay(failures, self._rng)
            log.warning(
                "tunnel to %s down: %s; next try in %.1f s",
                self.spec.hub_host,
                self.last_error,
                delay,
            )
            self.state = "waiting"
            self._stop.wait(delay)

    def _attempt(self) -> str:
        """Run one ssh child to its end; returns the tail of its stderr."""
        self.attempts += 1
        self.state = "connecting"
        tail: list[str] = []
        proc = subprocess.Popen(
            tunnel_argv(self.spec, self._ssh),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=die_with_parent,  # no tunnel left behind by a node agent killed hard
        )
        self._proc = proc
        if self._stop.is_set():  # stop() ran between the loop check and Popen
            proc.terminate()
        assert proc.stderr is not None
        for line in proc.stderr:
            if _UP_MARK in line:
                self.state = "up"
                self.ups += 1
                self._up.set()
                log.info(
                    "tunnel up: hub %s:%d port %d",
                    self.spec.hub_host,
                    self.spec.hub_port,
                    self.spec.tunnel_port,
                )
            tail = [*tail[-40:], line.rstrip()]
        proc.wait()
        self._up.clear()
        return "\n".join(tail)
