"""The routes nodes call: join (a token), rejoin (a signature by the node's key), heartbeat
(the node secret issued at join)."""

from __future__ import annotations

import asyncio
import json
import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edgebox.api.netguard import log_field
from edgebox.fleet.hub.auth import caller, requires
from edgebox.fleet.hub.context import hub_context
from edgebox.fleet.hub.models import (
    HeartbeatRequest,
    JoinRequest,
    RejoinRequest,
    observed_api_url,
)
from edgebox.fleet.hub.repository import JoinRefused, Registration
from edgebox.fleet.hub.web import APIError, read_body

log = logging.getLogger("edgebox.hub")


def _refusal(refusal: JoinRefused) -> APIError:
    return APIError(refusal.status, refusal.message, type="join_refused", code=refusal.code)


async def join(request: Request) -> Response:
    """Redeem a join token: a new node, its secret and tunnel port (open: the token is the
    credential, and limits.py bounds the tries per address)."""
    hub = hub_context(request)
    body = await read_body(request, JoinRequest)
    reg = Registration(body.name, body.ssh_public_key, body.host_key, body.profile, body.models)
    try:
        node = await asyncio.to_thread(hub.store.redeem, body.token_id, body.secret, reg, hub.now())
    except JoinRefused as refusal:
        log.warning("join refused: token %s: %s", log_field(body.token_id), refusal.code)
        raise _refusal(refusal) from None
    log.info(
        "node %s (%s) joined with token %s",
        node["id"],
        log_field(node["name"]),
        log_field(body.token_id),
    )
    await hub.sync_relay()
    return JSONResponse(hub.membership(node), status_code=201)


async def rejoin(request: Request) -> Response:
    """Re-register a live node, or rotate its key: signed by its current key, no token."""
    hub = hub_context(request)
    body = await read_body(request, RejoinRequest)
    fingerprint = hub.config.fingerprint
    try:
        node = await asyncio.to_thread(hub.store.rejoin, body.model_dump(), fingerprint, hub.now())
    except JoinRefused as refusal:
        log.warning("rejoin refused: %s", refusal.code)
        raise _refusal(refusal) from None
    rotated = node.pop("old_key") is not None
    done = "rotated its key" if rotated else "re-registered"
    log.info("node %s (%s) %s", node["id"], log_field(node["name"]), done)
    await hub.sync_relay()
    if rotated:  # the old key's tunnel session ends now; the node reconnects with the new
        await hub.end_sessions([node["tunnel_port"]])
    return JSONResponse(hub.membership(node), status_code=200)


@requires("node")
async def heartbeat(request: Request) -> Response:
    """Record a beat (telemetry, models, the observed API address, the account users' keys
    go to); answer with the online peers (with their API keys when asked) and the users'
    SSH public keys."""
    hub = hub_context(request)
    secret = caller(request).credential
    body = await read_body(request, HeartbeatRequest)
    api_url = observed_api_url(request.client.host if request.client else None, body.api)
    node = await asyncio.to_thread(
        hub.store.heartbeat,
        secret,
        body.telemetry,
        body.models,
        hub.now(),
        api_url,
        body.ssh_user,
    )
    if node is None:
        raise APIError(
            401,
            "this node is not registered on the hub (or was revoked)",
            type="authentication_error",
            code="unknown_node",
        )
    await hub.record_blobs(node["id"], body.blobs)
    interval = hub.config.heartbeat_interval
    head = json.dumps(
        {
            "node_id": node["id"],
            "status": node["status"],
            "heartbeat_interval": interval,
            "hub_key": hub.config.hub_key,  # for members joined before hubs issued grants
        }
    )
    # `peers` lists every online node, this one included (the node leaves itself out), each
    # with a blob grant, so the encoded lists are shared by every answer within a second;
    # `users` the users' SSH public keys, for the node's authorized_keys.
    peers, users = await hub.fleet_json(keyed=body.peer_keys)
    answer = head[:-1].encode() + b', "peers": ' + peers + b', "users": ' + users + b"}"
    return Response(answer, media_type="application/json")


ROUTES = [
    Route("/v1/hub/join", join, methods=["POST"]),
    Route("/v1/hub/rejoin", rejoin, methods=["POST"]),
    Route("/v1/hub/heartbeat", heartbeat, methods=["POST"]),
]
