"""The registry as admins and users read it: the node list (with the relay's address), one
node, revoking a node, the audit events."""

from __future__ import annotations

import asyncio
import logging
import re

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edgebox.fleet.hub.auth import caller, requires
from edgebox.fleet.hub.context import hub_context
from edgebox.fleet.hub.web import APIError

log = logging.getLogger("edgebox.hub")


def _no_node(key: str) -> APIError:
    return APIError(404, f"no node {key!r}", param="node", code="node_not_found")


@requires("reader")
async def list_nodes(request: Request) -> Response:
    hub = hub_context(request)
    data = await asyncio.to_thread(hub.store.nodes)
    return JSONResponse({"object": "list", "data": data, "relay": hub.relay_info()})


@requires("admin")
async def get_node(request: Request) -> Response:
    key = request.path_params["node"]
    node = await asyncio.to_thread(hub_context(request).store.node, key)
    if node is None:
        raise _no_node(key)
    return JSONResponse(node)


@requires("admin")
async def delete_node(request: Request) -> Response:
    """Revoke a node: its secret stops working, its relay key line goes, its tunnel ends."""
    hub = hub_context(request)
    key = request.path_params["node"]
    node = await asyncio.to_thread(hub.store.revoke_node, key, hub.now())
    if node is None:
        raise _no_node(key)
    log.info("node %s revoked", node["id"])
    hub.blobs.pop(node["id"], None)
    await hub.sync_relay()
    await hub.end_sessions([node["tunnel_port"]])  # live tunnels end now, not at next login
    return JSONResponse(node)


@requires("admin")
async def events(request: Request) -> Response:
    data = await asyncio.to_thread(hub_context(request).store.events)
    return JSONResponse({"object": "list", "data": data})


@requires("reader")
async def blob_holders(request: Request) -> Response:
    """The online nodes that hold a model blob (as their heartbeats said), for pulls and
    `edgebox deploy` to fetch from peers before the internet."""
    digest = request.path_params["digest"]
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise APIError(400, "a blob digest is 64 lowercase hex characters", param="sha256")
    nodes = await asyncio.to_thread(hub_context(request).blob_holders, digest)
    return JSONResponse({"sha256": digest, "nodes": nodes})


@requires("reader")
async def blob_grants(request: Request) -> Response:
    """The online nodes with an API address, each with a grant to read its model blobs (a
    logged-in laptop's `edgebox pull` fetches from them before the internet)."""
    hub = hub_context(request)
    who = caller(request)
    subject = f"user:{who.user}" if who.user else "admin"
    nodes = await asyncio.to_thread(hub.store.nodes)
    data = [
        {k: n.get(k) for k in ("id", "name", "api_url")}
        | {"blob_grant": hub.config.blob_grant(n["id"], subject)}
        for n in nodes
        if n.get("status") == "online" and n.get("api_url")
    ]
    return JSONResponse({"object": "list", "data": data})


ROUTES = [
    Route("/v1/hub/nodes", list_nodes),
    Route("/v1/hub/nodes/{node}", get_node),
    Route("/v1/hub/nodes/{node}", delete_node, methods=["DELETE"]),
    Route("/v1/hub/events", events),
    Route("/v1/hub/blobs/{digest}", blob_holders),
    Route("/v1/hub/blob-grants", blob_grants),
]
