"""Guards between the network and a server's logic: safe log fields and per-address rate limits
(the connection guard for uvicorn is `edgebox.api.conn_guard`).

- `log_field(text)`: client-supplied text as it may appear in a log line: control characters,
  line breaks and backslashes escaped repr-style, cut to a length, so a request can never
  start a forged log line or drive a terminal.
- `TokenBuckets`: a token bucket per client address, bounded in memory.
- `ConnectGuard`: outbound connections a remote party aims (an admin's pull URL, its
  redirects) reach public addresses only: the name is resolved once, every address it
  resolves to is checked, and the socket connects to a checked address (a name that
  resolves to a public address for the check and to 127.0.0.1 for the connect, DNS
  rebinding, gets nowhere). Internal: loopback, private, link-local (cloud metadata at
  169.254.169.254), carrier-grade NAT, unspecified, reserved, multicast, and IPv6 forms of
  these (IPv4-mapped included). Peers' hosts are exempt (`allow_hosts`), but never as the
  target of a redirect from another host (`check_redirect`).
"""

from __future__ import annotations

import ipaddress
import socket
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(ch: str) -> str:
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    # Cc: C0/C1 controls (ESC starts terminal sequences); Cf: bidi overrides and zero-width
    # marks that make a line read differently from its bytes; Zl/Zp: Unicode line breaks.
    if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
        code = ord(ch)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return ch


def log_field(value: object, limit: int = 200) -> str:
    """`value` as text safe inside one log line (escaped, at most `limit` characters + '…')."""
    text = value if isinstance(value, str) else str(value)
    cut = len(text) > limit
    escaped = "".join(_escape_char(ch) for ch in text[:limit])
    return escaped + ("…" if cut else "")


class TokenBuckets:
    """One token bucket per key (a client address): `burst` tokens, refilled at `rate`/s.

    At most `max_keys` buckets are kept (least recently used dropped first), so a flood of
    source addresses costs bounded memory; a dropped bucket comes back full, which errs on the
    side of serving."""

    def __init__(self, *, rate: float, burst: float, max_keys: int = 10_000) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def wait(self, key: str, now: float | None = None) -> float:
        """Seconds until `key` has a token (0.0: it has one now); takes nothing."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def take(self, key: str, now: float | None = None) -> float:
        """Take one token: 0.0 when allowed, else the seconds until one is available."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            wait, tokens = 0.0, tokens - 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait


def shown_url(url: str) -> str:
    """`url` as a job list or an error may show it: without `user:password@` and without its
    query (a signed URL carries its credential there: `?X-Amz-Signature=…`)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(a URL that does not parse)"
    if not parts.scheme or not parts.netloc:
        return url
    query = "?…" if parts.query else ""
    return f"{parts.scheme}://{shown_netloc(parts.netloc)}{parts.path}{query}"


def shown_netloc(netloc: str) -> str:
    """A URL's `host:port` without the `user:password@` it may carry."""
    return netloc.rpartition("@")[2]


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class BlockedAddress(Exception):
    """A connection a remote party aimed at an internal address; the message names both."""


# IPv6 prefixes whose last 32 bits are an IPv4 address that a translator or tunnel reaches:
# NAT64 (RFC 6052; an IPv6-only LAN's way out), SIIT's IPv4-translated, IPv4-compatible
_EMBEDS_IPV4 = tuple(ipaddress.ip_network(n) for n in ("64:ff9b::/96", "::ffff:0:0:0/96", "::/96"))


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:  # 2002::/16
        return ip.sixtofour
    if any(ip in net for net in _EMBEDS_IPV4):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def internal_address(ip: IPAddress) -> bool:
    """Whether `ip` is anything but a public unicast address (an IPv6 address carrying an
    IPv4 one is judged by the IPv4 one: NAT64 of 10.0.0.1 reaches 10.0.0.1)."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return internal_address(embedded)
        if ip.is_site_local or ip.is_reserved:
            return True
    return not ip.is_global or ip.is_multicast


@dataclass(frozen=True)
class ConnectGuard:
    """Connects to public addresses only, except to the hosts in `allow_hosts` (peers the
    node itself chose). `internal` decides what is refused (tests narrow it)."""

    allow_hosts: frozenset[str] = field(default_factory=frozenset)
    internal: Callable[[IPAddress], bool] = internal_address

    def resolve(self, host: str, port: int) -> list[str]:
        """Every address `host` resolves to; BlockedAddress when one of them is internal."""
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
        addresses = list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))
        for text in addresses:
            if self.internal(ipaddress.ip_address(text)):
                raise BlockedAddress(
                    f"{log_field(host, 100)} resolves to internal address {text}; "
                    "start the node with --allow-private-pulls to pull from the LAN"
                )
        return addresses

    def check_redirect(self, origin: str, target: str, port: int) -> None:
        """A redirect from `origin` to `target`: into an exempt host (a peer) from anywhere
        else, `target` is held to the guard (BlockedAddress when it is internal), since the
        pull's caller names the peers and a public server would aim the node at them."""
        if target in self.allow_hosts and origin not in self.allow_hosts:
            self.resolve(target, port)

    def connect(
        self, address: tuple[str, int], timeout: object = None, source: object = None
    ) -> socket.socket:
        """`socket.create_connection`, to a checked address of `address`'s host."""
        host, port = address
        if host in self.allow_hosts:
            return socket.create_connection(address, timeout, source)  # type: ignore[arg-type]
        error: OSError | None = None
        for ip in self.resolve(host, port):
            try:
                return socket.create_connection((ip, port), timeout, source)  # type: ignore[arg-type]
            except OSError as exc:
                error = exc
        raise error or OSError(f"{host}: no address")
