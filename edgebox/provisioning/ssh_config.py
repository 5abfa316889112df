"""The laptop side of `edgebox ssh`: the node directory, a generated ssh_config with pinned host
keys, the route choice (LAN when the pinned key answers there, else through the hub), and
turning ssh's host-key failures into a message a user can act on.

Everything here except `FileNodeDirectory`, `scan_host_keys` and `write_client_files` is pure.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from edgebox.fleet.relay import RelayConfigError, key_material

HUB_ALIAS = "edgebox-hub"
ALIAS_SUFFIX = ".edgebox"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_HOST_RE = re.compile(r"^[A-Za-z0-9\[][A-Za-z0-9.:%\[\]_-]{0,253}$")


class DirectoryError(ValueError):
    """The node directory is missing, malformed, or does not know a node."""


@dataclass(frozen=True)
class HubEndpoint:
    """How laptops reach the hub's relay sshd, and the relay's pinned host key."""

    host: str
    port: int
    user: str
    host_key: str


@dataclass(frozen=True)
class NodeEntry:
    """What a laptop needs to reach one node: its pinned host key and where it may answer."""

    name: str
    id: str
    host_key: str
    tunnel_port: int
    lan_addresses: tuple[str, ...] = ()  # discovery hints ("10.0.0.5" or "10.0.0.5:2222")
    user: str = "root"
    ssh_port: int = 22

    @property
    def alias(self) -> str:
        return self.name + ALIAS_SUFFIX

    @property
    def host_key_alias(self) -> str:
        return f"edgebox-node-{self.id}"


class NodeDirectory(Protocol):
    """Where the laptop learns the fleet's nodes and hub (a file now; the hub's API later)."""

    def hub(self) -> HubEndpoint: ...

    def nodes(self) -> list[NodeEntry]: ...


def edgebox_home() -> Path:
    """EDGEBOX_HOME, else ~/.edgebox."""
    return Path(os.environ.get("EDGEBOX_HOME") or Path.home() / ".edgebox")


def _checked_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise DirectoryError(f"{what} must be letters, digits, '.', '_' or '-' (got {value!r})")
    return value


def _checked_host(value: object, what: str) -> str:
    # Goes into ssh_config and argv: no spaces, newlines or a leading '-' (option injection).
    if not isinstance(value, str) or not _HOST_RE.match(value):
        raise DirectoryError(f"{what} must be a host name or address (got {value!r})")
    return value


def _checked_port(value: object, what: str) -> int:
    try:
        port = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise DirectoryError(f"{what} must be a port number (got {value!r})") from None
    if not 1 <= port <= 65535:
        raise DirectoryError(f"{what} must be a port number 1-65535 (got {port})")
    return port


def _checked_key(value: object, what: str) -> str:
    try:
        return key_material(str(value))
    except RelayConfigError as exc:
        raise DirectoryError(f"{what}: {exc}") from None


def parse_directory(data: object) -> tuple[HubEndpoint, list[NodeEntry]]:
    """Validate the fleet_nodes.json document; errors name the bad field."""
    if not isinstance(data, dict) or not isinstance(data.get("hub"), dict):
        raise DirectoryError("expected an object with 'hub' and 'nodes'")
    h = data["hub"]
    try:
        hub = HubEndpoint(
            host=_checked_host(h["host"], "hub.host"),
            port=_checked_port(h.get("port", 22), "hub.port"),
            user=_checked_name(h["user"], "hub.user"),
            host_key=_checked_key(h["host_key"], "hub.host_key"),
        )
        nodes = []
        for i, n in enumerate(data.get("nodes", [])):
            nodes.append(
                NodeEntry(
                    name=_checked_name(n["name"], f"nodes[{i}].name"),
                    id=_checked_name(n["id"], f"nodes[{i}].id"),
                    host_key=_checked_key(n["host_key"], f"nodes[{i}].host_key"),
                    tunnel_port=_checked_port(n["tunnel_port"], f"nodes[{i}].tunnel_port"),
                    lan_addresses=tuple(
                        _checked_host(a, f"nodes[{i}].lan_addresses")
                        for a in n.get("lan_addresses", [])
                    ),
                    user=_checked_name(n.get("user", "root"), f"nodes[{i}].user"),
                    ssh_port=_checked_port(n.get("ssh_port", 22), f"nodes[{i}].ssh_port"),
                )
            )
    except KeyError as exc:
        raise DirectoryError(f"missing field {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise DirectoryError(str(exc)) from None
    return hub, nodes


@dataclass
class FileNodeDirectory:
    """Reads EDGEBOX_HOME/fleet_nodes.json (written by `edgebox join` or by hand)."""

    path: Path = field(default_factory=lambda: edgebox_home() / "fleet_nodes.json")

    def _load(self) -> tuple[HubEndpoint, list[NodeEntry]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            raise DirectoryError(f"no node directory at {self.path}; join a fleet first") from None
        except json.JSONDecodeError as exc:
            raise DirectoryError(f"{self.path} is not valid JSON ({exc.msg})") from None
        return parse_directory(data)

    def hub(self) -> HubEndpoint:
        return self._load()[0]

    def nodes(self) -> list[NodeEntry]:
        return self._load()[1]


def find_node(nodes: Iterable[NodeEntry], name: str) -> NodeEntry:
    """The node called `name` (or whose alias or id is `name`)."""
    nodes = list(nodes)
    for node in nodes:
        if name in (node.name, node.alias, node.id):
            return node
    known = ", ".join(n.name for n in nodes) or "none"
    raise DirectoryError(
        f"unknown node {name!r} (known: {known}); `edgebox nodes` lists the fleet, and "
        "`edgebox fleet sync` refreshes this laptop's copy after a node joins"
    )


# ---- rendering -------------------------------------------------------------------------------


def _quote(path: Path | str) -> str:
    text = str(path)
    return f'"{text}"' if " " in text else text


def render_known_hosts(hub: HubEndpoint, nodes: Iterable[NodeEntry]) -> str:
    """Pinned keys under their HostKeyAlias: what the registry says each host must present."""
    lines = [f"{HUB_ALIAS} {key_material(hub.host_key)}"]
    lines += [f"{n.host_key_alias} {key_material(n.host_key)}" for n in nodes]
    return "\n".join(lines) + "\n"


def render_ssh_config(
    hub: HubEndpoint, nodes: Iterable[NodeEntry], home: Path, identity_file: Path | None
) -> str:
    """ssh_config with one Host block for the hub relay and one per node (`NAME.edgebox`)."""
    common = [
        f"    UserKnownHostsFile {_quote(home / 'known_hosts')}",
        "    GlobalKnownHostsFile /dev/null",
        "    StrictHostKeyChecking yes",
        "    UpdateHostKeys no",
        "    CheckHostIP no",
        "    ForwardAgent no",
        # keys only: a refused key is an error naming the node, never a password prompt
        "    PreferredAuthentications publickey",
        "    PasswordAuthentication no",
        "    KbdInteractiveAuthentication no",
    ]
    if identity_file is not None:
        common += [f"    IdentityFile {_quote(identity_file)}", "    IdentitiesOnly yes"]
    blocks = [
        "# generated by edgebox from the fleet registry; edits are overwritten",
        f"Host {HUB_ALIAS}",
        f"    HostName {hub.host}",
        f"    Port {hub.port}",
        f"    User {hub.user}",
        f"    HostKeyAlias {HUB_ALIAS}",
        *common,
    ]
    for node in nodes:
        blocks += [
            "",
            f"Host {node.alias}",
            "    HostName 127.0.0.1",
            f"    Port {node.tunnel_port}",
            f"    User {node.user}",
            f"    HostKeyAlias {node.host_key_alias}",
            f"    ProxyJump {HUB_ALIAS}",
            *common,
        ]
    return "\n".join(blocks) + "\n"


def with_include(user_config: str, include_path: Path) -> str:
    """~/.ssh/config text with `Include PATH` as its first line (Include must precede Hosts)."""
    line = f"Include {_quote(include_path)}"
    rest = [ln for ln in user_config.splitlines() if ln.strip() != line]
    if user_config.splitlines()[:1] == [line]:
        return user_config
    return "\n".join([line, *rest]) + "\n"


# ---- route -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """How to reach a node now: straight to a LAN address, or through the hub relay."""

    via: Literal["lan", "hub"]
    host: str
    port: int


def parse_address(address: str, default_port: int) -> tuple[str, int]:
    """'10.0.0.5', '10.0.0.5:2222', '[fe80::1]:22' or 'fe80::1' → (host, port)."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if address.count(":") == 1:
        host, port = address.split(":")
        return host, int(port)
    return address, default_port


KeyScanner = Callable[[str, int, str], list[str]]


def choose_route(node: NodeEntry, scan: KeyScanner) -> Route:
    """First LAN hint whose host key equals the pinned one; else the hub. mDNS is a hint, not an
    identity: an address that answers with another key (a café's 192.168.1.5) is skipped."""
    pinned = key_material(node.host_key)
    key_type = pinned.split()[0]
    for address in node.lan_addresses:
        try:
            host, port = parse_address(address, node.ssh_port)
        except ValueError:
            continue
        if pinned in scan(host, port, key_type):
            return Route("lan", host, port)
    return Route("hub", "127.0.0.1", node.tunnel_port)


def ssh_command(
    config: Path, node: NodeEntry, route: Route, options: Sequence[str], remote: Sequence[str]
) -> list[str]:
    """argv for the system ssh client along `route`."""
    argv = ["ssh", "-F", str(config)]
    if route.via == "lan":
        argv += ["-o", "ProxyJump=none", "-o", f"HostName={route.host}", "-o", f"Port={route.port}"]
    argv += [*options, node.alias]
    if remote:
        argv += ["--", *remote]
    return argv


# ---- ssh's failures, in edgebox's words ------------------------------------------------------

_CHANGED_RE = re.compile(r"Host key for (\S+) has changed")
_UNKNOWN_RE = re.compile(r"No \S+ host key is known for (\S+)")
_DENIED_RE = re.compile(r"(\S+)@(\S+): Permission denied")
SETUP_HINT = "`edgebox ssh --setup` registers this laptop's key at the hub"


def explain_ssh_failure(
    returncode: int,
    stderr: str,
    hub: HubEndpoint,
    nodes: Iterable[NodeEntry],
    target: NodeEntry | None = None,
) -> str | None:
    """An edgebox message for ssh's refusals (exit 255) naming the node or the hub and
    what to run, else None."""
    if returncode != 255:
        return None
    return _host_key_failure(stderr, hub, nodes) or _access_failure(stderr, hub, target)


def _access_failure(stderr: str, hub: HubEndpoint, target: NodeEntry | None) -> str | None:
    """A refused login or an unreachable tunnel, said of the node (not of 127.0.0.1)."""
    node = f"node {target.name!r}" if target else "the node"
    denied = _DENIED_RE.search(stderr)
    if denied and denied.group(2).strip("[]") == hub.host and denied.group(1) == hub.user:
        return (
            f"the hub relay ({hub.host}:{hub.port}) refused this laptop's key: run "
            f"`edgebox login` again with your login line ({SETUP_HINT}), or ask the hub's "
            "admin whether your user was removed"
        )
    if denied:
        user = target.user if target else denied.group(1)
        return (
            f"{node} refused this laptop's key for {user}. {SETUP_HINT} (`edgebox login` "
            "did it, if you ran it here); the node installs it at its next heartbeat, a few "
            "seconds once its node service runs. A node joined with --no-user-keys needs "
            f"the key in {user}'s authorized_keys by hand."
        )
    if "administratively prohibited" in stderr:
        return (
            f"the hub relay does not let this login through to {node} (revoked, or joined "
            "after the relay last saw your key): run `edgebox fleet sync` and try again"
        )
    if "open failed" in stderr or "stdio forwarding failed" in stderr:
        return (
            f"{node} is not connected to the hub relay (its tunnel is down): is its node "
            "service running? `edgebox nodes` shows when the hub last heard from it"
        )
    return None


def _host_key_failure(stderr: str, hub: HubEndpoint, nodes: Iterable[NodeEntry]) -> str | None:
    changed = _CHANGED_RE.search(stderr)
    identity_changed = changed is not None or "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr
    if not (identity_changed or "Host key verification failed" in stderr):
        return None
    names = {n.host_key_alias: f"node {n.name!r}" for n in nodes}
    names[HUB_ALIAS] = f"the hub relay ({hub.host}:{hub.port})"
    if identity_changed:
        who = names.get(changed.group(1), changed.group(1)) if changed else "the host"
        return (
            f"refused: the SSH host key presented for {who} differs from the key pinned in the "
            "fleet registry. Nothing was sent. If it was reinstalled, register it again so the "
            "registry holds its new key; otherwise someone may be intercepting the connection."
        )
    unknown = _UNKNOWN_RE.search(stderr)
    who = names.get(unknown.group(1), unknown.group(1)) if unknown else "the host"
    return f"refused: no pinned host key for {who}; refresh the fleet registry and try again."


# ---- I/O edges -------------------------------------------------------------------------------


def scan_host_keys(host: str, port: int, key_type: str, timeout_s: int = 2) -> list[str]:
    """Host keys (``type base64``) a LAN address presents, via ssh-keyscan; [] when none."""
    argv = ["ssh-keyscan", "-T", str(timeout_s), "-p", str(port), "-t", _scan_type(key_type), host]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout_s + 3, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    keys = []
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and not line.startswith("#"):
            keys.append(f"{parts[1]} {parts[2]}")
    return keys


def _scan_type(key_type: str) -> str:
    return {"ssh-ed25519": "ed25519", "ssh-rsa": "rsa"}.get(key_type, "ecdsa")


def write_client_files(directory: NodeDirectory, home: Path | None = None) -> Path:
    """Regenerate HOME/ssh_config and HOME/known_hosts from the directory; returns the config."""
    home = home or edgebox_home()
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    hub, nodes = directory.hub(), directory.nodes()
    identity = home / "id_ed25519"
    files = {
        home / "known_hosts": render_known_hosts(hub, nodes),
        home / "ssh_config": render_ssh_config(
            hub, nodes, home, identity if identity.exists() else None
        ),
    }
    for path, text in files.items():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.chmod(0o600)
        tmp.replace(path)
    return home / "ssh_config"
