"""`edgebox serve --fleet`: the router inside the node process, on the node's own port.

`FleetDispatch` sends a client's POST to /v1/chat/completions, /v1/completions or
/v1/embeddings, and GET /v1/models[/ID], through the router (this node is one of its nodes), so
the port lists and serves every fleet model (and cloud model, with `--router-config`), not
only its own; everything else, and every request the router itself forwards (marked with
`x-edgebox-routed`), goes to the node's app. The mark is what keeps a request from bouncing
between `--fleet` nodes. The router polls nodes' /health, which stays the node's own.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from edgebox.router.app import create_app, new_client
from edgebox.router.cloud import SpendLedger
from edgebox.router.config import RouterConfig, configured_nodes, edgebox_home
from edgebox.router.nodes import NodeAddress, NodeSource, StaticNodes, node_name, normalise_url
from edgebox.router.service import ROUTED_HEADER, Router
from edgebox.router.sources import HubPeers, MdnsNodes, PeerRecords

_ROUTED_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


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


def fleet_router(
    peers: Iterable[str],
    *,
    mdns: bool,
    api_key: str | None,
    own_id: str | None = None,
    config: RouterConfig | None = None,
    hub_peers: PeerRecords | None = None,
    fleet_key: str | None = None,
    trust_lan: bool = False,
) -> tuple[Router, LocalNode, ASGIApp]:
    """The router for `serve --fleet`: this node, the `peers` URLs, `config`'s [[nodes]] and
    [[cloud]] upstreams, the hub's other nodes when `hub_peers` (this node's heartbeat) is
    given, and mDNS peers when on (this node's own advert left out; they get requests only
    once they prove a key the hub or `config.trusted_node_keys` names, or with `trust_lan`).

    Clients reach the router with `api_key`; the router reaches trusted peers with
    `fleet_key` (their `--fleet-key`), else `config.node_api_key_env`'s key, else `api_key`
    (peers that share this node's key, as before fleet keys existed)."""
    config = config or RouterConfig()
    if "poll_interval_s" not in config.model_fields_set:  # a node's peers are near: poll often
        config = config.model_copy(update={"poll_interval_s": 1.0})
    if trust_lan:
        config = config.model_copy(update={"trust_mdns": True})
    local = LocalNode()
    entries = configured_nodes(config)
    entries += [NodeAddress(node_name(u), normalise_url(u)) for u in peers]
    sources: list[NodeSource] = [local, StaticNodes(entries)]
    lan = MdnsNodes(exclude_id=own_id, pins=config.trusted_node_keys) if mdns else None
    if hub_peers is not None:  # joined to a hub: its other nodes, from the heartbeat answers
        sources.append(HubPeers(hub_peers, lan))
    if lan is not None:  # after the hub: a hub node's name and address win over an advert's
        sources.append(lan)
    ledger = SpendLedger(edgebox_home() / "router_spend.json", config.max_usd_per_day)
    node_key = fleet_key or (None if config.node_api_key_env else api_key)
    router = Router(config, sources, new_client(), ledger, node_api_key=node_key)
    return router, local, create_app(router, api_key=api_key)
