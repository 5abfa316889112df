"""`edgebox nodes`: the nodes this box can see on the LAN (mDNS), those added by hand, and
those running on this box (their runtime records, whatever their port)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

out = Console()
err = Console(stderr=True)

InterfaceOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--interface",
        "-i",
        help="Network interface for mDNS (repeatable; default: LAN interfaces, never docker/VPN "
        "ones; or set EDGEBOX_MDNS_INTERFACES).",
        show_default=False,
    ),
]


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


def _interfaces(names: list[str] | None) -> Any:
    from edgebox.fleet.interfaces import NoInterfaceError, lan_interfaces

    try:
        return lan_interfaces(names or None)
    except NoInterfaceError as exc:
        raise _fail(str(exc)) from None


def _rows(wait: float, interfaces: list[str] | None) -> list[dict[str, Any]]:
    """Discovered and added nodes, one row per node id (discovery first)."""
    from edgebox.fleet.known import KnownNodes, KnownNodesError
    from edgebox.fleet.mdns import discover

    try:
        known = KnownNodes().all()
    except KnownNodesError as exc:
        raise _fail(str(exc)) from None
    found = asyncio.run(discover(wait, _interfaces(interfaces))) if wait > 0 else []
    rows: dict[str, dict[str, Any]] = {}
    for node in found:
        rows[node.node_id] = {**node.to_json(), "sources": ["mdns"]}
    for k in known:
        row = rows.setdefault(
            k.node_id, _row(k.node_id, k.name, k.host, k.port, k.host_key_fingerprint)
        )
        row["sources"].append("manual")
        if row["ssh_host_key_fingerprint"] != k.host_key_fingerprint:
            # mDNS is a hint; a different key than the one pinned at `add` time is worth a flag.
            row["fingerprint_mismatch"] = True
    _add_local(rows)
    return list(rows.values())


def _row(
    node_id: str, name: str, host: str, port: int | None = None, fingerprint: str | None = None
) -> dict[str, Any]:
    """A node mDNS did not report, in the shape of a discovered one."""
    return {
        "id": node_id,
        "name": name,
        "addresses": [host],
        "api_port": port,
        "ssh_host_key_fingerprint": fingerprint,
        "accelerator": None,
        "model_digest": None,
        "protocol_version": None,
        "txt": {},
        "sources": [],
    }


def _add_local(rows: dict[str, dict[str, Any]]) -> None:
    """Nodes running on this box (their runtime records): reachable here at `local_url` even
    when their API listens on loopback and mDNS therefore carries no port."""
    from edgebox.fleet.local_nodes import local_nodes

    for local in local_nodes():
        row = rows.setdefault(local.node_id, _row(local.node_id, local.name, local.host))
        row["local_url"] = local.url
        row["sources"].append("local")


def _api_cell(row: dict[str, Any]) -> str:
    if row["api_port"]:
        return str(row["api_port"])
    local = row.get("local_url")
    return f"{local.rsplit(':', 1)[1]} (this box only)" if local else "-"


def nodes(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    wait: Annotated[
        float, typer.Option(help="Seconds to listen for mDNS advertisements (0: added only).")
    ] = 2.0,
    interface: InterfaceOpt = None,
) -> None:
    """List edgebox nodes on the LAN (this box included, on any port) and nodes added with
    `nodes add`."""
    if ctx.invoked_subcommand is not None:
        return
    rows = _rows(wait, interface)
    if as_json:
        out.print_json(data=rows)
        return
    if not rows:
        err.print(f"no nodes found in {wait:g} s (try --wait 5, or `edgebox nodes add HOST`)")
        return
    table = Table("name", "id", "address", "api", "accelerator", "source", "host key")
    for r in rows:
        mismatch = " (MISMATCH)" if r.get("fingerprint_mismatch") else ""
        key = (r["ssh_host_key_fingerprint"] or "-") + mismatch
        where = ", ".join(r["addresses"])
        accel, sources = r["accelerator"] or "-", "+".join(r["sources"])
        table.add_row(r["name"], r["id"][:8], where, _api_cell(r), accel, sources, key)
    out.print(table)


def watch(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    interface: InterfaceOpt = None,
) -> None:
    """Print nodes as they appear, change and leave the LAN, until Ctrl-C."""
    import json

    from edgebox.fleet.advert import NodeEvent
    from edgebox.fleet.mdns import NodeBrowser

    def show(event: NodeEvent) -> None:
        node = event.node
        if as_json:
            print(json.dumps({"event": event.kind, "node": node.to_json()}), flush=True)
        else:
            where = ", ".join(node.addresses)
            out.print(f"{event.kind:8} {node.name} ({node.node_id[:8]}) {where}", highlight=False)

    browser = NodeBrowser(_interfaces(interface), on_event=show)

    async def run() -> None:
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
        await browser.start()
        try:
            await asyncio.Event().wait()
        finally:
            await browser.stop()

    with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
        asyncio.run(run())


def add(
    address: Annotated[str, typer.Argument(help="HOST or HOST:PORT of the node's API (8080).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the node.")] = 5.0,
) -> None:
    """Add a node mDNS cannot see: asks http://HOST:PORT/health for its identity and stores it."""
    import httpx

    from edgebox.fleet.known import KnownNodes, KnownNodesError, known_node_from_health
    from edgebox.fleet.known import parse_host_port as parse

    try:
        host, port = parse(address)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    try:
        response = httpx.get(url + "/health", timeout=timeout)
        response.raise_for_status()
        node = known_node_from_health(host, port, response.json())
        KnownNodes().add(node)
    except (httpx.HTTPError, ValueError) as exc:
        raise _fail(f"could not read {url}/health: {exc}") from None
    except KnownNodesError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        out.print_json(data={"id": node.node_id, "name": node.name, "host": host, "port": port})
    else:
        out.print(f"added {node.name} ({node.node_id[:8]}) at {url}", highlight=False)


def rm(
    name_or_id: Annotated[str, typer.Argument(help="The node's name, id or id prefix.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Forget a node added with `edgebox nodes add`."""
    from edgebox.fleet.known import KnownNodes, KnownNodesError

    try:
        node = KnownNodes().remove(name_or_id)
    except KnownNodesError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        out.print_json(data={"id": node.node_id, "name": node.name, "removed": True})
        return
    out.print(f"removed {node.name} ({node.node_id[:8]})", highlight=False)


def advertise(
    port: Annotated[int, typer.Option(help="API port to advertise.")] = 8080,
    name: Annotated[str | None, typer.Option(help="Rename this node (stored).")] = None,
    model: Annotated[list[str] | None, typer.Option(help="Served model name (repeatable).")] = None,
    accelerator: Annotated[str | None, typer.Option(help="Accelerator class.")] = None,
    interface: InterfaceOpt = None,
) -> None:
    """Advertise this node over mDNS, serving nothing, until Ctrl-C or SIGTERM (dev, tests)."""
    from edgebox.fleet.identity import load_identity
    from edgebox.fleet.mdns import Advertiser

    if accelerator is None:
        from edgebox.hardware import probe

        accelerator = probe(measure=False).hw_class
    identity = load_identity(name=name)
    advertiser = Advertiser(
        identity, accelerator=accelerator, models=model or [], interfaces=_interfaces(interface)
    )

    async def run() -> None:
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
        await advertiser.start(port)
        print(f"advertising {advertiser.service_name}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await advertiser.stop()  # goodbye packets: browsers drop this node at once

    with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
        asyncio.run(run())
    print("stopped", file=sys.stderr, flush=True)


def register(app: typer.Typer) -> None:
    """Add the `nodes` command group to the edgebox CLI."""
    group = typer.Typer(no_args_is_help=False)
    group.callback(invoke_without_command=True)(nodes)
    group.command()(watch)
    group.command()(add)
    group.command()(rm)
    group.command(hidden=True)(advertise)
    app.add_typer(group, name="nodes")
