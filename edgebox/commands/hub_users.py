"""`edgebox hub user add|ls|rm`: people who may reach nodes through the relay (admin)."""

from __future__ import annotations

from pathlib import Path
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
err = Console(stderr=True)
user_app = typer.Typer(help="Users: SSH keys allowed through the relay.", no_args_is_help=True)


@user_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="User name (letters, digits, . _ -).")],
    key: Annotated[
        Path | None,
        typer.Option(
            "--key",
            help="The user's SSH public key file (.pub); without it, the user's "
            "`edgebox login` registers their laptop's key.",
        ),
    ] = None,
    as_json: AsJson = False,
    hub: HubUrl = None,
    admin_key_file: AdminKeyFile = None,
    fingerprint: Fingerprint = None,
    data: DataDir = None,
) -> None:
    """Add a user and print their login line (`edgebox login ebu1_...`, shown once): it reads
    the node list and registers their laptop's SSH key, which the relay lets through to every
    node and the nodes install for `edgebox ssh`."""

    try:
        public_key = key.expanduser().read_text().strip() if key else None
    except OSError as exc:
        raise _fail(f"cannot read {key}: {exc.strerror}") from None
    answer = admin_request(
        hub,
        admin_key_file,
        fingerprint,
        data,
        "POST",
        "/v1/hub/users",
        json={"name": name, "ssh_public_key": public_key},
    )
    if as_json:
        out.print_json(data=answer)
        return
    out.print(answer["login_command"], highlight=False, soft_wrap=True)
    err.print(
        f"user {name} added; run the line above on their laptop (it is shown only once)",
        highlight=False,
    )


@user_app.command("ls")
def ls(
    as_json: AsJson = False,
    hub: HubUrl = None,
    admin_key_file: AdminKeyFile = None,
    fingerprint: Fingerprint = None,
    data: DataDir = None,
) -> None:
    """List users and their SSH keys."""
    rows = admin_request(hub, admin_key_file, fingerprint, data, "GET", "/v1/hub/users")["data"]
    if as_json:
        out.print_json(data=rows)
        return
    table = Table("name", "key")
    for u in rows:
        shown = u["ssh_public_key"][:40] + "..." if u["ssh_public_key"] else "(none yet)"
        table.add_row(u["name"], shown)
    out.print(table)


@user_app.command("rm")
def rm(
    name: Annotated[str, typer.Argument(help="User name.")],
    as_json: AsJson = False,
    hub: HubUrl = None,
    admin_key_file: AdminKeyFile = None,
    fingerprint: Fingerprint = None,
    data: DataDir = None,
) -> None:
    """Remove a user: their key stops opening the relay and their login stops working."""
    gone = admin_request(hub, admin_key_file, fingerprint, data, "DELETE", f"/v1/hub/users/{name}")
    if as_json:
        out.print_json(data=gone)
        return
    out.print(f"user {name} removed", highlight=False)
