"""A peer that lies about a blob, served by a real HTTP server on loopback: a chunk list whose
one chunk is the whole multi-GB file (the fetcher holds a chunk in memory), millions of tiny
chunks, or an answer that never ends. Each is left out, in bounded memory and time."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from edgebox.models.remote import http_client
from edgebox.models.transfer import Peer, peer_chunk_plan

DIGEST = "ab" * 32
SIZE = 40 << 30  # a 40 GB "model"


class _Liar(BaseHTTPRequestHandler):
    sent = 0
    target = ""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        kind = self.path.split("/")[1]
        if kind == "elsewhere":
            self.send_response(302)
            self.send_header("Location", _Liar.target)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if kind in ("redirect", "bytes"):
            self._redirect_or_bytes(kind)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        if kind == "endless":  # a body that never ends (stopped at 128 MB if read on)
            self.wfile.write(b'{"size": 1, "chunk_size": 1, "chunks": ["')
            block = b"a" * (1 << 20)
            while _Liar.sent < 128 << 20:
                self.wfile.write(block)
                _Liar.sent += len(block)
            return
        chunk_size = SIZE if kind == "huge" else 1 << 10
        count = -(-SIZE // chunk_size) if kind == "huge" else 1 << 17
        size = SIZE if kind == "huge" else count * chunk_size
        body = {
            "sha256": DIGEST,
            "size": size,
            "chunk_size": chunk_size,
            "chunks": ["cd" * 32] * count,
        }
        self.wfile.write(json.dumps(body).encode())

    def _redirect_or_bytes(self, kind: str) -> None:
        if kind == "bytes":
            self.send_response(200)
            self.send_header("Content-Length", "1024")
            self.end_headers()
            self.wfile.write(b"z" * 1024)
            return
        self.send_response(302)  # a redirect whose body never ends
        self.send_header("Location", "/bytes/")
        self.end_headers()
        block = b"r" * (1 << 20)
        while _Liar.sent < 128 << 20:
            self.wfile.write(block)
            _Liar.sent += len(block)


@pytest.fixture
def liar() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Liar)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("kind", ["huge", "tiny"])
def test_a_chunk_list_beyond_the_bounds_is_left_out(liar: str, kind: str) -> None:
    plan, holders, left_out = peer_chunk_plan(http_client(), DIGEST, [Peer(f"{liar}/{kind}")])
    assert plan is None and holders == [], plan
    assert "bad chunk list" in left_out[0] and "chunk" in left_out[0], left_out


def test_an_endless_chunk_list_is_cut_off(liar: str) -> None:
    _Liar.sent = 0
    started = time.monotonic()
    plan, _, left_out = peer_chunk_plan(http_client(), DIGEST, [Peer(f"{liar}/endless")])
    assert plan is None and left_out, left_out
    assert _Liar.sent <= 32 << 20, f"read {_Liar.sent >> 20} MB of a chunk list"
    assert time.monotonic() - started < 20


def test_a_redirect_without_end_is_not_read_whole(liar: str) -> None:
    from edgebox.models._ranges import RangeAsk, RangeClient

    _Liar.sent = 0
    buf = bytearray(1024)
    ask = RangeAsk(f"{liar}/redirect", {}, 0, memoryview(buf), lambda n: None)
    RangeClient(timeout=10).read_into(ask)
    assert bytes(buf) == b"z" * 1024
    assert _Liar.sent <= 32 << 20, f"read {_Liar.sent >> 20} MB of a redirect's body"


class _Internal(BaseHTTPRequestHandler):
    """A service inside the LAN that a peer would like the node to call for it."""

    hits = 0

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        _Internal.hits += 1
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")


def test_a_peer_cannot_redirect_the_node_to_another_host(liar: str) -> None:
    from edgebox.models._ranges import RangeAsk, RangeClient, SourceError
    from edgebox.models.transfer import Source

    internal = ThreadingHTTPServer(("127.0.0.1", 0), _Internal)
    threading.Thread(target=internal.serve_forever, daemon=True).start()
    try:
        _Liar.target = f"http://localhost:{internal.server_address[1]}/admin/drain"
        peer = Peer(f"{liar}/elsewhere").blob_source(DIGEST)
        assert isinstance(peer, Source) and peer.kind == "peer"
        ask = RangeAsk(peer.url, {}, 0, memoryview(bytearray(2)), lambda n: None, peer.kind)
        with pytest.raises(SourceError, match="redirect"):
            RangeClient(timeout=10).read_into(ask)
        assert _Internal.hits == 0
        plan, _, left_out = peer_chunk_plan(http_client(), DIGEST, [Peer(f"{liar}/elsewhere")])
        assert plan is None and "HTTP 302" in left_out[0] and _Internal.hits == 0
        # the internet's sources (a Hugging Face file on its CDN) still follow redirects
        ask = RangeAsk(f"{liar}/elsewhere", {}, 0, memoryview(bytearray(2)), lambda n: None)
        RangeClient(timeout=10).read_into(ask)
        assert _Internal.hits == 1
    finally:
        internal.shutdown()
        internal.server_close()
