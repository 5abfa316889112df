"""Fixtures that start real edgebox node processes on loopback and always stop them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from edgebox.models import resolve_model

# Marks tests that start processes `system` and keeps the fast tier honest (tests/tiers.py);
# pytester runs the tiers' own tests.
pytest_plugins = ["tests.tiers", "pytester"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    """`edgebox ARGS` as a user on this box would run it: its own home, mDNS on loopback only,
    no relay host key, a wide terminal so tables do not wrap."""
    env = os.environ | {
        "EDGEBOX_HOME": str(home),
        "EDGEBOX_MDNS_INTERFACES": "lo",
        "EDGEBOX_SSHD_HOST_KEY": "",
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, "-m", "edgebox", *args],
        env=env,
        text=True,
        capture_output=True,
        timeout=60,
    )


def wait_until(
    condition: Callable[[], object],
    timeout: float = 10,
    what: str = "a condition",
    interval: float = 0.02,
) -> float:
    """Poll `condition` until it is true, instead of sleeping a fixed time; returns the seconds
    it took. Fails the test, naming `what`, if it is still false when checked after `timeout`
    seconds (it is always checked once more after the deadline)."""
    started = time.monotonic()
    while True:
        past_deadline = time.monotonic() - started > timeout
        if condition():
            return time.monotonic() - started
        if past_deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    """Wait for `url`/health to answer 200; kill `proc` and fail, with its log's tail, if it
    does not within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    pytest.fail(f"{url} did not start: {log.read_text()[-2000:]}")


@dataclass
class NodeProcess:
    url: str  # http://127.0.0.1:PORT
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def stop(self) -> int:
        """Ctrl-C the node, as a user would; returns its exit code (-9 if it had to be killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return -9
        return self.proc.returncode


def start_node(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, startup_s: float = 60
) -> NodeProcess:
    port = free_port()
    log = tmp_path / f"node-{port}.log"
    cmd = [sys.executable, "-m", "edgebox", "serve", "--port", str(port), "--threads", "2", *args]
    proc = subprocess.Popen(
        cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
    )
    node = NodeProcess(f"http://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + startup_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"node exited early:\n{log.read_text()}")
        try:
            if httpx.get(node.url + "/health", timeout=1).status_code == 200:
                return node
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    node.stop()
    raise RuntimeError(f"node did not become healthy:\n{log.read_text()}")


@pytest.fixture(scope="session", autouse=True)
def edgebox_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Nodes started by tests keep their identity (node id, SSH key) in a temp dir, not ~."""
    home = tmp_path_factory.mktemp("edgebox-home")
    # Nodes joined from this one box report no sshd host key unless a test names one: the hub
    # refuses a second live node with the same host key, and on a box with
    # /etc/ssh/ssh_host_ed25519_key.pub every test node would otherwise report that one.
    wanted = {"EDGEBOX_HOME": str(home), "EDGEBOX_SSHD_HOST_KEY": ""}
    before = {name: os.environ.get(name) for name in wanted}
    os.environ["EDGEBOX_HOME"] = str(home)
    os.environ.setdefault("EDGEBOX_SSHD_HOST_KEY", "")
    yield home
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One shared node with the bundled default model, 4 slots."""
    proc = start_node(tmp_path_factory.mktemp("node"), "--parallel", "4", "--ctx", "2048")
    yield proc
    assert proc.stop() == 0, f"node did not shut down cleanly on Ctrl-C:\n{proc.log.read_text()}"


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return resolve_model("smollm2-135m").path


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    return resolve_model("gemma3-270m").path


@pytest.fixture(scope="session", autouse=True)
def own_authorized_keys_untouched() -> Iterator[None]:
    """Tests run as root: a node joined with user keys on (the default) writes hub users'
    keys into the authorized_keys of the account running it. Tests must pass `--no-user-keys`
    or `--authorized-keys TMPFILE`; this fails the run if this machine's own file changed."""
    path = Path.home() / ".ssh" / "authorized_keys"
    before = path.read_bytes() if path.exists() else None
    yield
    after = path.read_bytes() if path.exists() else None
    assert after == before, f"a test changed {path}: join test nodes with --no-user-keys"
