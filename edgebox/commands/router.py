"""`edgebox router`: one OpenAI-compatible endpoint in front of the fleet's nodes and clouds."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

err = Console(stderr=True)
ROUTER_PORT = 8090  # its own default, so a router and a node on one box do not collide


def router(
    node: Annotated[
        list[str] | None,
        typer.Option("--node", help="A node's base URL (repeatable), e.g. http://10.0.0.5:8080."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="Router TOML file (nodes, cloud upstreams, weights, split settings)."
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(help="Port to listen on (nodes take 8080, the router 8090).")
    ] = ROUTER_PORT,
    disagg: Annotated[
        str | None,
        typer.Option(help="Prefill/decode split: auto, off or always (overrides the config)."),
    ] = None,
    mdns: Annotated[
        bool, typer.Option("--mdns/--no-mdns", help="Add nodes that advertise their API on mDNS.")
    ] = True,
    hub: Annotated[
        bool | None,
        typer.Option(
            "--hub/--no-hub",
            help="Add the hub's nodes (at their mDNS address, else the address the hub saw "
            "their heartbeats from). Default: on when `edgebox login` stored a login.",
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="EDGEBOX_API_KEY",
            help="Require this bearer key from clients (besides \\[\\[keys]] in the config).",
        ),
    ] = None,
    node_key: Annotated[
        str | None,
        typer.Option(
            envvar="EDGEBOX_FLEET_KEY",
            help="The key the router sends to trusted nodes (their --fleet-key or --api-key); "
            "clients' keys are never passed on.",
            show_default=False,
        ),
    ] = None,
    trust_node: Annotated[
        list[str] | None,
        typer.Option(
            "--trust-node",
            metavar="SHA256:...",
            help="A node key fingerprint to trust when found on mDNS (repeatable; a node shows "
            "its own at GET /edgebox/identity).",
        ),
    ] = None,
    trust_lan: Annotated[
        bool,
        typer.Option(
            help="Also route to mDNS nodes that are neither pinned nor known to the hub (never "
            "with a key): for a LAN you trust.",
        ),
    ] = False,
) -> None:
    """One OpenAI endpoint for many nodes: placement, failover, cloud burst, split prefill."""
    import uvicorn

    from edgebox.fleet.directory import SyncError, load_login
    from edgebox.router.app import create_app, new_client
    from edgebox.router.cloud import SpendLedger
    from edgebox.router.config import (
        ConfigError,
        configured_nodes,
        edgebox_home,
        load_config,
        with_trust,
    )
    from edgebox.router.nodes import NodeAddress, NodeSource, StaticNodes, node_name, normalise_url
    from edgebox.router.service import Router
    from edgebox.router.sources import HubNodes, MdnsNodes

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    if disagg is not None:
        if disagg not in ("auto", "off", "always"):
            err.print(f"[red]error:[/red] --disagg must be auto, off or always, not {disagg!r}")
            raise typer.Exit(1)
        cfg = cfg.model_copy(update={"disagg": cfg.disagg.model_copy(update={"mode": disagg})})
    try:
        cfg = with_trust(cfg, trust_node or [], trust_lan)
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    entries = configured_nodes(cfg) + [
        NodeAddress(node_name(u), normalise_url(u)) for u in node or []
    ]
    sources: list[NodeSource] = [StaticNodes(entries)]
    lan = MdnsNodes(pins=cfg.trusted_node_keys) if mdns else None
    try:
        login = load_login() if hub is not False else None
    except SyncError as exc:
        err.print(f"[yellow]warning:[/yellow] {exc}; the hub's nodes are left out")
        login = None
    if hub and login is None:
        err.print("[red]error:[/red] --hub needs a login: run `edgebox login ...` first")
        raise typer.Exit(1)
    sources += [HubNodes(login, lan)] if login else []
    sources += [lan] if lan else []  # after the hub: a hub node's name and address win
    if len(sources) == 1 and not entries and not cfg.cloud:
        err.print(
            "[red]error:[/red] no nodes: pass --node URL, list [[nodes]] in --config, "
            "or leave mDNS on"
        )
        raise typer.Exit(1)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    ledger = SpendLedger(edgebox_home() / "router_spend.json", cfg.max_usd_per_day)
    service = Router(cfg, sources, new_client(), ledger, node_api_key=node_key or None)
    found = f"{len(entries)} static nodes" + (", mDNS" if lan else "") + (", hub" if login else "")
    err.print(f"edgebox router on http://{host}:{port}/v1 ({found})", highlight=False)
    uvicorn.run(
        create_app(service, api_key=api_key), host=host, port=port, log_level="warning",
        access_log=False, timeout_graceful_shutdown=5,
    )  # fmt: skip


def register(app: typer.Typer) -> None:
    app.command()(router)
