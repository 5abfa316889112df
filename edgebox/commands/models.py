"""`edgebox models [rm NAME | du]`: the models this box has (bundled and in its store)."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from edgebox.commands._hubopts import AsJson, fail

out = Console()
models_app = typer.Typer(
    help="The models on this box: bundled ones and those in the model store (`edgebox pull`).",
    invoke_without_command=True,
    no_args_is_help=False,
)


def _loaded_on_local_node() -> set[str] | None:
    """Model ids a node running on this box serves; None when none answers."""
    import httpx

    from edgebox.fleet.local_nodes import local_nodes

    key = os.environ.get("EDGEBOX_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    for node in local_nodes():
        try:
            r = httpx.get(f"{node.url}/v1/models", headers=headers, timeout=1.0)
            if r.status_code == 200:
                return {m["id"] for m in r.json().get("data", [])}
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            continue
    return None


def _rows() -> list[dict[str, Any]]:
    from edgebox.models import BUNDLED, DEFAULT_EMBEDDING_MODEL, DEFAULT_MODEL
    from edgebox.models.store import ModelStore

    defaults = (DEFAULT_MODEL, DEFAULT_EMBEDDING_MODEL)
    loaded = _loaded_on_local_node()
    rows: list[dict[str, Any]] = []
    for m in ModelStore().list():
        rows.append(
            {
                "name": m.name,
                "aliases": m.aliases,
                "kind": "embeddings" if m.format == "onnx" else "chat",
                "source": m.source,
                "format": m.format,
                "size_bytes": m.size,
                "quantisation": m.quantisation,
                "architecture": m.architecture,
                "context_length": m.context_length,
                "summary": ", ".join(
                    x for x in (m.architecture, m.context_length and f"ctx {m.context_length}") if x
                ),
            }
        )
    stored = {r["name"] for r in rows}
    for b in BUNDLED.values():
        if b.alias not in stored:
            rows.append(
                {
                    "name": b.alias,
                    "aliases": list(b.names),
                    "kind": b.kind,
                    "source": "bundled",
                    "package": b.package,
                    "summary": b.summary,
                }
            )
    for row in rows:
        row["default"] = row["name"] in defaults
        row["loaded"] = None if loaded is None else row["name"] in loaded
    return rows


def _size(n: int | None) -> str:
    return "" if n is None else f"{n / 1e6:,.0f} MB" if n < 1e9 else f"{n / 1e9:,.2f} GB"


@models_app.callback()
def models(ctx: typer.Context, as_json: AsJson = False) -> None:
    """List the models on this box: bundled (work offline) and pulled into the store."""
    if ctx.invoked_subcommand is not None:
        return
    rows = _rows()
    if as_json:
        out.print_json(data=rows)
        return
    table = Table("name", "size", "source", "quant", "loaded", "summary")
    for r in rows:
        default = " (default)" if r["default"] else ""
        loaded = {None: "", True: "yes", False: "no"}[r["loaded"]]
        table.add_row(
            r["name"] + default,
            _size(r.get("size_bytes")),
            r["source"],
            r.get("quantisation") or "",
            loaded,
            r.get("summary") or ", ".join(r["aliases"]),
        )
    out.print(table)


def _own_bytes(usage: dict[str, int]) -> int:
    """Blob bytes that are the store's alone (hardlinks to bundled files free nothing)."""
    return usage["blobs_bytes"] - usage["linked_bytes"]


@models_app.command("rm")
def remove(
    name: Annotated[str, typer.Argument(help="The model's name in the store.")],
    as_json: AsJson = False,
) -> None:
    """Remove a model from the store; its files go once no other model uses them."""
    from edgebox.models.store import ModelStore, StoreError

    store = ModelStore()
    try:
        before = _own_bytes(store.disk_usage())
        manifest = store.remove(name)
        freed = before - _own_bytes(store.disk_usage())
    except StoreError as exc:
        raise fail(str(exc)) from None
    if as_json:
        out.print_json(data={"removed": manifest.name, "freed_bytes": freed})
    else:
        out.print(f"removed {manifest.name} ({_size(freed)} freed)")


@models_app.command("du")
def disk_usage(as_json: AsJson = False) -> None:
    """How much disk the model store uses, and how much is free."""
    from edgebox.models.store import ModelStore

    store = ModelStore()
    usage = store.disk_usage()
    if as_json:
        out.print_json(data={"root": str(store.root), **usage})
        return
    out.print(f"store      {store.root}")
    out.print(f"models     {usage['models']}")
    linked = usage["linked_bytes"]
    shared = f" ({_size(linked)} of it hardlinked to bundled or cache files)" if linked else ""
    out.print(f"blobs      {_size(usage['blobs_bytes'])}{shared}")
    out.print(f"referenced {_size(usage['referenced_bytes'])} (bundled or cache files, not copied)")
    out.print(f"partial    {_size(usage['partial_bytes'])} (downloads to resume)")
    out.print(f"free       {_size(usage['free_bytes'])}")


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
