"""`edgebox provision user@host`: install edgebox on an existing box over SSH and join it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from edgebox.commands._hubopts import AdminKeyFile, AsJson, DataDir, Fingerprint, HubUrl, client
from edgebox.commands._hubopts import fail as _fail

out = Console()


Target = Annotated[str, typer.Argument(help="user@host of the box to set up.")]
SshPort = Annotated[int, typer.Option(help="SSH port.")]
Identity = Annotated[
    list[Path] | None, typer.Option("--identity", "-i", help="SSH private key (repeatable).")
]
KnownHosts = Annotated[
    Path | None, typer.Option(help="known_hosts file to check the box's key against.")
]
Name = Annotated[str | None, typer.Option(help="Node name (default: its hostname).")]
Source = Annotated[
    Path | None,
    typer.Option(help="Checkout to build the wheel from (default: this one, if a checkout)."),
]
Package = Annotated[
    str | None, typer.Option(help="Install this PyPI requirement instead of a local wheel.")
]
Python = Annotated[str, typer.Option(help="Python on the box.")]
PipArg = Annotated[list[str] | None, typer.Option("--pip-arg", help="Extra pip install argument.")]
EdgeboxHome = Annotated[
    str | None, typer.Option(help="EDGEBOX_HOME on the box (default: ~/.edgebox).")
]
Service = Annotated[bool, typer.Option(help="Install the node service on the box.")]


def provision(
    target: Target,
    port: SshPort = 22,
    identity: Identity = None,
    known_hosts: KnownHosts = None,
    name: Name = None,
    source: Source = None,
    package: Package = None,
    python: Python = "python3",
    pip_arg: PipArg = None,
    edgebox_home: EdgeboxHome = None,
    service: Service = True,
    as_json: AsJson = False,
    hub: HubUrl = None,
    admin_key_file: AdminKeyFile = None,
    fingerprint: Fingerprint = None,
    data: DataDir = None,
) -> None:
    """Install edgebox on a box over SSH, join it to the hub, and show its hardware profile."""
    from edgebox.fleet.hub.client import HubError
    from edgebox.provisioning.provision import (
        ProvisionError,
        ProvisionPlan,
        SshTarget,
        default_wheel_source,
        provision,
        wheel_from_checkout,
    )

    keep = None
    try:
        plan = ProvisionPlan(
            SshTarget.parse(target, port),
            python=python,
            pip_args=pip_arg or [],
            name=name,
            service=service,
            edgebox_home=edgebox_home,
            known_hosts=known_hosts,
            client_keys=identity or [],
        )
        checkout = source or (None if package else default_wheel_source())
        if checkout is not None:
            plan.wheel, keep = wheel_from_checkout(checkout)
        else:
            plan.package = package or "edgebox"
        with client(hub, admin_key_file, fingerprint, data) as admin:
            node = asyncio.run(provision(plan, admin))
    except (ProvisionError, HubError) as exc:
        raise _fail(str(exc)) from None
    finally:
        if keep is not None:
            keep.cleanup()
    _show(node, as_json)


def _show(node: dict[str, Any], as_json: bool) -> None:
    if as_json:
        out.print_json(data=node)
        return
    p = node["profile"]
    out.print(
        f"[bold]{node['name']}[/] ({node['id']}) joined: {p.get('hw_class')}, "
        f"{p.get('cpu_model')}, "
        f"{p.get('memory_total', 0) / (1 << 30):.1f} GiB, "
        f"{len(p.get('accelerators') or [])} accelerator(s); tunnel port {node['tunnel_port']}",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    app.command("provision")(provision)
