"""`edgebox login` and `edgebox fleet sync`: the laptop's copy of the fleet's node list."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from edgebox.commands._hubopts import fail as _fail

if TYPE_CHECKING:
    from edgebox.fleet.logins import Login

out = Console()
err = Console(stderr=True)
fleet_app = typer.Typer(help="This laptop's view of the fleet.", no_args_is_help=True)

MdnsWait = Annotated[float, typer.Option(help="Seconds to browse mDNS for LAN hints (0: none).")]
NodeUser = Annotated[
    str,
    typer.Option("--user", help="Account to log in to on nodes that do not name theirs."),
]


def _report(document: dict, as_json: bool) -> None:
    if as_json:
        out.print_json(data=document)
        return
    names = ", ".join(n["name"] for n in document["nodes"]) or "none"
    out.print(
        f"{len(document['nodes'])} node(s) reachable through the hub: {names}", highlight=False
    )


def login(
    line: Annotated[
        str,
        typer.Argument(
            help="The ebu1_... line from `edgebox hub user add` (- reads it from stdin)."
        ),
    ],
    mdns_wait: MdnsWait = 1.0,
    user: NodeUser = "root",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Store a hub login (pinned to the hub's certificate), register this laptop's SSH key
    for it (so `edgebox ssh` reaches the nodes) and pull the node list."""
    import sys

    from edgebox.fleet import directory, logins

    if line == "-":
        line = sys.stdin.readline()
    try:
        parsed = logins.parse(line)
    except logins.LoginError as exc:
        raise _fail(str(exc)) from None
    path = directory.save_login(parsed)
    err.print(f"login saved to {path}", highlight=False)
    _register_key(parsed, replace=False)
    try:
        document = directory.sync(mdns_wait=mdns_wait, node_user=user)
    except directory.NoRelay as exc:  # the login still serves routers and `top`
        err.print(f"[yellow]note:[/yellow] {exc}; `edgebox ssh` needs it", highlight=False)
        document = {"hub": None, "nodes": []}
    except directory.SyncError as exc:
        raise _fail(str(exc)) from None
    _report(document, as_json)


def _register_key(login: Login, *, replace: bool) -> None:
    """This laptop's SSH key at the hub for the login's user (fleet/laptop_key.py)."""
    from edgebox.fleet import laptop_key
    from edgebox.fleet.hub.client import HubError

    try:
        done = laptop_key.register(login, replace=replace)
    except HubError as exc:
        if exc.status == 404:  # an older hub: the admin registers users' keys
            err.print(
                "[yellow]note:[/yellow] this hub takes no laptop keys from logins; "
                "ask its admin to add yours (`edgebox hub user add NAME --key FILE`)"
            )
            return
        raise _fail(f"cannot register this laptop's SSH key at the hub: {exc.message}") from None
    err.print(done.message, highlight=False, soft_wrap=True)


@fleet_app.command("sync")
def sync(
    mdns_wait: MdnsWait = 1.0,
    user: NodeUser = "root",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Refresh EDGEBOX_HOME/fleet_nodes.json from the hub (`edgebox ssh` does it too)."""
    from edgebox.fleet import directory

    try:
        document = directory.sync(mdns_wait=mdns_wait, node_user=user)
    except directory.SyncError as exc:
        raise _fail(str(exc)) from None
    _report(document, as_json)


def register(app: typer.Typer) -> None:
    app.command("login")(login)
    app.add_typer(fleet_app, name="fleet")
