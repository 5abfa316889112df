"""`edgebox router`: one OpenAI-compatible endpoint in front of the fleet's nodes and clouds."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

err = Console(stderr=True)


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
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    disagg: Annotated[
        str | None,
        typer.Option(help="Prefill/decode split: auto, off or always (overrides the config)."),
    ] = None,
) -> None:
    """One OpenAI endpoint for many nodes: placement, failover, cloud burst, split prefill."""
    import uvicorn

    from edgebox.router.app import create_app, new_client
    from edgebox.router.cloud import SpendLedger
    from edgebox.router.config import ConfigError, edgebox_home, load_config
    from edgebox.router.nodes import NodeAddress, StaticNodes, node_name, normalise_url
    from edgebox.router.service import Router

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
    entries = [
        NodeAddress(n.name or node_name(n.url), normalise_url(n.url), n.prefill_tokens_per_s)
        for n in cfg.nodes
    ]
    entries += [NodeAddress(node_name(u), normalise_url(u)) for u in node or []]
    if not entries and not cfg.cloud:
        err.print("[red]error:[/red] no nodes: pass --node URL or list [[nodes]] in --config")
        raise typer.Exit(1)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    ledger = SpendLedger(edgebox_home() / "router_spend.json", cfg.max_usd_per_day)
    service = Router(cfg, [StaticNodes(entries)], new_client(), ledger)
    err.print(f"edgebox router on http://{host}:{port}/v1 ({len(entries)} nodes)", highlight=False)
    uvicorn.run(
        create_app(service), host=host, port=port, log_level="warning", access_log=False,
        timeout_graceful_shutdown=5,
    )  # fmt: skip


def register(app: typer.Typer) -> None:
    app.command()(router)
