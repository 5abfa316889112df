"""The `edgebox` commands: one module per command or group, each with `register(app)`.

`COMMANDS` is the one list of them; `edgebox.cli` registers it in this order (the order
`edgebox --help` shows)."""

from __future__ import annotations

from types import ModuleType

import typer

from edgebox.commands import (
    deploy,
    doctor,
    fleet,
    hub,
    join,
    models,
    node_models,
    nodes,
    provision,
    pull,
    router,
    serve,
    ssh,
    telemetry,
    token,
    top,
    version,
)

COMMANDS: tuple[ModuleType, ...] = (
    serve,
    models,
    deploy,
    pull,
    doctor,
    version,
    ssh,
    telemetry,
    hub,
    token,
    join,
    provision,
    nodes,
    top,
    fleet,
    router,
    node_models,  # into the `node` group that `join` adds
)


def register_all(app: typer.Typer) -> None:
    """Add every command in `COMMANDS` to `app`."""
    for command in COMMANDS:
        command.register(app)
