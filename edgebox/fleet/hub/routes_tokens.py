"""Join tokens (admin): create one (its secret shown once), list them, revoke one."""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edgebox.api.netguard import log_field
from edgebox.fleet import tokens
from edgebox.fleet.hub.auth import requires
from edgebox.fleet.hub.context import hub_context
from edgebox.fleet.hub.models import TokenCreateRequest
from edgebox.fleet.hub.web import APIError, read_body

log = logging.getLogger("edgebox.hub")


@requires("admin")
async def create_token(request: Request) -> Response:
    hub = hub_context(request)
    body = await read_body(request, TokenCreateRequest)
    token_id, secret, expires = await asyncio.to_thread(
        hub.store.create_token, ttl=body.ttl_seconds, name=body.name, now=hub.now()
    )
    urls, fingerprint = tuple(hub.config.urls), hub.config.fingerprint
    line = tokens.encode(tokens.JoinToken(urls, fingerprint, token_id, secret))
    log.info("token %s created (expires in %.0f s)", token_id, body.ttl_seconds)
    answer = {
        "id": token_id,
        "name": body.name,
        "expires_at": expires,
        "token": line,
        "join_command": tokens.join_command(line),
    }
    return JSONResponse(answer, status_code=201)


@requires("admin")
async def list_tokens(request: Request) -> Response:
    hub = hub_context(request)
    data = await asyncio.to_thread(hub.store.list_tokens, hub.now())
    return JSONResponse({"object": "list", "data": data})


@requires("admin")
async def revoke_token(request: Request) -> Response:
    hub = hub_context(request)
    token_id = request.path_params["token"]
    if not await asyncio.to_thread(hub.store.revoke_token, token_id, hub.now()):
        message = f"no unrevoked token {token_id!r}"
        raise APIError(404, message, param="token", code="token_not_found")
    log.info("token %s revoked", log_field(token_id))
    return JSONResponse({"id": token_id, "revoked": True})


ROUTES = [
    Route("/v1/hub/tokens", create_token, methods=["POST"]),
    Route("/v1/hub/tokens", list_tokens),
    Route("/v1/hub/tokens/{token}", revoke_token, methods=["DELETE"]),
]
