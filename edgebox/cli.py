"""The `edgebox` command: the Typer app and its commands (each in `edgebox.commands`)."""

from __future__ import annotations

import typer

from edgebox.commands import register_all

app = typer.Typer(
    help="edgebox: serve quantised models on your own boxes behind an OpenAI-compatible API.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
register_all(app)

if __name__ == "__main__":
    app()
