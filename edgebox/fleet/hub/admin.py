"""How an admin command finds its hub: the local data dir, or --hub URL with a key file."""

from __future__ import annotations

import json
from pathlib import Path

from edgebox.fleet.hub import identity
from edgebox.fleet.hub.client import HubClient


class AdminConfigError(Exception):
    pass


def admin_client(
    *,
    hub: str | None = None,
    admin_key_file: Path | None = None,
    fingerprint: str | None = None,
    data_dir: Path | None = None,
) -> HubClient:
    """A client with the admin key. On the hub box everything comes from the data dir; from
    elsewhere pass the hub URL, the admin key file, and the fingerprint (or keep hub.json next
    to the key file)."""
    data_dir = data_dir or identity.default_data_dir()
    key_path = admin_key_file or data_dir / identity.ADMIN_KEY_FILE
    info_path = (admin_key_file.parent if admin_key_file else data_dir) / identity.HUB_FILE
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    urls = [hub.rstrip("/")] if hub else info.get("urls")
    fingerprint = fingerprint or info.get("fingerprint")
    if not urls or not fingerprint:
        raise AdminConfigError(
            f"no hub found in {data_dir}; start one with `edgebox hub serve`, or pass "
            "--hub URL --fingerprint sha256:... --admin-key-file FILE"
        )
    if not key_path.exists():
        raise AdminConfigError(f"admin key file {key_path} does not exist")
    return HubClient(urls, fingerprint, bearer=key_path.read_text().strip())
