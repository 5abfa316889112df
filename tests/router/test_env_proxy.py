"""With HTTP_PROXY set (a box behind a corporate proxy), the router's client sends its nodes'
traffic, keys included, straight to the nodes, and only public hosts through the proxy.

Real servers on loopback: a "node" and a "proxy" that record what reaches them; the router's
own client (`router.app.new_client`) makes the requests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from edgebox.api.envproxy import lan_host
from edgebox.router.app import new_client

pytestmark = pytest.mark.timeout(30)


class _Recorder(BaseHTTPRequestHandler):
    seen: ClassVar[dict[int, list[tuple[str, str]]]] = {}

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        port = self.server.server_address[1]  # type: ignore[index]
        self.seen.setdefault(port, []).append((self.path, self.headers.get("authorization", "")))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


@pytest.fixture
def servers(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, int]]:
    """(node port, proxy port), with HTTP_PROXY and ALL_PROXY naming the proxy."""
    _Recorder.seen = {}
    started = [ThreadingHTTPServer(("127.0.0.1", 0), _Recorder) for _ in range(2)]
    for server in started:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    node, proxy = (s.server_address[1] for s in started)
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{proxy}")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    try:
        yield node, proxy
    finally:
        for server in started:
            server.shutdown()
            server.server_close()


async def _get(url: str) -> int:
    client = new_client()
    try:
        r = await client.get(url, headers={"authorization": "Bearer node-key"})
        return r.status_code
    finally:
        await client.aclose()


def test_node_traffic_never_goes_through_the_environment_proxy(servers: tuple[int, int]) -> None:
    node, proxy = servers
    for host in ("127.0.0.1", "localhost"):
        assert asyncio.run(_get(f"http://{host}:{node}/health")) == 200
    assert len(_Recorder.seen.get(node, [])) == 2
    assert proxy not in _Recorder.seen, _Recorder.seen[proxy]  # no key went to the proxy


def test_a_public_host_still_goes_through_the_proxy(servers: tuple[int, int]) -> None:
    _, proxy = servers
    assert asyncio.run(_get("http://api.example.com/v1/models")) == 200
    assert _Recorder.seen[proxy] == [("http://api.example.com/v1/models", "Bearer node-key")]


@pytest.mark.parametrize(
    ("host", "lan"),
    [
        ("127.0.0.1", True),
        ("192.168.1.20", True),
        ("10.0.0.5", True),
        ("169.254.1.1", True),
        ("[::1]", True),
        ("fe80::1", True),
        ("box.local", True),
        ("box", True),
        ("localhost", True),
        ("api.openai.com", False),
        ("8.8.8.8", False),
    ],
)
def test_lan_hosts(host: str, lan: bool) -> None:
    assert lan_host(host) is lan
