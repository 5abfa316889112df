"""Run the hub: identity and registry from the data dir, HTTPS under uvicorn."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn

from edgebox.fleet._files import write_atomic
from edgebox.fleet.hub import identity
from edgebox.fleet.hub.app import HubConfig, create_app
from edgebox.fleet.hub.store import DB_FILE, HubStore
from edgebox.fleet.node_keys import load_or_create_secret

if TYPE_CHECKING:
    from edgebox.fleet.hub.relay_runner import RelayPaths, RelayProcess

log = logging.getLogger("edgebox.hub")


def public_urls(host: str, port: int, given: list[str]) -> list[str]:
    if given:
        return [u.rstrip("/") for u in given]
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    return [f"https://{shown}:{port}"]


@dataclass(frozen=True)
class ConnLimits:
    """Slow-client limits (edgebox/api/conn_guard.py): seconds for the TLS handshake plus a
    request's headers, open connections per client address, and uvicorn's idle keep-alive."""

    header_timeout: float = 10.0
    per_address: int = 256
    keep_alive: float = 5.0


def serve(
    data_dir: Path,
    *,
    host: str,
    port: int,
    urls: list[str],
    heartbeat_interval: float,
    ssh_host: str | None,
    ssh_port: int,
    ssh_user: str,
    relay_node_keys: Path | None = None,
    ssh_host_key_file: Path | None = None,
    relay: bool = False,
    jump_user: str = "edgebox-jump",
    relay_listen: str = "0.0.0.0",
    conn_limits: ConnLimits | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM; with `relay`, also run and supervise the relay sshd.
    Raises RelaySetupError when the relay cannot run here."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    ident = identity.load_or_create(data_dir)
    store = open_store(data_dir)
    relay_paths, relay_key = None, None
    if relay:
        from edgebox.fleet.hub.relay_runner import prepare_relay

        relay_paths, relay_key = prepare_relay(
            data_dir,
            port=ssh_port,
            listen_address=relay_listen,
            tunnel_user=ssh_user,
            jump_user=jump_user,
        )
    hub_urls = public_urls(host, port, urls)
    given_key = ssh_host_key_file.read_text().strip() if ssh_host_key_file else None
    config = HubConfig(
        urls=hub_urls,
        fingerprint=ident.fingerprint,
        admin_key=ident.admin_key(),
        node_key_secret=load_or_create_secret(data_dir),
        grant_key=ident.signing_key(),
        heartbeat_interval=heartbeat_interval,
        ssh_host=ssh_host or _url_host(hub_urls[0]),
        ssh_port=ssh_port,
        ssh_user=ssh_user,
        relay_node_keys=relay_paths.node_keys if relay_paths else relay_node_keys,
        relay_user_keys=relay_paths.user_keys if relay_paths else None,
        jump_user=jump_user,
        ssh_host_key=relay_key or given_key,
    )
    _announce(data_dir, config)
    relay_process = _start_relay(relay_paths, store, config) if relay_paths else None
    app = create_app(store, config, on_shutdown=relay_process.stop if relay_process else None)
    try:
        _run_uvicorn(app, host, port, ident, conn_limits or ConnLimits())
    finally:
        if relay_process is not None:
            relay_process.stop()
        store.close()


def open_store(data_dir: Path) -> HubStore:
    """The registry in the data dir, its files 0600 (hashes only, but nobody else needs them)."""
    store = HubStore(data_dir / DB_FILE)
    for suffix in ("", "-wal", "-shm"):
        db_file = data_dir / (DB_FILE + suffix)
        if db_file.exists():
            db_file.chmod(0o600)
    return store


def _url_host(url: str) -> str:
    """The host of an https:// URL, without port or IPv6 brackets."""
    return url.split("://", 1)[1].rsplit(":", 1)[0].strip("[]")


def _announce(data_dir: Path, config: HubConfig) -> None:
    """Write hub.json (where the local CLI finds this hub) and log the addresses."""
    info = {"urls": config.urls, "fingerprint": config.fingerprint}
    # atomic: the CLI (and tests) may read it while the hub starts
    write_atomic(data_dir / identity.HUB_FILE, (json.dumps(info, indent=2) + "\n").encode())
    log.info(
        "hub serving %s (fingerprint %s, data %s)",
        ", ".join(config.urls),
        config.fingerprint,
        data_dir,
    )


def _start_relay(paths: RelayPaths, store: HubStore, config: HubConfig) -> RelayProcess:
    """Write the relay's key files, then start its supervised sshd; revocations and key
    rotations end relay sessions through it (config.end_relay_sessions)."""
    from edgebox.fleet.hub.relay_runner import RelayProcess
    from edgebox.fleet.hub.relay_sync import write_node_keys, write_user_keys

    write_node_keys(paths.node_keys, store.nodes())  # before sshd takes logins
    write_user_keys(paths.user_keys, store.users(), store.nodes())
    process = RelayProcess(paths.config).start()
    log.info(
        "relay sshd on port %d (accounts %s, %s; files in %s)",
        config.ssh_port,
        config.ssh_user,
        config.jump_user,
        paths.dir,
    )
    config.end_relay_sessions = process.end_sessions
    return process


def _run_uvicorn(
    app: object, host: str, port: int, ident: identity.HubIdentity, limits: ConnLimits
) -> None:
    """uvicorn behind the connection guard: TLS handshakes and request headers have a deadline,
    connections per address a cap (uvicorn alone lets a slow client hold a connection
    indefinitely)."""
    from edgebox.api.conn_guard import (
        ConnectionLimits,
        guarded_protocol,
        http_protocol,
        raise_open_file_limit,
        serve_uvicorn,
    )

    fds = raise_open_file_limit(None)  # up to the hard limit
    guard = ConnectionLimits(header_timeout_s=limits.header_timeout, per_address=limits.per_address)
    protocol = guarded_protocol(http_protocol(), guard)
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=host,
        port=port,
        ssl_certfile=str(ident.cert_path),
        ssl_keyfile=str(ident.key_path),
        http=protocol,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=3,
        timeout_keep_alive=max(1, int(limits.keep_alive)),
        # uvicorn answers 503 past this many connections + tasks, below the descriptor limit
        limit_concurrency=max(64, fds - 256),
        proxy_headers=False,  # heartbeats record the TCP peer address, never X-Forwarded-For
    )
    serve_uvicorn(config, handshake_timeout=limits.header_timeout)
