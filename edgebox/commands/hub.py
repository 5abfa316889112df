"""`edgebox hub serve|nodes|revoke|events`: run the control plane; read and prune the registry."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgebox.api.netguard import log_field
from edgebox.commands._hubopts import (
    AdminKeyFile,
    AsJson,
    DataDir,
    Fingerprint,
    HubUrl,
    admin_request,
)
from edgebox.commands._hubopts import fail as _fail

out = Console()
hub_app = typer.Typer(
    help="The hub: fleet registry, join tokens, heartbeats.", no_args_is_help=True
)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


Host = Annotated[str, typer.Option(help="Address to listen on.")]
Port = Annotated[int, typer.Option(help="HTTPS port.")]
Url = Annotated[
    list[str] | None,
    typer.Option("--url", help="Public https:// address put in tokens (repeatable)."),
]
HeartbeatInterval = Annotated[
    float, typer.Option(help="Seconds between node heartbeats; offline after 3 missed.")
]
SshHost = Annotated[str | None, typer.Option(help="SSH relay host nodes connect to.")]
SshPort = Annotated[int, typer.Option(help="SSH relay port.")]
SshUser = Annotated[str, typer.Option(help="SSH relay account for tunnels.")]
RelayNodeKeys = Annotated[
    Path | None,
    typer.Option(help="Keep this authorized_keys file (the relay's tunnel account) in step."),
]
SshHostKeyFile = Annotated[
    Path | None,
    typer.Option(help="The relay sshd's public host key (.pub), handed to joining nodes."),
]
Relay = Annotated[
    bool,
    typer.Option(
        help="Run the SSH relay: write its files, create its accounts, supervise "
        "`sshd -D` on --ssh-port (needs root and openssh-server)."
    ),
]
JumpUser = Annotated[str, typer.Option(help="SSH relay account for people (edgebox ssh).")]
RelayListen = Annotated[str, typer.Option(help="Address the relay sshd listens on.")]
HeaderTimeout = Annotated[
    float,
    typer.Option(help="Seconds a client has for the TLS handshake and a request's headers."),
]
MaxConnsPerAddress = Annotated[
    int, typer.Option(help="Open connections allowed from one client address.")
]


@hub_app.command("serve")
def serve(
    host: Host = "0.0.0.0",
    port: Port = 8443,
    data: DataDir = None,
    url: Url = None,
    heartbeat_interval: HeartbeatInterval = 5.0,
    ssh_host: SshHost = None,
    ssh_port: SshPort = 2222,
    ssh_user: SshUser = "edgebox-tunnel",
    relay_node_keys: RelayNodeKeys = None,
    ssh_host_key_file: SshHostKeyFile = None,
    relay: Relay = False,
    jump_user: JumpUser = "edgebox-jump",
    relay_listen: RelayListen = "0.0.0.0",
    header_timeout: HeaderTimeout = 10.0,
    max_conns_per_address: MaxConnsPerAddress = 256,
) -> None:
    """Serve the hub over HTTPS with its own pinned certificate (made on first start)."""
    from edgebox.fleet.hub import identity
    from edgebox.fleet.hub.relay_runner import RelaySetupError
    from edgebox.fleet.hub.server import ConnLimits
    from edgebox.fleet.hub.server import serve as run

    if not 0 < port < 65536:
        raise _fail("--port must be a fixed port (1-65535): tokens carry it")
    if heartbeat_interval <= 0:
        raise _fail("--heartbeat-interval must be positive")
    if header_timeout <= 0 or max_conns_per_address < 1:
        raise _fail("--header-timeout must be positive and --max-conns-per-address at least 1")
    try:
        run(
            data or identity.default_data_dir(),
            host=host,
            port=port,
            urls=url or [],
            heartbeat_interval=heartbeat_interval,
            ssh_host=ssh_host,
            ssh_port=ssh_port,
            ssh_user=ssh_user,
            relay_node_keys=relay_node_keys,
            ssh_host_key_file=ssh_host_key_file,
            relay=relay,
            jump_user=jump_user,
            relay_listen=relay_listen,
            conn_limits=ConnLimits(header_timeout, max_conns_per_address),
        )
    except RelaySetupError as exc:
        raise _fail(f"relay: {exc}") from None


@hub_app.command("nodes")
def nodes(
    as_json: AsJson = False,
    hub: HubUrl = None,
    admin_key_file: AdminKeyFile = None,
    fingerprint: Fingerprint = None,
    data: DataDir = None,
) -> None:
    """List every registered node, online, offline or revoked."""
    rows = admin_request(hub, admin_key_file, fingerprint, data, "GET", "/v1/hub/nodes")["data"]
    if as_json:
        out.print_json(data=rows)
        return
    table = Table("name", "id", "status", "class", "last heartbeat", "tunnel port", "models")
    for n in rows:
        hw_class = str(n["profile"].get("hw_class", "?"))
        models = ", ".join(map(str, n["models"])) or "-"
        when = _when(n["last_heartbeat"])
        table.add_row(
            n["name"], n["id"], n["status"], hw_class, when, str(n["tunnel_port"]), models
        )
    out.print(table)


@hub_app.command("revoke")
def revoke(
    node: Annotated[str, typer.Argument(help="The node's name or id (`edgebox hub nodes`).")],
    as_json: AsJson = False,
    hub: HubUrl = None,
    admin_key_file: AdminKeyFile = None,
    fingerprint: Fingerprint = None,
    data: DataDir = None,
) -> None:
    """Revoke a node (a lost or retired box): its heartbeats and relay key stop working and its
    live relay tunnel ends now. It can only come back by joining with a new token."""
    gone = admin_request(hub, admin_key_file, fingerprint, data, "DELETE", f"/v1/hub/nodes/{node}")
    if as_json:
        out.print_json(data=gone)
        return
    out.print(f"revoked {escape(log_field(gone['name']))} ({gone['id']})", highlight=False)


@hub_app.command("events")
def events(
    as_json: AsJson = False,
    hub: HubUrl = None,
    admin_key_file: AdminKeyFile = None,
    fingerprint: Fingerprint = None,
    data: DataDir = None,
) -> None:
    """The hub's audit log: joins, refusals, revocations, nodes going offline."""
    rows = admin_request(hub, admin_key_file, fingerprint, data, "GET", "/v1/hub/events")["data"]
    if as_json:
        out.print_json(data=rows)
        return
    table = Table("when", "event", "node", "token", "detail")
    for e in rows:
        detail = e["detail"] + (f" (x{e['count']})" if e.get("count", 1) > 1 else "")
        cells = [e["kind"], e["node_id"] or "-", e["token_id"] or "-", detail]
        # Registry text is shown as text, never as Rich markup or terminal control.
        table.add_row(_when(e["at"]), *(escape(log_field(c)) for c in cells))
    out.print(table)


def register(app: typer.Typer) -> None:
    from edgebox.commands.hub_users import user_app

    hub_app.add_typer(user_app, name="user")
    app.add_typer(hub_app, name="hub")
