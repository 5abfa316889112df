"""The fleet's keys: node API keys for routers, and a user's own laptop key.

- `GET /v1/hub/node-keys` (reader: a user login or the admin key): each live node's API key
  (fleet/node_keys.py), for `edgebox router --hub`. Never part of `GET /v1/hub/nodes`, whose
  answer reaches `edgebox nodes --json`, the TUI and laptops' fleet_nodes.json. (`serve
  --fleet` nodes get their peers' keys in heartbeat answers instead, routes_membership.py.)
- `GET /v1/hub/me`, `PUT /v1/hub/me/key` (user): the user's record, and the SSH public key of
  the laptop they log in from; the relay takes it at once, the nodes at their next beat.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edgebox.api.netguard import log_field
from edgebox.fleet.hub.auth import caller, requires
from edgebox.fleet.hub.context import hub_context
from edgebox.fleet.hub.models import UserKeyRequest
from edgebox.fleet.hub.web import APIError, read_body

log = logging.getLogger("edgebox.hub")


@requires("reader")
async def node_keys(request: Request) -> Response:
    """Each live node's API key, for routers logged in to the hub."""
    hub = hub_context(request)
    nodes = await asyncio.to_thread(hub.store.nodes)
    data = [
        {"id": n["id"], "name": n["name"], "api_key": hub.config.node_api_key(n)}
        for n in nodes
        if n.get("revoked_at") is None
    ]
    return JSONResponse({"object": "list", "data": data})


@requires("user")
async def whoami(request: Request) -> Response:
    name = caller(request).user
    users = await asyncio.to_thread(hub_context(request).store.users)
    key = next((u["ssh_public_key"] for u in users if u["name"] == name), "")
    return JSONResponse({"name": name, "ssh_public_key": key or None})


@requires("user")
async def set_my_key(request: Request) -> Response:
    """Register the SSH public key of the laptop the user logs in from (replacing theirs)."""
    from edgebox.fleet.relay import RelayConfigError, key_material

    hub, name = hub_context(request), caller(request).user
    assert name is not None  # the "user" scope always names one
    body = await read_body(request, UserKeyRequest)
    try:
        key = key_material(body.ssh_public_key)
    except RelayConfigError:
        message = "not an OpenSSH public key line"
        raise APIError(400, message, param="ssh_public_key", code="invalid_key") from None
    await asyncio.to_thread(hub.store.set_user_key, name, key, hub.now())
    log.info("user %s registered a new SSH key", log_field(name))
    await hub.sync_relay()
    return JSONResponse({"name": name, "ssh_public_key": key})


ROUTES = [
    Route("/v1/hub/node-keys", node_keys),
    Route("/v1/hub/me", whoami),
    Route("/v1/hub/me/key", set_my_key, methods=["PUT"]),
]
