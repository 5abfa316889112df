"""`edgebox version`."""

from __future__ import annotations

import typer
from rich.console import Console

from edgebox import __version__
from edgebox.commands._hubopts import AsJson

out = Console()


def version(as_json: AsJson = False) -> None:
    """Print edgebox's version."""
    if as_json:
        out.print_json(data={"version": __version__})
        return
    out.print(__version__)


def register(app: typer.Typer) -> None:
    app.command()(version)
