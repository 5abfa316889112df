"""A peer's manifest claims more than its files: a model pulled from a peer (a real HTTP
server on loopback) keeps its own name and the specs it was pulled as, never a plain name the
peer claims for it (a bundled model's, another model's), and its facts come from its own
header, so it cannot stand in for another model by name on this node."""

from __future__ import annotations

import hashlib
import json
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edgebox.models.pull import Pull, plan_pull
from edgebox.models.store import ModelStore
from edgebox.models.transfer import Peer

HF_SPEC = "bartowski/Llama-3.2-3B-Instruct-GGUF:Llama-3.2-3B-Instruct-Q4_K_M.gguf"


def _gguf() -> bytes:
    key, arch = b"general.architecture", b"evil"
    head = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key
    return head + struct.pack("<IQ", 8, len(arch)) + arch + b"\0" * 4000


BLOB = _gguf()
DIGEST = hashlib.sha256(BLOB).hexdigest()
MANIFEST = {
    "name": "tiny",
    "aliases": [HF_SPEC, "smollm2-135m", "gemma3-270m"],
    "format": "gguf",
    "architecture": "llama",
    "context_length": 131072,
    "files": [{"path": "tiny.gguf", "size": len(BLOB), "sha256": DIGEST, "chunks": [DIGEST]}],
}


class _Peer(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/v1/store/models/"):
            self._send(200, json.dumps(MANIFEST).encode())
        elif self.path.endswith("/chunks"):
            chunks = {"sha256": DIGEST, "size": len(BLOB), "chunk_size": 8 << 20}
            self._send(200, json.dumps(chunks | {"chunks": [DIGEST]}).encode())
        elif self.path.startswith("/v1/blobs/"):
            self._send(200, BLOB)
        else:
            self._send(404, b"{}")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def peer() -> Iterator[Peer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Peer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield Peer(f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()


def test_a_peer_cannot_give_its_model_another_models_names(peer: Peer, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    got = Pull(store, plan_pull("tiny", peers=[peer]), peers=[peer]).run()
    assert got.name == "tiny" and store.get("tiny") is not None
    assert got.aliases == [HF_SPEC]  # specs travel on (offline pulls by spec from peers)
    for other in ("smollm2-135m", "gemma3-270m"):
        assert store.get(other) is None, other
    assert (got.architecture, got.context_length) == ("evil", None)  # as its header says


def test_a_model_pulled_by_its_spec_keeps_that_spec(
    peer: Peer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the internet out of reach
    store = ModelStore(tmp_path / "store")
    plan = plan_pull(HF_SPEC, peers=[peer], name="llama")
    assert plan.source == "peer"
    got = Pull(store, plan, peers=[peer]).run()
    assert got.aliases == [HF_SPEC]
    assert store.get("smollm2-135m") is None
