"""Hub routes for the fleet's keys: node API keys for routers, a user's own SSH key, and what
heartbeat answers carry (peers, their keys when asked, the users' SSH public keys).

Top-level handlers over (request, store, config), wired into the app by `create_app`.

Who gets what:
- `GET /v1/hub/node-keys` (a user login or the admin key): each live node's API key, for
  `edgebox router --hub`. Never part of `GET /v1/hub/nodes`, whose answer reaches `edgebox
  nodes --json`, the TUI and laptops' fleet_nodes.json.
- a heartbeat answer: the online peers; their API keys only when the beat asks (`peer_keys`,
  sent by `serve --fleet` nodes); the users' SSH public keys (public, for the nodes'
  authorized_keys).
- `GET /v1/hub/me`, `PUT /v1/hub/me/key` (a user login): the user's own record and laptop key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from edgebox.fleet.hub.models import UserKeyRequest
from edgebox.fleet.hub.store import HubStore
from edgebox.netguard import log_field
from edgebox.node.errors import APIError

log = logging.getLogger("edgebox.hub")

if TYPE_CHECKING:
    from edgebox.fleet.hub.app import HubConfig

REFRESH_S = 1.0  # heartbeat answers share one read of the registry per second
# what a peer needs of another: its name, address, the keys that match and verify its mDNS
# advert (a public key, which the node proves it holds), models; no telemetry, no secrets
PEER_FIELDS = ("id", "name", "api_url", "host_key", "ssh_public_key", "models", "status")


class FleetView:
    """The registry as heartbeat answers carry it, read and encoded at most once a second
    however many nodes beat."""

    def __init__(self, store: HubStore, config: HubConfig) -> None:
        self.store, self.config = store, config
        self._at = -1.0
        self._encoded = {"plain": b"[]", "keyed": b"[]", "users": b"[]"}

    def _read(self) -> dict[str, bytes]:
        nodes = self.store.nodes()
        online = [r for r in nodes if r.get("status") == "online" and r.get("api_url")]
        peers = [{k: r.get(k) for k in PEER_FIELDS} for r in online]
        keyed = [
            {k: r.get(k) for k in PEER_FIELDS} | {"api_key": self.config.node_api_key(r)}
            for r in online
        ]
        users = [
            {"name": u["name"], "ssh_public_key": u["ssh_public_key"]}
            for u in self.store.users()
            if u["ssh_public_key"]
        ]
        return {
            "plain": json.dumps(peers).encode(),
            "keyed": json.dumps(keyed).encode(),
            "users": json.dumps(users).encode(),
        }

    async def parts(self, *, keyed: bool) -> tuple[bytes, bytes]:
        """(peers, users) as JSON: every online node with an API address (this one included;
        the node leaves itself out), with their API keys when `keyed`."""
        if time.monotonic() - self._at >= REFRESH_S:
            self._encoded = await asyncio.to_thread(self._read)
            self._at = time.monotonic()
        return self._encoded["keyed" if keyed else "plain"], self._encoded["users"]


def _user(request: Request, store: HubStore) -> str:
    """The user whose login token the request carries (401 otherwise)."""
    from edgebox.fleet.hub.app import _bearer

    bearer = _bearer(request)
    name = store.user_for_token(bearer) if bearer.startswith("ebu_") else None
    if name is None:
        raise APIError(
            401,
            "this route takes a user login token (`edgebox login`); it is "
            "not valid for this hub (removed?)",
            type="authentication_error",
            code="invalid_user_token",
        )
    return name


async def node_keys(request: Request, store: HubStore, config: HubConfig) -> Response:
    """Each live node's API key, for routers logged in to the hub."""
    from edgebox.fleet.hub.app import _require_reader

    await asyncio.to_thread(_require_reader, request, config, store)
    nodes = await asyncio.to_thread(store.nodes)
    data = [
        {"id": n["id"], "name": n["name"], "api_key": config.node_api_key(n)}
        for n in nodes
        if n.get("revoked_at") is None
    ]
    return JSONResponse({"object": "list", "data": data})


async def whoami(request: Request, store: HubStore) -> Response:
    name = await asyncio.to_thread(_user, request, store)
    users = await asyncio.to_thread(store.users)
    key = next((u["ssh_public_key"] for u in users if u["name"] == name), "")
    return JSONResponse({"name": name, "ssh_public_key": key or None})


async def set_my_key(request: Request, store: HubStore, after: Any) -> Response:
    """A user registers the SSH public key of the laptop they log in from; the relay and,
    at their next heartbeat, the nodes take it (`after` rewrites the relay's files)."""
    from edgebox.fleet.hub.app import _body
    from edgebox.provisioning.relay import RelayConfigError, key_material

    name = await asyncio.to_thread(_user, request, store)
    body = await _body(request, UserKeyRequest)
    try:
        key = key_material(body.ssh_public_key)
    except RelayConfigError:
        raise APIError(
            400, "not an OpenSSH public key line", param="ssh_public_key", code="invalid_key"
        ) from None
    await asyncio.to_thread(store.set_user_key, name, key, time.time())
    log.info("user %s registered a new SSH key", log_field(name))
    await after()
    return JSONResponse({"name": name, "ssh_public_key": key})
