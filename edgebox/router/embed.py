"""`edgebox serve --fleet`: the router inside the node process, on the node's own port.

`FleetDispatch` sends a client's POST to /v1/chat/completions, /v1/completions,
/v1/embeddings, /v1/responses or /v1/messages[/count_tokens], GET and DELETE of stored
responses, and GET /v1/models[/ID], through the router (this node is one of its nodes), so
the port lists and serves every fleet model (and cloud model, with `--router-config`), not
only its own; everything else, and every request the router itself forwards (marked with
`x-edgebox-routed`), goes to the node's app. The mark is what keeps a request from bouncing
between `--fleet` nodes. The router polls nodes' /health, which stays the node's own.

The router itself is built like `edgebox router`'s (`edgebox.agent.router.build_router`).
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from edgebox.router.nodes import NodeAddress
from edgebox.router.service import ROUTED_HEADER

_ROUTED_PATHS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    # the agent APIs: translated at the router, their conversations kept in its store
    "/v1/responses",
    "/v1/messages",
    "/v1/messages/count_tokens",
)


class LocalNode:
    """This node, once its port is bound."""

    def __init__(self) -> None:
        self.url: str | None = None

    def addresses(self) -> Iterable[NodeAddress]:
        return [NodeAddress("local", self.url)] if self.url else []


def _routed(scope: Scope) -> bool:
    if scope["type"] != "http" or any(n == ROUTED_HEADER.encode() for n, _ in scope["headers"]):
        return False
    path = scope["path"]
    if scope["method"] == "POST":
        return path in _ROUTED_PATHS
    if path.startswith("/v1/responses/"):  # stored responses: the router's store
        return scope["method"] in ("GET", "DELETE")
    return scope["method"] == "GET" and (path == "/v1/models" or path.startswith("/v1/models/"))


class FleetDispatch:
    def __init__(self, node_app: ASGIApp, router_app: ASGIApp) -> None:
        self.node_app = node_app
        self.router_app = router_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if _routed(scope):
            await self.router_app(scope, receive, send)
        else:
            await self.node_app(scope, receive, send)
