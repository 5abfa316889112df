"""`edgebox join TOKEN` and `edgebox node heartbeat`: this box's membership of a fleet."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from edgebox.commands._hubopts import fail as _fail

out = Console()
err = Console(stderr=True)
node_app = typer.Typer(help="This box as a fleet node.", no_args_is_help=True)


def join(
    token: Annotated[
        str, typer.Argument(help="The ebx1_... line from `edgebox token create` (- reads stdin).")
    ],
    name: Annotated[str | None, typer.Option(help="Node name (default: the hostname).")] = None,
    service: Annotated[
        bool, typer.Option(help="Install the node service (systemd/launchd).")
    ] = True,
    start: Annotated[bool, typer.Option(help="Start the service after installing it.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Join this box to the hub named in TOKEN and install the node service.

    The hub's certificate is checked against the token's fingerprint before anything is sent.
    """
    from edgebox.fleet.hub.client import HubError
    from edgebox.fleet.identity import edgebox_home
    from edgebox.fleet.join import fleet_path
    from edgebox.fleet.join import join as do_join
    from edgebox.fleet.tokens import TokenError
    from edgebox.provisioning import service as svc

    if token == "-":  # keeps the secret out of the process list (used by `edgebox provision`)
        import sys

        token = sys.stdin.readline()
    try:
        member = do_join(token, name=name)
    except TokenError as exc:
        raise _fail(str(exc)) from None
    except HubError as exc:
        raise _fail(f"join refused: {exc.message}" if exc.status else exc.message) from None
    installed, service_error = None, None
    if service:
        try:
            installed = svc.install(edgebox_home(), start=start)
        except svc.ServiceError as exc:  # joined all the same; say how to run the node by hand
            service_error = str(exc)
            err.print(
                f"[yellow]warning:[/yellow] {exc}; run `edgebox serve` yourself", highlight=False
            )
    if as_json:
        shown = {k: v for k, v in member.items() if k != "node_secret"}
        service_info = {"service": installed.message if installed else None,
                        "service_error": service_error}  # fmt: skip
        out.print_json(data=shown | service_info)
        return
    out.print(
        f"joined as [bold]{member['name']}[/] ({member['node_id']}); tunnel port "
        f"{member['tunnel_port']}; membership in {fleet_path()}",
        highlight=False,
    )
    if installed:
        out.print(f"service: {installed.message}", highlight=False)


@node_app.command("heartbeat")
def heartbeat(
    interval: Annotated[
        float | None, typer.Option(help="Seconds between beats (default: the hub's).")
    ] = None,
    count: Annotated[
        int | None,
        typer.Option(help="Stop after this many attempts (exit 1 if the last was refused)."),
    ] = None,
) -> None:
    """Send heartbeats to the hub this box joined, without serving a model."""
    import contextlib
    import logging

    from edgebox.fleet.heartbeat import Heartbeat
    from edgebox.fleet.join import fleet_path, load_fleet

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    fleet = load_fleet()
    if fleet is None:
        raise _fail(f"this box has not joined a hub ({fleet_path()} is missing); run edgebox join")
    with contextlib.suppress(KeyboardInterrupt):
        if not Heartbeat(fleet, interval=interval).run(count=count) and count is not None:
            raise typer.Exit(1)


@node_app.command("rejoin")
def rejoin(
    rotate_key: Annotated[
        bool, typer.Option(help="Replace the node key with a new one (signed by both).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Re-register this box with its hub, proving it holds the node key (no token needed).

    The node keeps its id, name and tunnel port and gets a new heartbeat secret; with
    --rotate-key its relay tunnel reconnects with the new key."""
    from edgebox.fleet.hub.client import HubError
    from edgebox.fleet.join import fleet_path
    from edgebox.fleet.join import rejoin as do_rejoin

    try:
        member = do_rejoin(rotate=rotate_key)
    except HubError as exc:
        raise _fail(f"rejoin refused: {exc.message}" if exc.status else exc.message) from None
    if as_json:
        out.print_json(data={k: v for k, v in member.items() if k != "node_secret"})
        return
    what = "rotated its key" if rotate_key else "re-registered"
    out.print(f"{member['name']} ({member['node_id']}) {what}; membership in {fleet_path()}",
              highlight=False)  # fmt: skip


def register(app: typer.Typer) -> None:
    app.command("join")(join)
    app.add_typer(node_app, name="node")
