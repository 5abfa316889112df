"""`edgebox node models|load|unload|requests`: a running node's models and recent requests,
over its /admin routes (the node's admin key; on a node without one, its API key, from
loopback only)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from edgebox.commands._hubopts import fail
from edgebox.commands.join import node_app

out = Console()
LOCAL_NODE = "http://127.0.0.1:8080"  # `edgebox serve`'s default address
LOAD_TIMEOUT = httpx.Timeout(600.0, connect=5.0)  # a load may fetch and open a large model

NodeUrl = Annotated[str, typer.Option("--node", metavar="URL", help="The node's URL.")]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--admin-key",
        "--api-key",
        envvar=["EDGEBOX_ADMIN_KEY", "EDGEBOX_API_KEY"],
        help="The node's admin key (its API key on a node without one, from loopback).",
        show_default=False,
    ),
]
MODEL_HELP = "As `serve --model`: a bundled name, a path on the node, or ORG/REPO:FILE.gguf."
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _call(method: str, url: str, path: str, api_key: str | None, **kwargs: Any) -> Any:
    """One admin request; an error (never the key) ends the command with the node's message."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.request(
            method,
            url.rstrip("/") + path,
            headers=headers,
            timeout=LOAD_TIMEOUT,
            trust_env=False,
            **kwargs,
        )
    except httpx.HTTPError as exc:
        raise fail(f"{url}: {type(exc).__name__}: {exc}") from None
    try:
        body = r.json()
    except ValueError:
        body = None
    if r.status_code == 404 and not (isinstance(body, dict) and body.get("error", {}).get("param")):
        raise fail(f"{url} has no {path} (an older edgebox: upgrade the node)")
    if r.status_code >= 400:
        message = body["error"]["message"] if isinstance(body, dict) and "error" in body else ""
        raise fail(f"HTTP {r.status_code}: {message or r.text[:200]}")
    return body


def models(node: NodeUrl = LOCAL_NODE, api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """The models a node serves (runtime, fast path, load) and those it could load."""
    body = _call("GET", node, "/admin/models", api_key)
    if as_json:
        typer.echo(json.dumps(body, indent=2))
        return
    served = Table("model", "kind", "runtime", "running", "queued", "fast path")
    for m in body["data"]:
        load = (str(m["running"]), str(m["queued"]))
        served.add_row(m["id"], m["kind"], m["runtime"], *load, m.get("fast_path") or "")
    out.print(served)
    for name in body.get("loading", []):
        out.print(f"loading: {name}", highlight=False)
    loadable = [m["name"] for m in body.get("loadable", []) if not m.get("loaded")]
    out.print("loadable: " + (", ".join(loadable) or "none"), highlight=False)


def load(
    model: Annotated[str, typer.Argument(help=MODEL_HELP)],
    node: NodeUrl = LOCAL_NODE,
    runtime: Annotated[
        str | None, typer.Option(help="auto, llamacpp, mlx, onnx or trtllm (default: the node's).")
    ] = None,
    alias: Annotated[str | None, typer.Option(help="The id to serve it as.")] = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """Load a model on a running node; returns once it serves."""
    request: dict[str, Any] = {"model": model}
    if runtime is not None:
        request["runtime"] = runtime
    if alias is not None:
        request["alias"] = alias
    body = _call("POST", node, "/admin/models/load", api_key, json=request)
    if as_json:
        typer.echo(json.dumps(body, indent=2))
        return
    out.print(f"loaded {body['id']} ({body.get('fast_path') or body['runtime']})", highlight=False)


def unload(
    model: Annotated[str, typer.Argument(help="The served model id.")],
    node: NodeUrl = LOCAL_NODE,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """Unload a model from a running node (refused while it has running requests)."""
    body = _call("POST", node, "/admin/models/unload", api_key, json={"model": model})
    if as_json:
        typer.echo(json.dumps(body, indent=2))
        return
    out.print(f"unloaded {body['id']}", highlight=False)


def requests(
    node: NodeUrl = LOCAL_NODE,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 20,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """A node's last finished requests: model, route, tokens, time to first token, status."""
    body = _call("GET", node, f"/admin/requests?limit={limit}", api_key)
    if as_json:
        typer.echo(json.dumps(body, indent=2))
        return
    from edgebox.tui.requests_view import request_rows

    table = Table("age", "kind", "model", "status", "prompt", "completion", "ttft", "took")
    for row in request_rows(body["data"]):
        table.add_row(*row)
    out.print(table)


def register(app: typer.Typer) -> None:
    """Adds the commands to the `edgebox node` group (registered by `commands.join`)."""
    node_app.command("models")(models)
    node_app.command("load")(load)
    node_app.command("unload")(unload)
    node_app.command("requests")(requests)
