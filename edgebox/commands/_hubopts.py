"""Options every hub admin command shares, and turning them into a client or a clean error."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

if TYPE_CHECKING:
    from edgebox.fleet.hub.client import HubClient

err = Console(stderr=True)

HubUrl = Annotated[str | None, typer.Option("--hub", help="Hub URL (default: the local hub).")]
AdminKeyFile = Annotated[
    Path | None, typer.Option("--admin-key-file", help="Admin key (default: DATA/admin.key).")
]
Fingerprint = Annotated[
    str | None, typer.Option("--fingerprint", help="Hub certificate sha256:... (with --hub).")
]
DataDir = Annotated[
    Path | None, typer.Option("--data", help="Hub data dir (default: EDGEBOX_HOME/hub).")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def client(
    hub: str | None, key: Path | None, fingerprint: str | None, data: Path | None
) -> HubClient:
    from edgebox.fleet.hub.admin import AdminConfigError, admin_client

    try:
        return admin_client(hub=hub, admin_key_file=key, fingerprint=fingerprint, data_dir=data)
    except AdminConfigError as exc:
        raise fail(str(exc)) from None


def admin_request(
    hub: str | None,
    key: Path | None,
    fingerprint: str | None,
    data: Path | None,
    method: str,
    path: str,
    *,
    json: dict[str, Any] | None = None,
) -> Any:
    """One admin call to the hub; a refusal or an unreachable hub becomes a clean CLI error."""
    from edgebox.fleet.hub.client import HubError

    try:
        with client(hub, key, fingerprint, data) as c:
            return c.request(method, path, json=json)
    except HubError as exc:
        raise fail(exc.message) from None
