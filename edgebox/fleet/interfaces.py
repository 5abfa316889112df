"""Which network interfaces mDNS uses: LAN ones, never container bridges or VPN tunnels.

zeroconf on "all interfaces" answers on docker bridges and VPNs and advertises their addresses,
so peers try to reach a box at 172.17.0.1. We always hand it an explicit list.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Container bridges and veths, libvirt, tunnels and overlay VPNs (WireGuard, Tailscale, ZeroTier).
EXCLUDED_PREFIXES = (
    "docker",
    "br-",
    "veth",
    "virbr",
    "tun",
    "tap",
    "wg",
    "tailscale",
    "zt",
    "cni",
    "flannel",
    "podman",
)
INTERFACES_ENV = "EDGEBOX_MDNS_INTERFACES"


@dataclass(frozen=True)
class LanInterface:
    name: str
    address: str  # IPv4
    netmask: str | None = None


class NoInterfaceError(Exception):
    """No interface is left for mDNS; the message names what was found and how to choose."""


def is_excluded(name: str, prefixes: Sequence[str] = EXCLUDED_PREFIXES) -> bool:
    return name.startswith(tuple(prefixes))


def select_interfaces(
    addrs: Mapping[str, Sequence[Any]],
    stats: Mapping[str, Any] | None = None,
    *,
    include: Sequence[str] | None = None,
    exclude_prefixes: Sequence[str] = EXCLUDED_PREFIXES,
) -> list[LanInterface]:
    """Pick the IPv4 interfaces mDNS should use from `psutil.net_if_addrs()` (and `_stats()`).

    `include` names exactly the interfaces to use (the user's choice wins over the exclusion
    list). Otherwise: every interface that is up, not on the exclusion list and not loopback;
    loopback only when nothing else is left, so a box without a network still sees itself.
    """
    found: list[LanInterface] = []
    loopback: list[LanInterface] = []
    for name in sorted(addrs):
        if include is not None and name not in include:
            continue
        if include is None and is_excluded(name, exclude_prefixes):
            continue
        if stats is not None and name in stats and not getattr(stats[name], "isup", True):
            continue
        for entry in addrs[name]:
            if entry.family != socket.AF_INET:
                continue
            iface = LanInterface(name, entry.address, entry.netmask)
            is_lo = ipaddress.IPv4Address(entry.address).is_loopback
            (loopback if is_lo and include is None else found).append(iface)
    return found or loopback


def lan_interfaces(include: Sequence[str] | None = None) -> list[LanInterface]:
    """This box's mDNS interfaces: `include`, else $EDGEBOX_MDNS_INTERFACES (comma list), else
    the LAN ones. Raises NoInterfaceError when the choice leaves nothing."""
    import psutil

    if include is None and os.environ.get(INTERFACES_ENV):
        include = [n.strip() for n in os.environ[INTERFACES_ENV].split(",") if n.strip()]
    addrs = psutil.net_if_addrs()
    chosen = select_interfaces(addrs, psutil.net_if_stats(), include=include)
    if not chosen:
        wanted = f" among {', '.join(include)}" if include else ""
        raise NoInterfaceError(
            f"no usable IPv4 interface for mDNS{wanted}; this box has "
            f"{', '.join(sorted(addrs)) or 'none'} (choose with --interface or {INTERFACES_ENV})"
        )
    return chosen


def nearest_first(addresses: Sequence[str], interfaces: Sequence[LanInterface]) -> tuple[str, ...]:
    """`addresses` (one node's, from its advert) with those on a subnet of one of `interfaces`
    first, in their advertised order otherwise.

    A box with two networks (LAN plus a link to the hub, Wi-Fi plus Ethernet) advertises both
    addresses in no set order; a browser on one of those LANs reaches only the address on it,
    and everything that takes the first address (routers, `top`) used to pick the other half
    the time."""
    networks = []
    for iface in interfaces:
        if iface.netmask:
            with contextlib.suppress(ValueError):
                networks.append(
                    ipaddress.IPv4Network(f"{iface.address}/{iface.netmask}", strict=False)
                )

    def near(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in networks)

    return tuple(sorted(addresses, key=lambda a: not near(a)))
