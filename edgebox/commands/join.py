"""`edgebox join TOKEN` and `edgebox node heartbeat|rejoin`: this box's membership of a fleet."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from edgebox.commands._hubopts import fail as _fail

if TYPE_CHECKING:
    from edgebox.provisioning.service import ServiceResult

out = Console()
err = Console(stderr=True)
node_app = typer.Typer(help="This box as a fleet node.", no_args_is_help=True)
SECRET_FIELDS = ("node_secret", "api_key")  # kept in fleet.json (0600), never printed


def _shown(member: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in member.items() if k not in SECRET_FIELDS}


def _read_token(token: str) -> str:
    if token == "-":  # keeps the secret out of the process list (used by `edgebox provision`)
        import sys

        return sys.stdin.readline()
    return token


def _join(token: str, name: str | None, user_keys: bool, keys_file: Path | None) -> dict:
    from edgebox.fleet.hub.client import HubError
    from edgebox.fleet.join import join as do_join
    from edgebox.fleet.tokens import TokenError
    from edgebox.fleet.user_keys import setting

    try:
        return do_join(token, name=name, user_keys=setting(keys_file) if user_keys else None)
    except TokenError as exc:
        raise _fail(str(exc)) from None
    except HubError as exc:
        raise _fail(f"join refused: {exc.message}" if exc.status else exc.message) from None


def _install_service(start: bool) -> tuple[ServiceResult | None, str | None]:
    """The node service, or why not (the box has joined all the same)."""
    from edgebox.fleet.identity import edgebox_home
    from edgebox.provisioning import service as svc

    try:
        return svc.install(edgebox_home(), start=start), None
    except svc.ServiceError as exc:
        err.print(
            f"[yellow]warning:[/yellow] {exc}; run `{svc.manual_command()}` yourself (it "
            "takes this node's fleet key from its membership), or fix the cause and run "
            "`edgebox join` again",
            highlight=False,
            soft_wrap=True,
        )
        return None, str(exc)


def join(
    token: Annotated[
        str, typer.Argument(help="The ebx1_... line from `edgebox token create` (- reads stdin).")
    ],
    name: Annotated[str | None, typer.Option(help="Node name (default: the hostname).")] = None,
    service: Annotated[
        bool, typer.Option(help="Install the node service (systemd/launchd).")
    ] = True,
    start: Annotated[bool, typer.Option(help="Start the service after installing it.")] = True,
    user_keys: Annotated[
        bool,
        typer.Option(
            help="Keep the hub users' SSH keys in this account's authorized_keys, so "
            "`edgebox ssh` reaches this box."
        ),
    ] = True,
    authorized_keys: Annotated[
        Path | None,
        typer.Option(help="The authorized_keys file for them (default: ~/.ssh/authorized_keys)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Join this box to the hub named in TOKEN and install the node service.

    The hub's certificate is checked against the token's fingerprint before anything is sent.
    The service serves on every interface; /v1 takes the key the hub minted for this node.
    """
    from edgebox.fleet.join import fleet_path

    member = _join(_read_token(token), name, user_keys, authorized_keys)
    installed, service_error = _install_service(start) if service else (None, None)
    if as_json:
        service_info = {
            "service": installed.message if installed else None,
            "service_error": service_error,
        }
        out.print_json(data=_shown(member) | service_info)
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
        bool,
        typer.Option(
            help="Replace the node key (signed by both) and the node's API key with new ones."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Re-register this box with its hub, proving it holds the node key (no token needed).

    The node keeps its id, name and tunnel port and gets a new heartbeat secret; with
    --rotate-key its relay tunnel reconnects with the new key, and routers get its new API
    key from the hub. Restart the node service afterwards so it serves with the new keys."""
    from edgebox.fleet.hub.client import HubError
    from edgebox.fleet.join import fleet_path
    from edgebox.fleet.join import rejoin as do_rejoin

    try:
        member = do_rejoin(rotate=rotate_key)
    except HubError as exc:
        raise _fail(f"rejoin refused: {exc.message}" if exc.status else exc.message) from None
    if as_json:
        out.print_json(data=_shown(member))
        return
    what = "rotated its keys" if rotate_key else "re-registered"
    out.print(
        f"{member['name']} ({member['node_id']}) {what}; membership in {fleet_path()}; "
        "restart the node service (systemctl restart edgebox-node) to use it",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    app.command("join")(join)
    app.add_typer(node_app, name="node")
