"""CLI commands, one module each, registered on the Typer app by `edgebox.cli`."""
