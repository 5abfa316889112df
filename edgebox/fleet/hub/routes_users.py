"""Users (admin): people who reach nodes through the relay with their SSH key and read the
node list with their token. Adding one prints their login line once."""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edgebox.api.netguard import log_field
from edgebox.fleet import logins
from edgebox.fleet.hub.auth import requires
from edgebox.fleet.hub.context import hub_context
from edgebox.fleet.hub.models import UserAddRequest
from edgebox.fleet.hub.web import APIError, read_body

log = logging.getLogger("edgebox.hub")


@requires("admin")
async def add_user(request: Request) -> Response:
    hub = hub_context(request)
    body = await read_body(request, UserAddRequest)
    try:
        from edgebox.fleet.relay import key_material

        # none yet: the user's `edgebox login` registers their laptop's key
        key = key_material(body.ssh_public_key) if body.ssh_public_key else ""
    except ValueError:
        message = "not an OpenSSH public key line"
        raise APIError(400, message, param="ssh_public_key", code="invalid_key") from None
    token = await asyncio.to_thread(hub.store.add_user, body.name, key, hub.now())
    log.info("user %s added", log_field(body.name))
    await hub.sync_relay()
    login = logins.encode(hub.config.urls, hub.config.fingerprint, token)
    answer = {
        "name": body.name,
        "ssh_public_key": key or None,
        "login": login,
        "login_command": f"edgebox login {login}",
    }
    return JSONResponse(answer, status_code=201)


@requires("admin")
async def list_users(request: Request) -> Response:
    data = await asyncio.to_thread(hub_context(request).store.users)
    return JSONResponse({"object": "list", "data": data})


@requires("admin")
async def remove_user(request: Request) -> Response:
    hub = hub_context(request)
    name = request.path_params["user"]
    if not await asyncio.to_thread(hub.store.remove_user, name, hub.now()):
        raise APIError(404, f"no user {name!r}", param="user", code="user_not_found")
    log.info("user %s removed", log_field(name))
    await hub.sync_relay()
    return JSONResponse({"name": name, "removed": True})


ROUTES = [
    Route("/v1/hub/users", add_user, methods=["POST"]),
    Route("/v1/hub/users", list_users),
    Route("/v1/hub/users/{user}", remove_user, methods=["DELETE"]),
]
