"""One way to build a router, for both `edgebox router` and `edgebox serve --fleet`.

The two differ only in their inputs: `edgebox router` reads the hub's nodes with a user's
login and has no node of its own; `serve --fleet` puts its own node first, reads the hub's
other nodes from its heartbeat answers, and leaves its own mDNS advert out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from edgebox.fleet.logins import Login
    from edgebox.router.config import RouterConfig
    from edgebox.router.nodes import NodeAddress, NodeSource
    from edgebox.router.service import Router
    from edgebox.router.sources import PeerRecords


@dataclass(frozen=True)
class RouterSpec:
    """What a router is built from."""

    config: RouterConfig
    nodes: tuple[str, ...] = ()  # node URLs given on the command line
    mdns: bool = True  # add nodes that advertise their API on mDNS
    api_key: str | None = None  # what clients must send (besides the config's [[keys]])
    node_key: str | None = None  # what the router sends to trusted nodes
    local: NodeSource | None = None  # `serve --fleet`: this node, first
    own_id: str | None = None  # `serve --fleet`: this node's id, its own advert left out
    hub_login: Login | None = None  # `edgebox router`: the hub's nodes, read with a login
    hub_peers: PeerRecords | None = None  # `serve --fleet`: the hub's nodes, from heartbeats
    node_pull_key: str | None = None  # what the router sends to nodes' /admin/models/pull


def static_nodes(spec: RouterSpec) -> list[NodeAddress]:
    """The config's [[nodes]], then the URLs given on the command line."""
    from edgebox.router.config import configured_nodes
    from edgebox.router.nodes import NodeAddress, node_name, normalise_url

    given = [NodeAddress(node_name(u), normalise_url(u)) for u in spec.nodes]
    return configured_nodes(spec.config) + given


def build_router(spec: RouterSpec) -> tuple[Router, ASGIApp]:
    """The router and its ASGI app (whose lifespan starts and stops the router; a node that
    runs the app without lifespan calls `router.app.start_router`/`stop_router` itself)."""
    from edgebox.router.app import create_app, new_client
    from edgebox.router.cloud import SpendLedger
    from edgebox.router.config import edgebox_home
    from edgebox.router.nodes import StaticNodes
    from edgebox.router.service import Router
    from edgebox.router.sources import HubNodes, HubPeers, MdnsNodes

    config = spec.config
    sources: list[NodeSource] = [spec.local] if spec.local is not None else []
    sources.append(StaticNodes(static_nodes(spec)))
    lan = MdnsNodes(exclude_id=spec.own_id, pins=config.trusted_node_keys) if spec.mdns else None
    if spec.hub_login is not None:
        sources.append(HubNodes(spec.hub_login, lan))
    if spec.hub_peers is not None:
        sources.append(HubPeers(spec.hub_peers, lan))
    if lan is not None:  # after the hub: a hub node's name and address win over an advert's
        sources.append(lan)
    ledger = SpendLedger(edgebox_home() / "router_spend.json", config.max_usd_per_day)
    router = Router(
        config,
        sources,
        new_client(),
        ledger,
        node_api_key=spec.node_key,
        node_pull_key=spec.node_pull_key,
    )
    return router, create_app(router, api_key=spec.api_key)


def fleet_spec(
    config: RouterConfig | None,
    *,
    peers: tuple[str, ...],
    mdns: bool,
    api_key: str | None,
    fleet_key: str | None,
    trust_lan: bool,
    local: NodeSource,
    own_id: str | None,
    hub_peers: PeerRecords | None,
) -> RouterSpec:
    """The router `serve --fleet` puts in front of its node: this node, the `peers` URLs,
    `config`'s [[nodes]] and [[cloud]] upstreams, the hub's other nodes when `hub_peers` (this
    node's heartbeat) is given, and mDNS peers when on (they get requests only once they
    prove a key the hub or `config.trusted_node_keys` names, or with `trust_lan`).

    Clients reach the router with `api_key`; the router reaches trusted peers with
    `fleet_key` (their `--fleet-key`), else `config.node_api_key_env`'s key, else `api_key`
    (peers that share this node's key, as before fleet keys existed)."""
    from edgebox.router.config import RouterConfig

    config = config or RouterConfig()
    if "poll_interval_s" not in config.model_fields_set:  # a node's peers are near: poll often
        config = config.model_copy(update={"poll_interval_s": 1.0})
    if trust_lan:
        config = config.model_copy(update={"trust_mdns": True})
    node_key = fleet_key or (None if config.node_api_key_env else api_key)
    return RouterSpec(
        config,
        nodes=peers,
        mdns=mdns,
        api_key=api_key,
        node_key=node_key,
        local=local,
        own_id=own_id,
        hub_peers=hub_peers,
    )
