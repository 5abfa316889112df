"""`edgebox token create|ls|revoke`: join tokens on the hub (admin key required)."""

from __future__ import annotations

import datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from edgebox.commands._hubopts import (
    AdminKeyFile,
    AsJson,
    DataDir,
    Fingerprint,
    HubUrl,
    admin_request,
)
from edgebox.commands._hubopts import fail as _fail

out = Console()
token_app = typer.Typer(
    help="Join tokens: one line that joins a box to the fleet.", no_args_is_help=True
)


@token_app.command("create")
def create(
    ttl: Annotated[
        str, typer.Option(help="How long the token stays valid (90s, 30m, 2h).")
    ] = "30m",
    name: Annotated[str | None, typer.Option(help="Name the joining node gets.")] = None,
    as_json: AsJson = False,
    hub: HubUrl = None,
    admin_key_file: AdminKeyFile = None,
    fingerprint: Fingerprint = None,
    data: DataDir = None,
) -> None:
    """Create a single-use token and print the command to paste on the new box."""
    from edgebox.fleet.tokens import parse_duration

    try:
        seconds = parse_duration(ttl)
    except ValueError as exc:
        raise _fail(f"--ttl: {exc}") from None
    made = admin_request(
        hub,
        admin_key_file,
        fingerprint,
        data,
        "POST",
        "/v1/hub/tokens",
        json={"ttl_seconds": seconds, "name": name},
    )
    if as_json:
        out.print_json(data=made)
        return
    typer.echo(f"# token {made['id']}, single use, valid {ttl}. On the new box run:", err=True)
    typer.echo(made["join_command"])
    offline = "# no pipx or no internet there? install edgebox (bash scripts/install.sh), then run:"
    typer.echo(offline, err=True)
    typer.echo(f"edgebox join {made['token']}", err=True)


@token_app.command("ls")
def ls(
    as_json: AsJson = False,
    hub: HubUrl = None,
    admin_key_file: AdminKeyFile = None,
    fingerprint: Fingerprint = None,
    data: DataDir = None,
) -> None:
    """List tokens and their state (secrets are never shown; the hub only has their hash)."""
    rows = admin_request(hub, admin_key_file, fingerprint, data, "GET", "/v1/hub/tokens")["data"]
    if as_json:
        out.print_json(data=rows)
        return
    table = Table("id", "name", "state", "expires", "node")
    for t in rows:
        expires = datetime.datetime.fromtimestamp(t["expires_at"]).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(t["id"], t["name"] or "-", t["state"], expires, t["node_id"] or "-")
    out.print(table)


@token_app.command("revoke")
def revoke(
    token_id: Annotated[str, typer.Argument(help="Token id from `edgebox token ls`.")],
    as_json: AsJson = False,
    hub: HubUrl = None,
    admin_key_file: AdminKeyFile = None,
    fingerprint: Fingerprint = None,
    data: DataDir = None,
) -> None:
    """Revoke a token so it can no longer join a box."""
    path = f"/v1/hub/tokens/{token_id}"
    gone = admin_request(hub, admin_key_file, fingerprint, data, "DELETE", path)
    if as_json:
        out.print_json(data=gone)
        return
    typer.echo(f"revoked {token_id}")


def register(app: typer.Typer) -> None:
    app.add_typer(token_app, name="token")
