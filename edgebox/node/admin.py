"""Admin routes an operator (or `edgebox top`) uses on a running node: drain and undrain.

A draining node finishes what it holds but refuses new generation requests with 503 and
`Retry-After`, so a router or client goes elsewhere; `/health` reports `"status": "draining"`.
The routes sit under `/admin/`, which the API key guards like `/v1/` when one is configured.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from edgebox.api.errors import APIError
from edgebox.node.state import NodeState

DRAIN_RETRY_AFTER_S = 30


def _state(request: Request) -> NodeState:
    state: NodeState = request.app.state.node
    return state


async def drain(request: Request) -> Response:
    state = _state(request)
    state.draining = True
    return JSONResponse({"status": "draining", **state.load()})


async def undrain(request: Request) -> Response:
    state = _state(request)
    state.draining = False
    return JSONResponse({"status": "ok", **state.load()})


def refuse_if_draining(state: NodeState) -> None:
    """Called by the generation routes before they take a request."""
    if state.draining:
        raise APIError(
            503,
            "this node is draining and takes no new requests; send it to another node",
            type="server_error",
            code="node_draining",
            headers={"Retry-After": str(DRAIN_RETRY_AFTER_S)},
        )
