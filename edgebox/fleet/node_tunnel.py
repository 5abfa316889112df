"""The node's tunnel to the hub relay, configured from its membership (EDGEBOX_HOME/fleet.json,
written by `edgebox join`): `edgebox serve` starts it next to the heartbeat, `edgebox tunnel`
runs it alone."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from edgebox.fleet.identity import edgebox_home
from edgebox.fleet.join import load_fleet
from edgebox.fleet.tunnel import Backoff, TunnelSpec, TunnelSupervisor

log = logging.getLogger(__name__)


class NoTunnel(Exception):
    """This membership carries no usable tunnel (the message says why)."""


def spec_from_fleet(fleet: dict[str, Any], home: Path, local_ssh_port: int = 22) -> TunnelSpec:
    hub_ssh = fleet.get("hub_ssh") or {}
    if not hub_ssh.get("host_key"):
        raise NoTunnel(
            "the hub gave no relay host key at join (it runs no relay); "
            "no tunnel, this node is reachable on its LAN only"
        )
    return TunnelSpec(
        hub_host=hub_ssh["host"],
        hub_port=int(hub_ssh["port"]),
        hub_host_key=hub_ssh["host_key"],
        identity_file=Path(fleet["node_key"]),
        tunnel_port=int(fleet["tunnel_port"]),
        known_hosts_file=home / "hub_known_hosts",
        user=hub_ssh["user"],
        local_ssh_port=local_ssh_port,
    )


def start_background(home: Path | None = None) -> TunnelSupervisor | None:
    """Start the tunnel when this box joined a hub that runs a relay; else None (logged)."""
    home = home or edgebox_home()
    fleet = load_fleet(home)
    if fleet is None:
        return None
    try:
        spec = spec_from_fleet(fleet, home)
    except NoTunnel as exc:
        log.warning("%s", exc)
        return None
    tunnel_log = logging.getLogger("edgebox.fleet.tunnel")
    if not tunnel_log.handlers and not logging.getLogger().handlers:  # `serve` sets up no logging
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s edgebox %(message)s"))
        tunnel_log.addHandler(handler)
        tunnel_log.setLevel(logging.INFO)
    supervisor = TunnelSupervisor(spec, Backoff())
    supervisor.start()
    tunnel_log.info(
        "tunnel: keeping port %d on %s:%d open to this box's sshd",
        spec.tunnel_port,
        spec.hub_host,
        spec.hub_port,
    )
    return supervisor
