"""`edgebox router`: one OpenAI-compatible endpoint in front of the fleet's nodes and clouds."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from edgebox.commands._hubopts import fail

if TYPE_CHECKING:
    from edgebox.agent.router import RouterSpec
    from edgebox.fleet.logins import Login
    from edgebox.router.config import RouterConfig

err = Console(stderr=True)
ROUTER_PORT = 8090  # its own default, so a router and a node on one box do not collide

Node = Annotated[
    list[str] | None,
    typer.Option("--node", help="A node's base URL (repeatable), e.g. http://10.0.0.5:8080."),
]
ConfigFile = Annotated[
    Path | None,
    typer.Option(
        "--config", help="Router TOML file (nodes, cloud upstreams, weights, split settings)."
    ),
]
Host = Annotated[str, typer.Option(help="Address to listen on.")]
Port = Annotated[int, typer.Option(help="Port to listen on (nodes take 8080, the router 8090).")]
Disagg = Annotated[
    str | None,
    typer.Option(help="Prefill/decode split: auto, off or always (overrides the config)."),
]
Mdns = Annotated[
    bool, typer.Option("--mdns/--no-mdns", help="Add nodes that advertise their API on mDNS.")
]
Hub = Annotated[
    bool | None,
    typer.Option(
        "--hub/--no-hub",
        help="Add the hub's nodes (at their mDNS address, else the address the hub saw "
        "their heartbeats from). Default: on when `edgebox login` stored a login.",
    ),
]
ApiKey = Annotated[
    str | None,
    typer.Option(
        envvar="EDGEBOX_API_KEY",
        help="Require this bearer key from clients (besides \\[\\[keys]] in the config).",
    ),
]
NodeKey = Annotated[
    str | None,
    typer.Option(
        envvar="EDGEBOX_FLEET_KEY",
        help="The key the router sends to trusted nodes (their --fleet-key or --api-key); "
        "clients' keys are never passed on.",
        show_default=False,
    ),
]
TrustNode = Annotated[
    list[str] | None,
    typer.Option(
        "--trust-node",
        metavar="SHA256:...",
        help="A node key fingerprint to trust when found on mDNS (repeatable; a node shows "
        "its own at GET /edgebox/identity).",
    ),
]
NodePullKey = Annotated[
    str | None,
    typer.Option(
        envvar="EDGEBOX_NODE_PULL_KEY",
        help="The key the router sends to nodes' /admin/models/pull to bring a model there "
        "(their --pull-key; their --admin-key works too). Default: the --node-key.",
        show_default=False,
    ),
]
InternetPull = Annotated[
    bool,
    typer.Option(
        "--allow-internet-pull",
        help="Let a node download a model no node has when a request names it as "
        "ORG/REPO:FILE.gguf (off: such a request is a 404).",
    ),
]
TrustLan = Annotated[
    bool,
    typer.Option(
        help="Also route to mDNS nodes that are neither pinned nor known to the hub (never "
        "with a key): for a LAN you trust.",
    ),
]


def router(
    node: Node = None,
    config: ConfigFile = None,
    host: Host = "127.0.0.1",
    port: Port = ROUTER_PORT,
    disagg: Disagg = None,
    mdns: Mdns = True,
    hub: Hub = None,
    api_key: ApiKey = None,
    node_key: NodeKey = None,
    trust_node: TrustNode = None,
    trust_lan: TrustLan = False,
    node_pull_key: NodePullKey = None,
    allow_internet_pull: InternetPull = False,
) -> None:
    """One OpenAI endpoint for many nodes: placement, failover, cloud burst, split prefill."""
    import uvicorn

    from edgebox.agent.router import RouterSpec, build_router, static_nodes

    cfg = _router_config(config, disagg, trust_node or [], trust_lan)
    if allow_internet_pull:
        cfg = cfg.model_copy(update={"loading": cfg.loading.model_copy(update={"internet": True})})
    login = _hub_login(hub)
    spec = RouterSpec(
        cfg,
        nodes=tuple(node or ()),
        mdns=mdns,
        api_key=api_key,
        node_key=node_key or None,
        hub_login=login,
        node_pull_key=node_pull_key or None,
    )
    static = len(static_nodes(spec))
    if not static and not mdns and login is None and not cfg.cloud:
        raise fail("no nodes: pass --node URL, list \\[\\[nodes]] in --config, or leave mDNS on")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _, app = build_router(spec)
    err.print(
        f"edgebox router on http://{host}:{port}/v1 ({_found(spec, static)})", highlight=False
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )


def _router_config(
    path: Path | None, disagg: str | None, pins: list[str], trust_lan: bool
) -> RouterConfig:
    """--config, with --disagg, --trust-node and --trust-lan over it."""
    from edgebox.router.config import ConfigError, load_config, with_trust

    try:
        cfg = load_config(path)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    if disagg is not None:
        if disagg not in ("auto", "off", "always"):
            raise fail(f"--disagg must be auto, off or always, not {disagg!r}")
        cfg = cfg.model_copy(update={"disagg": cfg.disagg.model_copy(update={"mode": disagg})})
    try:
        return with_trust(cfg, pins, trust_lan)
    except ConfigError as exc:
        raise fail(str(exc)) from None


def _hub_login(hub: bool | None) -> Login | None:
    """The stored hub login, unless --no-hub; --hub without one is an error."""
    from edgebox.fleet.directory import SyncError, load_login

    try:
        login = load_login() if hub is not False else None
    except SyncError as exc:
        err.print(f"[yellow]warning:[/yellow] {exc}; the hub's nodes are left out")
        login = None
    if hub and login is None:
        raise fail("--hub needs a login: run `edgebox login ...` first")
    return login


def _found(spec: RouterSpec, static: int) -> str:
    lan = ", mDNS" if spec.mdns else ""
    return f"{static} static nodes{lan}" + (", hub" if spec.hub_login else "")


def register(app: typer.Typer) -> None:
    app.command()(router)
