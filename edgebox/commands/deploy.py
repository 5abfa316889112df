"""`edgebox deploy MODEL --to NODE[,NODE...] | --all [--load]`: put a model on nodes.

Nodes are named as `edgebox nodes` finds them (mDNS, `nodes add`, nodes running on this box),
as the hub this box is logged in to lists them (their observed API address), or by URL.
Each node's /health says its memory and models; `fleet.deploy.plan_deploy` decides
per node (refuse / loaded / load / placed / pull); then, all nodes at once, the node pulls the
model (`POST /admin/models/pull`, peers first) and loads it (`POST /admin/models/load`).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn
from rich.table import Table

from edgebox.api.health import HealthReport
from edgebox.commands._hubopts import fail
from edgebox.fleet.deploy import NodeStep, plan_deploy

out = Console()
err = Console(stderr=True)
HEALTH_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
LOAD_TIMEOUT = httpx.Timeout(600.0, connect=5.0)
PULL_POLL_S = 0.5
PULL_TIMEOUT_S = 6 * 3600.0


@dataclass
class Outcome:
    node: str
    result: str  # "loaded", "placed", "refused", "failed"
    why: str
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {**vars(self), "seconds": round(self.seconds, 2)}


def _urls_of_rows(wait: float) -> dict[str, str]:
    """name → URL of every node `edgebox nodes` sees (each local record apart)."""
    from edgebox.commands.nodes import _rows
    from edgebox.fleet.local_nodes import local_nodes

    found: dict[str, str] = {}
    for local in local_nodes():
        found.setdefault(local.url, local.name or local.url)
    for row in _rows(wait, None):
        url = row.get("local_url")
        if not url and row.get("api_port") and row.get("addresses"):
            url = f"http://{row['addresses'][0]}:{row['api_port']}"
        if url:
            found.setdefault(url, row.get("name") or url)
    named = set(found.values())
    for url, name in _hub_nodes().items():  # nodes known only through the hub
        if name not in named:
            found.setdefault(url, name)
    return found


def _hub_nodes() -> dict[str, str]:
    """URL → name of the online nodes of the hub this box runs or is logged in to (as
    `edgebox top` and routers reach them: the API address the hub observed)."""
    from edgebox.fleet.hub_access import HubAccessError, find_hub, hub_api_urls

    try:
        access = find_hub()
        return hub_api_urls(access) if access is not None else {}
    except HubAccessError as exc:
        err.print(f"[yellow]warning:[/yellow] {exc}; the hub's nodes are left out")
        return {}


def resolve_targets(to: str | None, everywhere: bool, wait: float) -> list[str]:
    """The nodes' URLs: `--to` names (URLs as given; names looked up), or every node seen."""
    if not to and not everywhere:
        raise fail("name the nodes: --to NODE[,NODE...] or --all")
    named = [t.strip() for t in (to or "").split(",") if t.strip()]
    need_lookup = everywhere or any("://" not in n for n in named)
    seen = _urls_of_rows(wait) if need_lookup else {}
    if everywhere:
        if not seen:
            raise fail(f"no nodes found in {wait:g} s (try --wait 5, or --to URL)")
        return list(seen)
    urls = []
    for name in named:
        if "://" in name:
            urls.append(name.rstrip("/"))
            continue
        matches = [u for u, n in seen.items() if n == name]
        if not matches:
            known = ", ".join(sorted(set(seen.values()))) or "none"
            raise fail(f"no node named {name!r} (seen: {known}); give its URL instead")
        urls.extend(matches)
    return urls


class NodeCalls:
    """The admin calls deploy makes to one node (bearer: the admin key)."""

    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self.client, self.url = client, url

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        r = await self.client.request(method, self.url + path, **kwargs)
        try:
            body = r.json()
        except ValueError:
            body = None
        if r.status_code >= 400:
            error = body.get("error") if isinstance(body, dict) else None
            message = error.get("message") if isinstance(error, dict) else r.text[:200]
            raise DeployError(f"HTTP {r.status_code}: {message}", r.status_code)
        return body


class DeployError(Exception):
    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


async def _health(client: httpx.AsyncClient, url: str) -> HealthReport | str:
    try:
        r = await client.get(url + "/health", timeout=HEALTH_TIMEOUT)
        r.raise_for_status()
        return HealthReport.parse(r.json())
    except (httpx.HTTPError, ValueError) as exc:
        return f"unreachable: {type(exc).__name__}"


async def _pull(
    node: NodeCalls, model: str, step: NodeStep, progress: Progress, task: TaskID
) -> str:
    """Start the node's pull and follow it; the name the node stores the model under."""
    body: dict[str, Any] = {"spec": model}
    if step.peers:
        body["peers"] = list(step.peers)
    started = await node.call("POST", "/admin/models/pull", json=body)
    job = started.get("job") or started.get("id")
    deadline = time.monotonic() + PULL_TIMEOUT_S
    state = started
    while time.monotonic() < deadline:
        status = str(state.get("status") or state.get("state") or "")
        total, done = state.get("bytes_total"), state.get("bytes_done") or 0
        progress.update(task, total=total, completed=done if isinstance(done, int) else 0)
        if status in ("done", "completed", "succeeded", "ok"):
            return str(state.get("model") or model)
        if status in ("failed", "error", "cancelled"):
            raise DeployError(f"pull failed: {state.get('error') or status}")
        await asyncio.sleep(PULL_POLL_S)
        state = await node.call("GET", f"/admin/models/pull/{job}")
    raise DeployError("pull did not finish in time")


async def _deploy_one(
    node: NodeCalls, model: str, step: NodeStep, load: bool, progress: Progress
) -> Outcome:
    started = time.monotonic()
    task = progress.add_task(f"{node.url}: {step.action}", total=None)
    try:
        if step.action == "refuse":
            return Outcome(node.url, "refused", step.why)
        if step.action == "loaded":
            return Outcome(node.url, "loaded", step.why)
        name = model
        if step.action == "pull":
            name = await _pull(node, model, step, progress, task)
        if load:
            progress.update(task, description=f"{node.url}: loading")
            await node.call(
                "POST", "/admin/models/load", json={"model": name}, timeout=LOAD_TIMEOUT
            )
            return Outcome(node.url, "loaded", step.why, time.monotonic() - started)
        return Outcome(node.url, "placed", step.why, time.monotonic() - started)
    except DeployError as exc:
        result = "refused" if exc.status == 503 and "budget" in str(exc) else "failed"
        return Outcome(node.url, result, str(exc), time.monotonic() - started)
    except httpx.HTTPError as exc:
        return Outcome(
            node.url, "failed", f"{type(exc).__name__}: {exc}", time.monotonic() - started
        )
    finally:
        progress.update(task, visible=False)


async def run_deploy(
    model: str, urls: list[str], *, load: bool, admin_key: str | None, show: bool
) -> list[Outcome]:
    """Plan from every node's /health, then deploy to all of them at once."""
    headers = {"Authorization": f"Bearer {admin_key}"} if admin_key else {}
    async with httpx.AsyncClient(
        headers=headers, trust_env=False, timeout=HEALTH_TIMEOUT
    ) as client:
        healths = await asyncio.gather(*(_health(client, u) for u in urls))
        reports = {u: h for u, h in zip(urls, healths, strict=True) if isinstance(h, HealthReport)}
        outcomes = [
            Outcome(u, "failed", h)
            for u, h in zip(urls, healths, strict=True)
            if isinstance(h, str)
        ]
        steps = plan_deploy(model, reports, load=load)
        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn())
        with Progress(*columns, console=err, transient=True, disable=not show) as progress:
            outcomes += await asyncio.gather(
                *(
                    _deploy_one(NodeCalls(client, u), model, s, load, progress)
                    for u, s in steps.items()
                )
            )
    return outcomes


def deploy(
    model: Annotated[str, typer.Argument(help="The model: a name nodes know, or a `pull` spec.")],
    to: Annotated[
        str | None, typer.Option("--to", help="Nodes, comma-separated: names or URLs.")
    ] = None,
    everywhere: Annotated[
        bool, typer.Option("--all", help="Every node `edgebox nodes` sees.")
    ] = False,
    load: Annotated[bool, typer.Option("--load", help="Load it once placed.")] = False,
    wait: Annotated[float, typer.Option(help="Seconds to listen for mDNS nodes.")] = 2.0,
    admin_key: Annotated[
        str | None,
        typer.Option(envvar="EDGEBOX_ADMIN_KEY", help="The nodes' admin key.", show_default=False),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Place a model on nodes (peer-to-peer where a node has it), optionally load it, and say
    per node what happened. Exit 1 if any node failed (or a node named with --to refused)."""
    urls = resolve_targets(to, everywhere, wait)
    outcomes = asyncio.run(
        run_deploy(model, urls, load=load, admin_key=admin_key, show=not as_json)
    )
    if as_json:
        typer.echo(json.dumps([o.to_json() for o in outcomes], indent=2))
    else:
        table = Table("node", "result", "why", "took")
        for o in outcomes:
            table.add_row(o.node, o.result, o.why, f"{o.seconds:.1f} s")
        out.print(table)
    failed = any(
        o.result == "failed" or (o.result == "refused" and not everywhere) for o in outcomes
    )
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command()(deploy)
