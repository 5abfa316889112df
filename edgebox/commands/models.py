"""`edgebox models`: the models that ship with edgebox."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from edgebox.commands._hubopts import AsJson

out = Console()


def models(as_json: AsJson = False) -> None:
    """List the models that ship with edgebox and work offline."""
    from edgebox.models import BUNDLED, DEFAULT_EMBEDDING_MODEL, DEFAULT_MODEL

    defaults = (DEFAULT_MODEL, DEFAULT_EMBEDDING_MODEL)
    if as_json:
        rows = [
            {
                "name": m.alias,
                "aliases": list(m.names),
                "kind": m.kind,
                "default": m.alias in defaults,
                "package": m.package,
                "summary": m.summary,
            }
            for m in BUNDLED.values()
        ]
        out.print_json(data=rows)
        return
    table = Table("name", "package", "summary")
    for m in BUNDLED.values():
        default = " (default)" if m.alias in defaults else ""
        table.add_row(m.alias + default, m.package, m.summary)
    out.print(table)


def register(app: typer.Typer) -> None:
    app.command("models")(models)
