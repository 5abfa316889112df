"""How a reader of the hub's node list (`edgebox top`) reaches the hub: its URL, the certificate
fingerprint to pin and a key, found without flags where this box already knows them.

On the hub box the hub's own data dir (EDGEBOX_HOME/hub: hub.json and admin.key) says it all;
on a laptop the login `edgebox login` stored does. `--hub URL` takes the fingerprint and key
from whichever of those names that URL, else from the flags; when one is still missing the
error says which, and how to get it, before any connection is tried.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from edgebox.api.auth import is_loopback
from edgebox.fleet.identity import edgebox_home

LOGIN_HINT = "run `edgebox login ebu1_...` (the line `edgebox hub user add` prints)"


class HubAccessError(Exception):
    """What is missing to read the hub, and what to run; never contains a key."""


@dataclass(frozen=True)
class HubAccess:
    url: str
    fingerprint: str | None  # sha256:... of the hub's certificate; None for a plain http:// hub
    token: str | None
    found_in: str  # "this box's hub", "the stored login" or "the options", for messages

    def __repr__(self) -> str:  # keep the key out of tracebacks
        return f"HubAccess(url={self.url!r}, found_in={self.found_in!r})"


def _local_hub(home: Path) -> HubAccess | None:
    """The hub this box runs (its data dir under EDGEBOX_HOME), when readable."""
    data = home / "hub"
    try:
        info = json.loads((data / "hub.json").read_text())
        key = (data / "admin.key").read_text().strip()
        urls, fingerprint = list(info["urls"]), str(info["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return HubAccess(urls[0].rstrip("/"), fingerprint, key, "this box's hub") if urls else None


def _login(home: Path) -> tuple[list[str], HubAccess] | None:
    from edgebox.fleet.directory import SyncError, load_login

    try:
        login = load_login(home)
    except SyncError as exc:
        raise HubAccessError(str(exc)) from None
    if login is None:
        return None
    urls = [u.rstrip("/") for u in login.hub_urls]
    return urls, HubAccess(urls[0], login.fingerprint, login.token, "the stored login")


def find_hub(
    url: str | None = None,
    *,
    token: str | None = None,
    fingerprint: str | None = None,
    home: Path | None = None,
) -> HubAccess | None:
    """The hub to read, or None when no URL was given and this box knows of none.

    Raises HubAccessError naming what is missing (fingerprint, key) and how to supply it."""
    home = home or edgebox_home()
    local, login = _local_hub(home), _login(home)
    if url is None:
        found = local or (login[1] if login else None)
        if found is None:
            return None
        return HubAccess(
            found.url, fingerprint or found.fingerprint, token or found.token, found.found_in
        )
    url = url.rstrip("/")
    known = [a for a in (local,) if a and a.url == url]
    known += [login[1]] if login and url in login[0] else []
    base = known[0] if known else HubAccess(url, None, None, "the options")
    access = HubAccess(url, fingerprint or base.fingerprint, token or base.token, base.found_in)
    if url.startswith("https://") and not access.fingerprint:
        raise HubAccessError(
            f"the hub at {url} needs its certificate fingerprint: {LOGIN_HINT}, or pass "
            "--hub-fingerprint sha256:... (in the hub's hub.json and in every join token)"
        )
    if not access.token:
        raise HubAccessError(
            f"the hub at {url} needs a key to list its nodes: {LOGIN_HINT}, or pass --hub-token "
            "with the admin key (DATA/admin.key on the hub box) or set EDGEBOX_HUB_TOKEN"
        )
    return access


def seen_from_hub(api_url: str, hub_url: str) -> str:
    """`api_url` as the hub recorded it, reachable from here: a loopback host (node on the hub's
    own box) becomes the hub's host."""
    parts = urlsplit(api_url)
    hub_host = urlsplit(hub_url).hostname
    if not is_loopback(parts.hostname or "") or not hub_host:
        return api_url
    host = f"[{hub_host}]" if ":" in hub_host else hub_host
    return f"{parts.scheme}://{host}:{parts.port}"


def hub_api_urls(access: HubAccess) -> dict[str, str]:
    """URL → name of the hub's online nodes with an API address, as reachable from here
    (`GET /v1/hub/nodes`, pinned). Raises HubAccessError when the hub does not answer."""
    from edgebox.fleet.hub.client import HubClient, HubError

    if not access.fingerprint:
        raise HubAccessError(f"the hub at {access.url} has no certificate fingerprint on record")
    try:
        with HubClient([access.url], access.fingerprint, bearer=access.token, timeout=10) as hub:
            listed = hub.request("GET", "/v1/hub/nodes")
    except HubError as exc:
        raise HubAccessError(
            f"the hub at {access.url} did not list its nodes: {exc.message}"
        ) from None
    found: dict[str, str] = {}
    for node in listed.get("data") or []:
        url = node.get("api_url")
        if node.get("status") == "online" and isinstance(url, str) and url:
            found.setdefault(seen_from_hub(url, access.url), str(node.get("name") or url))
    return found
