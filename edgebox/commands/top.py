"""`edgebox top`: the live fleet monitor, or one JSON snapshot for scripts (`--once --json`)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from edgebox.fleet.identity import edgebox_home

LOCAL_NODE = "http://127.0.0.1:8080"  # `edgebox serve`'s default address


def _entry_url(entry: Any) -> str | None:
    if isinstance(entry, str):
        return entry
    if not isinstance(entry, dict):
        return None
    for key in ("api_url", "url"):
        if isinstance(entry.get(key), str):
            return str(entry[key])
    host = entry.get("address") or entry.get("host")
    if isinstance(host, str) and isinstance(entry.get("port"), int):
        return f"http://{f'[{host}]' if ':' in host else host}:{entry['port']}"
    return None


def known_node_urls(path: Path) -> list[str]:
    """Node URLs from nodes.json (written by `edgebox nodes add`); a missing/bad file adds none.

    Accepts a list, `{"nodes": [...]}` or `{name: entry}`; entries are URLs or objects with
    `api_url`/`url` or `address`/`host` + `port`.
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if isinstance(data, dict):
        data = data.get("nodes", data)
    entries = list(data.values()) if isinstance(data, dict) else data
    if not isinstance(entries, list):
        return []
    return [url for e in entries if (url := _entry_url(e))]


def default_node_urls(guess: bool = True) -> list[str]:
    """The nodes running on this box (their runtime records, any port; else, with `guess`, the
    default address), then those in nodes.json."""
    from edgebox.fleet.local_nodes import local_nodes

    here = [n.url for n in local_nodes()] or ([LOCAL_NODE] if guess else [])
    urls = [*here, *known_node_urls(edgebox_home() / "nodes.json")]
    return list(dict.fromkeys(u.rstrip("/") for u in urls))  # in order, without repeats


NodeUrl = Annotated[
    list[str] | None,
    typer.Option(
        "--node",
        metavar="URL",
        help="Node URL to poll (repeatable). Default: the nodes running on this box "
        "(any port) plus $EDGEBOX_HOME/nodes.json.",
    ),
]
HubUrl = Annotated[
    str | None,
    typer.Option(
        help="Hub URL: show the nodes it knows. Default: the hub this box runs, else "
        "the one `edgebox login` stored (when no --node is given)."
    ),
]
HubToken = Annotated[
    str | None,
    typer.Option(
        envvar="EDGEBOX_HUB_TOKEN",
        help="Hub key (bearer): the admin key, or a user's; default: this box's hub's "
        "admin key, else the stored login.",
        show_default=False,
    ),
]
HubFingerprint = Annotated[
    str | None,
    typer.Option(
        help="Pin the hub's certificate: sha256:... (as in the join token; default: "
        "from this box's hub or the stored login)."
    ),
]
RouterUrl = Annotated[
    str | None,
    typer.Option(metavar="URL", help="Router URL: a pane of requests by route and spend."),
]
AdminKey = Annotated[
    str | None,
    typer.Option(
        "--admin-key",
        "--api-key",
        envvar=["EDGEBOX_ADMIN_KEY", "EDGEBOX_API_KEY"],
        help="Nodes' admin key (their API key where they have none), sent only to "
        "their /admin routes (d: drain, l/u: load/unload).",
        show_default=False,
    ),
]
Mdns = Annotated[
    bool,
    typer.Option(help="Also poll nodes found over mDNS on the LAN (when no --node is given)."),
]
Interval = Annotated[float, typer.Option(min=0.2, help="Seconds between polls.")]
Once = Annotated[bool, typer.Option(help="Take one snapshot, print it and exit.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def top(
    node: NodeUrl = None,
    hub: HubUrl = None,
    hub_token: HubToken = None,
    hub_fingerprint: HubFingerprint = None,
    router: RouterUrl = None,
    api_key: AdminKey = None,
    mdns: Mdns = True,
    interval: Interval = 2.0,
    once: Once = False,
    as_json: AsJson = False,
) -> None:
    """Live fleet monitor: every node's load, memory, models and tokens/s (q quits)."""
    from edgebox.tui.source import FleetSource, MergedSource

    access = _hub_access(hub, hub_token, hub_fingerprint, auto=not node)
    sources: list[FleetSource] = []
    if node or not hub:
        ttl = 3 * interval  # as the hub: offline after 3 missed beats
        urls = node or default_node_urls(guess=access is None)
        sources += [_direct_source(urls, mdns=mdns and not node, offline_after=ttl)]
    if access is not None:
        sources.append(_hub_source(access))
    source: FleetSource = sources[0] if len(sources) == 1 else MergedSource(sources)
    if once or as_json:
        typer.echo(_snapshot_output(source, interval, as_json))
        return
    from edgebox.tui.app import FleetApp
    from edgebox.tui.router import RouterSource

    pane = RouterSource(router) if router else None
    FleetApp(source, interval=interval, api_key=api_key, router=pane).run()


def _hub_access(hub: str | None, token: str | None, fingerprint: str | None, *, auto: bool) -> Any:
    """The hub to show: --hub URL, else (`auto`) the hub this box runs or the stored login."""
    from edgebox.fleet.hub_access import HubAccessError, find_hub

    if hub is None and not auto:
        return None
    try:
        return find_hub(hub, token=token, fingerprint=fingerprint)
    except HubAccessError as exc:
        if hub is None:  # not asked for: show the rest of the fleet
            typer.echo(f"warning: {exc}; the hub's nodes are left out", err=True)
            return None
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def _direct_source(urls: list[str], *, mdns: bool, offline_after: float) -> Any:
    from edgebox.tui.source import DirectSource

    if not mdns:
        return DirectSource(urls, offline_after=offline_after)
    from edgebox.tui.mdns_source import MdnsSource

    return MdnsSource(urls, offline_after=offline_after)


def _hub_source(access: Any) -> Any:
    from edgebox.fleet.hub.client import pinned_context
    from edgebox.tui.source import HubSource

    verify = pinned_context(access.fingerprint) if access.fingerprint else True
    return HubSource(access.url, access.token, verify=verify)


def _snapshot_output(source: Any, interval: float, as_json: bool) -> str:
    """Two polls `interval` apart, so tokens/s is a real rate rather than empty."""

    async def take() -> Any:
        try:
            await source.poll()
            await asyncio.sleep(min(interval, 1.0))
            return await source.poll()
        finally:
            await source.aclose()

    snap = asyncio.run(take())
    if as_json:
        return json.dumps(snap.to_json(), indent=2)
    from edgebox.tui.view import COLUMNS, row_cells

    lines = ["\t".join(COLUMNS)]
    lines += ["\t".join(c.plain for c in row_cells(n)) for n in snap.nodes]
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    app.command()(top)
