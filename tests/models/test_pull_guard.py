"""URL pulls a remote party aims stay off internal addresses: the `ConnectGuard` checks the
address each connection is made to, so a redirect (or a name that resolves elsewhere by the
time of the connect) to an internal service gets no request through, on both clients a pull
uses (httpx for HEAD, `RangeClient` for the bytes).

Loopback stands in for both sides: 127.0.0.1 plays a public server, 127.0.0.2 the internal
one (the guard's `internal` is narrowed to it)."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from edgebox.api.netguard import BlockedAddress, ConnectGuard, IPAddress, internal_address
from edgebox.models._ranges import RangeAsk, RangeClient, SourceError
from edgebox.models.remote import PullError, http_client, url_file

pytestmark = pytest.mark.timeout(30)

INTERNAL = "127.0.0.2"


def _narrow(ip: IPAddress) -> bool:
    return str(ip) == INTERNAL


GUARD = ConnectGuard(internal=_narrow)


class _Handler(BaseHTTPRequestHandler):
    hits: ClassVar[dict[str, int]] = {}
    redirect_to = ""

    def log_message(self, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        host = self.server.server_address[0]  # type: ignore[index]
        self.hits[str(host)] = self.hits.get(str(host), 0) + 1
        if self.path.startswith("/go"):
            self.send_response(302)
            self.send_header("Location", self.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", "4")
        self.end_headers()

    def do_GET(self) -> None:
        self.do_HEAD()
        if not self.path.startswith("/go"):
            self.wfile.write(b"GGUF")


@pytest.fixture
def servers() -> Iterator[tuple[str, str]]:
    """(public base URL, internal base URL)."""
    _Handler.hits = {}
    started = [ThreadingHTTPServer((host, 0), _Handler) for host in ("127.0.0.1", INTERNAL)]
    for server in started:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    public, internal = (f"http://{s.server_address[0]}:{s.server_address[1]}" for s in started)
    _Handler.redirect_to = internal + "/secret"
    try:
        yield public, internal
    finally:
        for server in started:
            server.shutdown()
            server.server_close()


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.7",
        "172.16.1.1",
        "192.168.1.10",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.251",
        "::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "fd00::1",
        "fe80::1",
        # IPv6 forms that carry an internal IPv4 address a translator or tunnel reaches:
        "64:ff9b::a9fe:a9fe",  # NAT64 (RFC 6052) of 169.254.169.254
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "::ffff:0:a00:1",  # SIIT IPv4-translated 10.0.0.1
        "::7f00:1",  # IPv4-compatible 127.0.0.1 (deprecated)
        "::a9fe:a9fe",
        "fec0::1",  # site-local (deprecated, still routed on old LANs)
        "5f00::1",  # reserved, unallocated
    ],
)
def test_internal_addresses(address: str) -> None:
    assert internal_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    [
        "1.1.1.1",
        "93.184.216.34",
        "2606:4700:4700::1111",
        "64:ff9b::101:101",  # NAT64 of 1.1.1.1: how an IPv6-only LAN reaches the internet
        "2002:101:101::1",  # 6to4 of 1.1.1.1
    ],
)
def test_public_addresses(address: str) -> None:
    assert not internal_address(ipaddress.ip_address(address))


def test_a_name_that_resolves_to_loopback_is_refused() -> None:
    with pytest.raises(BlockedAddress, match=r"internal address 127\.0\.0\.1"):
        ConnectGuard().resolve("localhost", 80)


def test_the_head_client_follows_no_redirect_to_an_internal_address(
    servers: tuple[str, str],
) -> None:
    public, internal = servers
    assert url_file(http_client(GUARD), public + "/model.gguf", None).size == 4  # allowed
    with pytest.raises(PullError, match="internal address"):
        url_file(http_client(GUARD), public + "/go", None)
    with pytest.raises(PullError, match="internal address"):
        url_file(http_client(GUARD), internal + "/model.gguf", None)
    assert _Handler.hits.get(INTERNAL, 0) == 0


def test_the_range_client_follows_no_redirect_to_an_internal_address(
    servers: tuple[str, str],
) -> None:
    public, internal = servers
    client = RangeClient(5.0, GUARD)
    buf = bytearray(4)
    client.read_into(RangeAsk(public + "/model.gguf", {}, 0, memoryview(buf), lambda n: None))
    assert bytes(buf) == b"GGUF"
    for url in (public + "/go", internal + "/model.gguf"):
        with pytest.raises(SourceError, match="internal address"):
            client.read_into(RangeAsk(url, {}, 0, memoryview(bytearray(4)), lambda n: None))
    assert _Handler.hits.get(INTERNAL, 0) == 0


def test_peers_the_node_chose_are_not_held_to_the_guard(servers: tuple[str, str]) -> None:
    _, internal = servers
    guard = ConnectGuard(allow_hosts=frozenset({INTERNAL}), internal=_narrow)
    assert url_file(http_client(guard), internal + "/model.gguf", None).size == 4
    buf = bytearray(4)
    ask = RangeAsk(internal + "/m.gguf", {}, 0, memoryview(buf), lambda n: None, kind="peer")
    RangeClient(5.0, guard).read_into(ask)
    assert bytes(buf) == b"GGUF"


def test_a_public_server_cannot_redirect_to_an_exempt_peer_host(servers: tuple[str, str]) -> None:
    """A peer's host is exempt so the node can reach its LAN peers, and the caller of
    `/admin/models/pull` names those peers: a URL spec on a public server redirecting to
    "a peer" (169.254.169.254, 127.0.0.1:admin) would reach it. A redirect into an exempt
    host is held to the guard; the peer itself is still reached directly."""
    public, internal = servers
    guard = ConnectGuard(allow_hosts=frozenset({INTERNAL}), internal=_narrow)
    with pytest.raises(PullError, match="internal address"):
        url_file(http_client(guard), public + "/go", None)
    ask = RangeAsk(public + "/go", {}, 0, memoryview(bytearray(4)), lambda n: None)
    with pytest.raises(SourceError, match="internal address"):
        RangeClient(5.0, guard).read_into(ask)
    assert _Handler.hits.get(INTERNAL, 0) == 0
    assert url_file(http_client(guard), internal + "/model.gguf", None).size == 4
