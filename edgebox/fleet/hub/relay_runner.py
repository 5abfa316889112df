"""The hub runs its SSH relay: files in the data dir, two system accounts, a supervised sshd.

`prepare_relay` writes what the relay sshd reads (its sshd_config, its Ed25519 host key and the
two authorized_keys files, all under DATA/relay, or /etc/edgebox/relay when the accounts could
not reach DATA: a data dir in root's 0700 home) and makes sure the tunnel and jump accounts
exist. `RelayProcess` runs `/usr/sbin/sshd -D -e -f DATA/relay/sshd_config` as a child,
restarts it when it exits (backoff 1 s doubling to 30 s) and stops it, with its sessions, with
the hub. sshd reads the authorized_keys files as the logged-in account, so the data dir
becomes traversable (0711: no listing; its secrets stay 0600) and DATA/relay is 0755 with
root-owned 0644 files, which also satisfies sshd's StrictModes check of every directory on the
path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgebox.fleet._files import write_atomic
from edgebox.fleet._proc import die_with_parent
from edgebox.fleet.relay import NOLOGIN, RelaySettings, render_sshd_config

log = logging.getLogger("edgebox.hub.relay")
SSHD = "/usr/sbin/sshd"


class RelaySetupError(RuntimeError):
    """The relay cannot run here; the message says what to do."""


@dataclass(frozen=True)
class RelayPaths:
    dir: Path

    @property
    def config(self) -> Path:
        return self.dir / "sshd_config"

    @property
    def host_key(self) -> Path:
        return self.dir / "ssh_host_ed25519_key"

    @property
    def host_key_pub(self) -> Path:
        return self.dir / "ssh_host_ed25519_key.pub"

    @property
    def node_keys(self) -> Path:
        return self.dir / "authorized_nodes"

    @property
    def user_keys(self) -> Path:
        return self.dir / "authorized_users"


def _account_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def ensure_accounts(names: list[str], *, create: bool = True) -> list[str]:
    """Create the missing no-login system accounts (root only); returns the ones created."""
    missing = [n for n in names if not _account_exists(n)]
    if not missing:
        return []
    command = " && ".join(
        f"useradd --system --no-create-home --shell {NOLOGIN} {n}" for n in missing
    )
    if not create or os.geteuid() != 0 or shutil.which("useradd") is None:
        raise RelaySetupError(
            f"the relay accounts {', '.join(missing)} do not exist; create them as root "
            f"(`{command}`), or name existing no-login accounts with --ssh-user/--jump-user"
        )
    for name in missing:
        argv = ["useradd", "--system", "--no-create-home", "--shell", NOLOGIN, name]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RelaySetupError(f"`{' '.join(argv)}` failed: {done.stderr.strip()}")
        log.info("created system account %s for the relay", name)
    return missing


def unlock_for_keys(names: list[str], shadow: Path = Path("/etc/shadow")) -> list[str]:
    """Give accounts whose password field is locked ("!", as useradd leaves it) the field
    "*": still no password that works, but not "locked", which sshd without PAM refuses
    outright, keys included ("User ... not allowed because account is locked"). Root only;
    returns the accounts changed."""
    if os.geteuid() != 0 or not shadow.exists():
        return []
    fields = {
        line.split(":", 2)[0]: line.split(":", 2)[1]
        for line in shadow.read_text().splitlines()
        if line.count(":") >= 2
    }
    changed = []
    for name in names:
        if fields.get(name, "").startswith("!"):
            argv = ["usermod", "--password", "*", name]
            done = subprocess.run(argv, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RelaySetupError(f"`{' '.join(argv)}` failed: {done.stderr.strip()}")
            log.info("relay account %s: password field '*' (was locked for sshd)", name)
            changed.append(name)
    return changed


FALLBACK_DIR = Path("/etc/edgebox/relay")


def _traversable(path: Path) -> bool:
    """Can any account walk down to `path` (every ancestor has the others' x bit)?"""
    return all(parent.stat().st_mode & 0o001 for parent in path.resolve().parents)


def _sshd_accepts(path: Path) -> bool:
    """Would sshd's StrictModes accept files under `path`: every ancestor owned by root (or
    by us) and writable by nobody else? A data dir under /tmp (world-writable) fails this."""
    for parent in (path / "relay").resolve().parents:
        if not parent.exists():
            continue
        info = parent.stat()
        if info.st_uid not in (0, os.geteuid()) or info.st_mode & 0o022:
            return False
    return True


def relay_dir_for(data_dir: Path) -> Path:
    """DATA/relay, unless the relay accounts cannot reach it or sshd would refuse a directory
    on its path (then /etc/edgebox/relay)."""
    if _traversable(data_dir) and _sshd_accepts(data_dir):
        return data_dir / "relay"
    return FALLBACK_DIR


def _host_key(paths: RelayPaths) -> str:
    """The relay's Ed25519 host key (made once, private 0600); returns the public line."""
    if not paths.host_key.exists():
        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        write_atomic(paths.host_key, private, mode=0o600)
        write_atomic(paths.host_key_pub, public + b" edgebox-relay\n", mode=0o644)
    return paths.host_key_pub.read_text().strip()


def prepare_relay(
    data_dir: Path,
    *,
    port: int,
    listen_address: str,
    tunnel_user: str,
    jump_user: str,
    sshd: str = SSHD,
) -> tuple[RelayPaths, str]:
    """Write the relay's files and check its accounts and config; returns (paths, host key)."""
    if os.geteuid() != 0:
        raise RelaySetupError(
            "the relay runs sshd, which needs root; run `edgebox hub serve --relay` as root, "
            "or leave --relay off and run the relay yourself (docs/architecture.md)"
        )
    if not os.access(sshd, os.X_OK):
        raise RelaySetupError(
            f"{sshd} not found; install OpenSSH's server (Debian: apt-get install openssh-server)"
        )
    ensure_accounts([tunnel_user, jump_user])
    unlock_for_keys([tunnel_user, jump_user])
    paths = RelayPaths(relay_dir_for(data_dir))
    if paths.dir.parent == data_dir:
        data_dir.chmod(0o711)  # the accounts must traverse it to reach relay/; no listing
    else:
        log.info(
            "relay files in %s (the relay accounts cannot reach %s, or sshd would refuse "
            "a directory on its path)",
            paths.dir,
            data_dir,
        )
    paths.dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    paths.dir.chmod(0o755)
    host_key = _host_key(paths)
    for keys in (paths.node_keys, paths.user_keys):
        if not keys.exists():
            write_atomic(keys, b"# generated by edgebox\n", mode=0o644)
    settings = RelaySettings(
        port=port,
        listen_address=listen_address,
        host_key_file=str(paths.host_key),
        node_keys_file=str(paths.node_keys),
        user_keys_file=str(paths.user_keys),
        pid_file="none",
        tunnel_user=tunnel_user,
        jump_user=jump_user,
    )
    write_atomic(paths.config, render_sshd_config(settings).encode(), mode=0o644)
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
    check = subprocess.run(
        [sshd, "-t", "-f", str(paths.config)], capture_output=True, text=True, check=False
    )
    if check.returncode != 0:
        raise RelaySetupError(f"sshd refused the relay config: {check.stderr.strip()}")
    return paths, host_key


class RelayProcess:
    """Keeps `sshd -D` running until `stop()`."""

    def __init__(self, config: Path, sshd: str = SSHD, max_delay: float = 30.0) -> None:
        self.argv = [sshd, "-D", "-e", "-f", str(config)]
        self.max_delay = max_delay
        self.starts = 0
        self._stop = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="edgebox-relay", daemon=True)

    def start(self) -> RelayProcess:
        self._thread.start()
        return self

    def _run(self) -> None:
        delay = 1.0
        while not self._stop.is_set():
            with self._lock:
                if self._stop.is_set():
                    break
                self._proc = subprocess.Popen(
                    self.argv, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent
                )
                self.starts += 1
            log.info("relay sshd started (pid %d)", self._proc.pid)
            started = time.monotonic()
            code = self._proc.wait()
            if self._stop.is_set():
                break
            delay = 1.0 if time.monotonic() - started > 30 else min(self.max_delay, delay * 2)
            log.warning("relay sshd exited with %s; restarting in %.0f s", code, delay / 2)
            self._stop.wait(delay / 2)

    def end_sessions(self, ports: list[int]) -> list[int]:
        """End the relay sessions listening on these tunnel ports (a revoked node's tunnel, or
        the old key's after a rotation); returns the pids ended.

        sshd reads authorized_keys only at login, so a live session outlives its key's removal.
        The session holding a node's `-R` port is the unprivileged child of that login's
        `[priv]` monitor; both are ended. Only this relay's own descendants are looked at, so
        no other process on the box is ever touched."""
        with self._lock:
            proc = self._proc
        if proc is None or proc.poll() is not None or not ports:
            return []
        wanted = set(ports)
        try:
            sessions = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        ended: list[psutil.Process] = []
        for child in sessions:
            with contextlib.suppress(psutil.Error):
                # net_connections is psutil >= 6's name for connections
                conns = getattr(child, "net_connections", None) or child.connections
                listening = {
                    c.laddr.port for c in conns(kind="tcp") if c.status == psutil.CONN_LISTEN
                }
                if listening & wanted:
                    ended.append(child)
                    parent = child.parent()
                    if parent is not None and parent.pid != proc.pid and parent in sessions:
                        ended.append(parent)
        for victim in ended:
            with contextlib.suppress(psutil.Error):
                victim.terminate()
        _, alive = psutil.wait_procs(ended, timeout=3)
        for victim in alive:
            with contextlib.suppress(psutil.Error):
                victim.kill()
        if ended:
            log.info(
                "ended %d relay session process(es) for tunnel port(s) %s",
                len(ended),
                ", ".join(map(str, sorted(wanted))),
            )
        return [p.pid for p in ended]

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._stop.set()
            proc = self._proc
        if proc is not None and proc.poll() is None:
            # sshd keeps its sessions (each in its own session id) when the listener ends; the
            # hub's relay ends with the hub, so its tunnels and jumps end too.
            try:
                sessions = psutil.Process(proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                sessions = []
            proc.terminate()
            for child in sessions:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            psutil.wait_procs(sessions, timeout=timeout)
        self._thread.join(timeout)
