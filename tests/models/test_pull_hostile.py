"""Hostile pulls through a node's admin API: a real node process (`_blobnode.py`) on loopback.

An admin key lets a caller pull models, not read the node's files: a local-path spec that is
not a model (a secret, a folder of them) is refused, so its bytes never become a blob that
every inference key could then fetch from `/v1/blobs/`.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, wait_healthy

API, ADMIN = "inference-key-hostile", "admin-key-hostile"
NODE = Path(__file__).with_name("_blobnode.py")


@dataclass
class Node:
    url: str
    proc: subprocess.Popen[bytes]

    def post(self, path: str, body: dict[str, object], key: str = ADMIN) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"}
        return httpx.post(self.url + path, json=body, headers=headers, timeout=10)

    def get(self, path: str, key: str = ADMIN) -> httpx.Response:
        return httpx.get(self.url + path, headers={"Authorization": f"Bearer {key}"}, timeout=10)

    def wait(self, job: str, timeout: float = 30) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status: dict[str, object] = self.get(f"/admin/models/pull/{job}").json()
            if status["state"] in ("done", "failed", "cancelled"):
                return status
            time.sleep(0.2)
        pytest.fail(f"pull {job} did not finish in {timeout} s")


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    port = free_port()
    log_path = tmp_path / "node.log"
    log = log_path.open("wb")
    cmd = [sys.executable, str(NODE), str(tmp_path / "store"), "127.0.0.1", str(port), API, ADMIN]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc, log_path)
    try:
        yield Node(url, proc)
    finally:
        proc.kill()
        proc.wait(10)


def _refused_or_failed(node: Node, spec: str) -> None:
    answer = node.post("/admin/models/pull", {"spec": spec})
    if answer.status_code == 202:
        status = node.wait(answer.json()["job"])
        assert status["state"] == "failed", status
        return
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == "spec"


def test_admin_pull_of_a_local_secret_is_refused(node: Node, tmp_path: Path) -> None:
    secret = tmp_path / "id_ed25519"
    secret.write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY-----\nnot a model\n")
    folder = tmp_path / "dotssh"
    folder.mkdir()
    (folder / "authorized_keys").write_text("ssh-ed25519 AAAA secret\n")
    disguised = tmp_path / "model.gguf"
    disguised.symlink_to(secret)
    for spec in (str(secret), str(folder), str(disguised)):
        _refused_or_failed(node, spec)
    models = node.get("/admin/models/pull").json()["data"]
    assert all(job["model"] is None for job in models), models
    import hashlib

    digest = hashlib.sha256(secret.read_bytes()).hexdigest()
    assert node.get(f"/v1/blobs/{digest}", key=API).status_code == 404
    assert node.proc.poll() is None


def _nested_gguf(path: Path, depth: int) -> Path:
    """A GGUF whose one key is an array of arrays of arrays… `depth` deep (12 bytes a level)."""
    import struct

    key = b"general.hostile"
    head = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key
    levels = struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * depth + struct.pack("<IQ", 4, 0)
    path.write_bytes(head + levels + b"\0" * 64)
    return path


def test_deeply_nested_gguf_header_is_read_safely(node: Node, tmp_path: Path) -> None:
    from edgebox.models.gguf_header import read_gguf_info

    hostile = _nested_gguf(tmp_path / "deep.Q4_0.gguf", 20_000)
    started = time.monotonic()
    info = read_gguf_info(hostile)  # a bad header is facts unknown, never an exception
    assert info.architecture is None and info.quantisation == "Q4_0"
    assert time.monotonic() - started < 5
    answer = node.post("/admin/models/pull", {"spec": str(hostile), "name": "deep"})
    assert answer.status_code == 202, answer.text
    status = node.wait(answer.json()["job"])
    assert status["state"] == "done", status
    assert status["model"] == "deep"
    assert node.proc.poll() is None


class _Internal(BaseHTTPRequestHandler):
    """An internal service the node can reach (cloud metadata, a router's admin page)."""

    body = b'{"AccessKeyId": "AKIA-secret", "SecretAccessKey": "not-for-inference-keys"}'

    def log_message(self, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()

    def do_GET(self) -> None:
        self.do_HEAD()
        self.wfile.write(self.body)


def test_admin_pull_of_an_internal_url_is_refused(node: Node) -> None:
    """Refused for its address (the rules: tests/node/test_pull_admin.py)."""
    import hashlib
    import threading
    from http.server import ThreadingHTTPServer

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Internal)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        for spec in (f"{base}/iam/role", f"{base}/iam/role?as=.onnx"):
            answer = node.post("/admin/models/pull", {"spec": spec})
            assert answer.status_code == 400, answer.text  # loopback: an internal address
            assert answer.json()["error"]["param"] == "spec"
    finally:
        server.shutdown()
        server.server_close()
    digest = hashlib.sha256(_Internal.body).hexdigest()
    assert node.get(f"/v1/blobs/{digest}", key=API).status_code == 404
