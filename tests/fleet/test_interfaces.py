"""Which interfaces mDNS uses, from psutil-shaped data."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import psutil

from edgebox.fleet.interfaces import LanInterface, is_excluded, select_interfaces


def _v4(address: str, netmask: str = "255.255.255.0") -> SimpleNamespace:
    return SimpleNamespace(family=socket.AF_INET, address=address, netmask=netmask)


def _v6(address: str) -> SimpleNamespace:
    return SimpleNamespace(family=socket.AF_INET6, address=address, netmask=None)


def _up(isup: bool = True) -> SimpleNamespace:
    return SimpleNamespace(isup=isup)


# A workstation with Docker, libvirt, WireGuard, Tailscale and ZeroTier next to its LAN NIC.
BUSY_BOX = {
    "lo": [_v4("127.0.0.1", "255.0.0.0"), _v6("::1")],
    "enp5s0": [_v4("192.168.1.20"), _v6("fe80::1")],
    "wlp3s0": [_v4("192.168.1.21")],
    "docker0": [_v4("172.17.0.1", "255.255.0.0")],
    "br-3f2a9c": [_v4("172.18.0.1", "255.255.0.0")],
    "veth12ab": [_v6("fe80::2")],
    "virbr0": [_v4("192.168.122.1")],
    "tun0": [_v4("10.8.0.2")],
    "wg0": [_v4("10.9.0.2")],
    "tailscale0": [_v4("100.101.102.103", "255.255.255.255")],
    "ztabcdef": [_v4("10.147.17.5")],
}


def test_lan_nics_only_sorted_by_name() -> None:
    assert select_interfaces(BUSY_BOX) == [
        LanInterface("enp5s0", "192.168.1.20", "255.255.255.0"),
        LanInterface("wlp3s0", "192.168.1.21", "255.255.255.0"),
    ]


def test_down_interfaces_are_left_out() -> None:
    stats = {name: _up() for name in BUSY_BOX} | {"wlp3s0": _up(False)}
    assert [i.name for i in select_interfaces(BUSY_BOX, stats)] == ["enp5s0"]


def test_loopback_only_when_nothing_else_is_left() -> None:
    only_lo_and_docker = {"lo": BUSY_BOX["lo"], "docker0": BUSY_BOX["docker0"]}
    assert select_interfaces(only_lo_and_docker) == [LanInterface("lo", "127.0.0.1", "255.0.0.0")]


def test_explicit_choice_wins_over_the_exclusion_list() -> None:
    chosen = select_interfaces(BUSY_BOX, include=["tailscale0", "lo"])
    assert [i.name for i in chosen] == ["lo", "tailscale0"]


def test_explicit_choice_of_a_missing_interface_is_empty() -> None:
    assert select_interfaces(BUSY_BOX, include=["eth9"]) == []


def test_ipv6_only_interfaces_give_nothing() -> None:
    assert select_interfaces({"eth0": [_v6("fe80::3")]}) == []


def test_exclusion_prefixes() -> None:
    assert [n for n in BUSY_BOX if is_excluded(n)] == [
        "docker0",
        "br-3f2a9c",
        "veth12ab",
        "virbr0",
        "tun0",
        "wg0",
        "tailscale0",
        "ztabcdef",
    ]


def test_accepts_what_psutil_returns_on_this_machine() -> None:
    chosen = select_interfaces(psutil.net_if_addrs(), psutil.net_if_stats())
    assert chosen, "every machine has at least loopback"
    assert all(not is_excluded(i.name) for i in chosen)


def test_addresses_on_this_machines_subnets_come_first() -> None:
    """A two-network box advertises both addresses in no set order; a browser on one LAN
    must try the address on that LAN first (the other may be unreachable from here)."""
    from edgebox.fleet.interfaces import LanInterface, nearest_first

    lan = [LanInterface("eth0", "10.80.0.20", "255.255.255.0")]
    assert nearest_first(["10.79.3.2", "10.80.0.12"], lan) == ("10.80.0.12", "10.79.3.2")
    assert nearest_first(["10.80.0.12", "10.79.3.2"], lan) == ("10.80.0.12", "10.79.3.2")
    # nothing local, or no netmask known: the advertised order stands
    assert nearest_first(["10.1.0.1", "10.2.0.1"], lan) == ("10.1.0.1", "10.2.0.1")
    assert nearest_first(["10.80.0.1", "10.2.0.1"][::-1], [LanInterface("x", "10.80.0.2")]) == (
        "10.2.0.1",
        "10.80.0.1",
    )
