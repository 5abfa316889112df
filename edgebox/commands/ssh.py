"""`edgebox ssh`, `edgebox forward`, `edgebox ssh-config install` (laptop) and `edgebox tunnel`
(node): reach any node by name, on the LAN or through the hub relay, with pinned host keys."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from edgebox.fleet.tunnel import Backoff, TunnelSpec, TunnelSupervisor
from edgebox.provisioning.ssh_config import (
    DirectoryError,
    FileNodeDirectory,
    NodeDirectory,
    NodeEntry,
    choose_route,
    edgebox_home,
    explain_ssh_failure,
    find_node,
    scan_host_keys,
    ssh_command,
    with_include,
    write_client_files,
)

err = Console(stderr=True)
out = Console()
ssh_config_app = typer.Typer(
    help="The generated ssh_config (~/.edgebox/ssh_config).", no_args_is_help=True
)
_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _directory() -> NodeDirectory:
    return FileNodeDirectory()


def _refresh() -> None:
    """When logged in to a hub, refresh the node list first (keeping the last one on failure)."""
    from edgebox.fleet import directory

    try:
        if directory.load_login() is None:
            return
        directory.sync()
    except directory.SyncError as exc:
        err.print(f"[yellow]warning:[/yellow] {exc}; using the last node list", highlight=False)


def _prepare(name: str) -> tuple[NodeDirectory, NodeEntry, Path]:
    _refresh()
    directory = _directory()
    try:
        config = write_client_files(directory)
        return directory, find_node(directory.nodes(), name), config
    except DirectoryError as exc:
        raise _fail(str(exc)) from None


def run_ssh(
    argv: list[str],
    directory: NodeDirectory,
    target: NodeEntry | None = None,
    started: Callable[[subprocess.Popen[bytes]], None] | None = None,
) -> int:
    """Run ssh with the terminal attached; stderr is passed through and kept to explain failure
    (naming `target`, the node it was for). `started` gets the ssh process once it runs."""
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE)
    if started is not None:
        started(proc)
    assert proc.stderr is not None
    tail = bytearray()

    def pump() -> None:
        stream = proc.stderr
        assert isinstance(stream, io.BufferedReader)
        for chunk in iter(lambda: stream.read1(4096), b""):
            sys.stderr.buffer.write(chunk)
            sys.stderr.buffer.flush()
            tail.extend(chunk)
            del tail[:-16384]

    pumper = threading.Thread(target=pump, daemon=True)
    pumper.start()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to ssh
    previous_term = signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
    try:
        code = proc.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)
    pumper.join(2)
    message = explain_ssh_failure(
        code, tail.decode(errors="replace"), directory.hub(), directory.nodes(), target
    )
    if message:
        err.print(f"[red]edgebox:[/red] {message}", highlight=False, soft_wrap=True)
    return code


def _spec_from_membership(local_port: int) -> TunnelSpec:
    from edgebox.fleet.join import fleet_path, load_fleet
    from edgebox.fleet.node_tunnel import NoTunnel, spec_from_fleet

    fleet = load_fleet()
    if fleet is None:
        raise _fail(
            f"this box has not joined a hub ({fleet_path()} is missing); run "
            "`edgebox join TOKEN`, or pass --hub/--hub-key/--port/--identity"
        )
    try:
        return spec_from_fleet(fleet, edgebox_home(), local_port)
    except NoTunnel as exc:
        raise _fail(str(exc)) from None


def _route_options(node: NodeEntry, via: str) -> tuple[str, NodeEntry]:
    if via == "hub":
        return "hub", dataclasses.replace(node, lan_addresses=())
    if via not in ("auto", "lan"):
        raise _fail("--via must be auto, lan or hub")
    return via, node


def _setup() -> None:
    """`edgebox ssh --setup`: register this laptop's key at the hub for the stored login."""
    from edgebox.fleet import directory, laptop_key
    from edgebox.fleet.hub.client import HubError

    try:
        login = directory.load_login()
    except directory.SyncError as exc:
        raise _fail(str(exc)) from None
    if login is None:
        raise _fail(
            "not logged in to a hub: run the `edgebox login ebu1_...` line your hub admin gave "
            "you (`edgebox hub user add NAME` prints it); it registers this laptop's key too"
        )
    try:
        done = laptop_key.register(login, replace=True)
    except HubError as exc:
        raise _fail(f"cannot register this laptop's SSH key at the hub: {exc.message}") from None
    out.print(done.message, highlight=False, soft_wrap=True)
    _refresh()  # the relay and the node list as they are now
    if _directory_ready():
        write_client_files(_directory())


def _directory_ready() -> bool:
    try:
        _directory().hub()
    except DirectoryError:
        return False
    return True


def ssh(
    node: Annotated[
        str | None, typer.Argument(help="Node name (as in `edgebox nodes`).", show_default=False)
    ] = None,
    command: Annotated[list[str] | None, typer.Argument(help="Remote command, after `--`.")] = None,
    via: Annotated[str, typer.Option(help="auto (LAN if its key answers), lan, hub.")] = "auto",
    dry_run: Annotated[bool, typer.Option(help="Print the ssh command and exit.")] = False,
    setup: Annotated[
        bool,
        typer.Option(
            "--setup",
            help="Register this laptop's key (EDGEBOX_HOME/id_ed25519, made if missing) at the "
            "hub, so the relay and the nodes let it in; no NODE needed.",
        ),
    ] = False,
) -> None:
    """SSH to a node: direct on the LAN when its pinned host key answers there, else
    through the hub relay. Host keys are pinned from the fleet registry; only keys are tried
    (never a password)."""
    if setup:
        _setup()
        if node is None:
            return
    if node is None:
        raise _fail("name a node (`edgebox nodes` lists them), or pass --setup")
    directory, entry, config = _prepare(node)
    mode, entry = _route_options(entry, via)
    route = choose_route(entry, scan_host_keys)
    if mode == "lan" and route.via != "lan":
        raise _fail(f"no LAN address of {entry.name} presented its pinned host key")
    argv = ssh_command(config, entry, route, [], command or [])
    if dry_run:
        out.print(" ".join(argv), highlight=False, soft_wrap=True)
        return
    err.print(
        f"edgebox: {entry.name} via {route.via} ({route.host}:{route.port})",
        style="dim",
        highlight=False,
    )
    raise typer.Exit(run_ssh(argv, directory, entry))


def forward(
    node: Annotated[str, typer.Argument(help="Node name.")],
    ports: Annotated[str, typer.Argument(help="REMOTE_PORT[:LOCAL_PORT], e.g. 8080.")],
) -> None:
    """Bring a port of a node (on its loopback) to 127.0.0.1 on this machine."""
    remote, _, local = ports.partition(":")
    try:
        remote_port, local_port = int(remote), int(local or remote)
    except ValueError:
        raise _fail(f"ports: expected REMOTE_PORT[:LOCAL_PORT], got {ports!r}") from None
    directory, entry, config = _prepare(node)
    route = choose_route(entry, scan_host_keys)
    forwarded = f"127.0.0.1:{local_port}:127.0.0.1:{remote_port}"
    options = ["-N", "-o", "ExitOnForwardFailure=yes", "-L", forwarded]
    err.print(f"edgebox: connecting to {entry.name} via {route.via} ...", highlight=False)
    ready = (
        f"edgebox: {entry.name}:{remote_port} on http://127.0.0.1:{local_port} "
        f"via {route.via} (Ctrl-C to stop)"
    )
    argv = ssh_command(config, entry, route, options, [])
    started = partial(_announce_when_listening, local_port, ready)
    raise typer.Exit(run_ssh(argv, directory, entry, started=started))


def _announce_when_listening(port: int, line: str, proc: subprocess.Popen[bytes]) -> None:
    """Print `line` once the forwarded port takes connections, not before: a script that
    starts `edgebox forward` and waits for the line can use the port at once."""

    def wait() -> None:
        while proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                time.sleep(0.1)
                continue
            if proc.poll() is None:  # not another program's port, with ssh failing on it
                err.print(line, highlight=False)
            return

    threading.Thread(target=wait, daemon=True).start()


@ssh_config_app.command("install")
def install(
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Write ~/.edgebox/ssh_config and include it at the top of ~/.ssh/config, so plain
    `ssh NODE.edgebox` works too. Running it again changes nothing."""
    try:
        config = write_client_files(_directory())
    except DirectoryError as exc:
        raise _fail(str(exc)) from None
    user_config = Path.home() / ".ssh" / "config"
    user_config.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    before = user_config.read_text() if user_config.exists() else ""
    after = with_include(before, config)
    if after != before:
        user_config.write_text(after)
        user_config.chmod(0o600)
    changed = after != before
    result = {"ssh_config": str(config), "included_from": str(user_config), "changed": changed}
    if as_json:
        out.print_json(data=result)
        return
    state = "added to" if changed else "already in"
    out.print(f"Include {config}: {state} {user_config}", highlight=False)


@ssh_config_app.command("print")
def print_config() -> None:
    """Print the generated ssh_config."""
    try:
        out.print(write_client_files(_directory()).read_text(), highlight=False, end="")
    except DirectoryError as exc:
        raise _fail(str(exc)) from None


def _explicit_spec(
    hub: str, hub_key: str | None, port: int | None, identity: Path | None, user: str, local: int
) -> TunnelSpec:
    if hub_key is None or port is None or identity is None:
        raise _fail("--hub needs --hub-key, --port and --identity")
    host, _, hub_port = hub.partition(":")
    return TunnelSpec(
        hub_host=host,
        hub_port=int(hub_port or 22),
        hub_host_key=hub_key,
        identity_file=identity,
        tunnel_port=port,
        user=user,
        known_hosts_file=edgebox_home() / "hub_known_hosts",
        local_ssh_port=local,
    )


def _run_tunnel(spec: TunnelSpec) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    supervisor = TunnelSupervisor(spec, Backoff())
    supervisor.start()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        supervisor.stop()
        print(json.dumps({"attempts": supervisor.attempts, "ups": supervisor.ups}))


def tunnel(
    hub: Annotated[
        str | None, typer.Option(help="Relay address HOST[:PORT] (default: fleet.json).")
    ] = None,
    hub_key: Annotated[
        str | None, typer.Option(help="The relay's pinned host key (TYPE BASE64).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="This node's tunnel port on the hub.")] = None,
    identity: Annotated[
        Path | None, typer.Option(help="Private key the node logs in with.")
    ] = None,
    user: Annotated[str, typer.Option(help="Relay account for nodes.")] = "edgebox-tunnel",
    api_port: Annotated[
        str | None, typer.Option(help="Also forward HUB_PORT:LOCAL_PORT (the node API).")
    ] = None,
    local_port: Annotated[int, typer.Option(help="This box's sshd port.")] = 22,
) -> None:
    """Keep this node reachable through the hub (node side; runs until Ctrl-C). Without
    --hub it uses the membership `edgebox join` saved (EDGEBOX_HOME/fleet.json)."""
    api = None
    if api_port:
        a, _, b = api_port.partition(":")
        api = (int(a), int(b or a))
    if hub is None:
        spec = _spec_from_membership(local_port)
    else:
        spec = _explicit_spec(hub, hub_key, port, identity, user, local_port)
    _run_tunnel(dataclasses.replace(spec, api_forward=api))


def register(app: typer.Typer) -> None:
    """Add the ssh commands to the edgebox CLI."""
    app.command(context_settings=_PASS_THROUGH)(ssh)
    app.command()(forward)
    app.command()(tunnel)
    app.add_typer(ssh_config_app, name="ssh-config")
