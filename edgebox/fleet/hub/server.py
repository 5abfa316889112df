"""Run the hub: identity and registry from the data dir, HTTPS under uvicorn."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import uvicorn

from edgebox.fleet.hub import identity
from edgebox.fleet.hub.app import HubConfig, create_app
from edgebox.fleet.hub.store import DB_FILE, HubStore


def public_urls(host: str, port: int, given: list[str]) -> list[str]:
    if given:
        return [u.rstrip("/") for u in given]
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    return [f"https://{shown}:{port}"]


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
) -> None:
    """Serve until SIGINT/SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    ident = identity.load_or_create(data_dir)
    store = HubStore(data_dir / DB_FILE)
    hub_urls = public_urls(host, port, urls)
    config = HubConfig(
        urls=hub_urls,
        fingerprint=ident.fingerprint,
        admin_key=ident.admin_key(),
        heartbeat_interval=heartbeat_interval,
        ssh_host=ssh_host or hub_urls[0].split("://", 1)[1].rsplit(":", 1)[0].strip("[]"),
        ssh_port=ssh_port,
        ssh_user=ssh_user,
        relay_node_keys=relay_node_keys,
        ssh_host_key=ssh_host_key_file.read_text().strip() if ssh_host_key_file else None,
    )
    (data_dir / identity.HUB_FILE).write_text(
        json.dumps({"urls": hub_urls, "fingerprint": ident.fingerprint}, indent=2) + "\n"
    )
    logging.getLogger("edgebox.hub").info(
        "hub serving %s (fingerprint %s, data %s)", ", ".join(hub_urls), ident.fingerprint, data_dir
    )
    uvicorn.run(
        create_app(store, config),
        host=host,
        port=port,
        ssl_certfile=str(ident.cert_path),
        ssl_keyfile=str(ident.key_path),
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=3,
    )
    store.close()
