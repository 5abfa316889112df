"""Attacks on the narrow credentials of a real node process (`tests/models/_blobnode.py`: the
node's real app and key scopes, an empty store, no runtime), over raw sockets so the paths
reach the server as an attacker spells them (a client library would normalise `..`):

- a pull key (`--pull-key`) opens `/admin/models/pull` and nothing else, however the path is
  spelled (dot segments, encoded slashes, double slashes, case, query strings);
- a hub's blob grant opens the blob routes and nothing else, spelled any way;
- a pull started with the pull key does not hand the node's own key to peers its caller
  names (the key would open inference on the node, and on every node sharing it)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgebox.api import blob_grant
from tests.conftest import free_port, wait_healthy

pytestmark = pytest.mark.timeout(120)

TAG = str(os.getpid())
API, ADMIN, PULL = f"sk-api-{TAG}", f"sk-admin-{TAG}", f"sk-pull-{TAG}"
HUB = "sha256:" + "ab" * 32
HUB_KEY = Ed25519PrivateKey.generate()
HERE = Path(__file__).parent.parent / "models"


@dataclass
class Node:
    url: str
    port: int
    proc: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    tmp = tmp_path_factory.mktemp("scopes")
    port, log = free_port(), tmp / "node.log"
    cmd = [sys.executable, str(HERE / "_blobnode.py"), str(tmp / "store"), "127.0.0.1"]
    env = {
        **os.environ,
        "BLOBNODE_PULL_KEY": PULL,
        "BLOBNODE_HUB": HUB,
        "BLOBNODE_HUB_KEY": blob_grant.public_key_text(HUB_KEY),
    }
    proc = subprocess.Popen(
        [*cmd, str(port), API, ADMIN], stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env
    )
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc, log)
    try:
        yield Node(url, port, proc)
    finally:
        proc.kill()
        proc.wait(10)


def _raw(node: Node, method: str, target: str, bearer: str) -> tuple[int, bytes]:
    """Status and body of a request whose target is sent byte for byte."""
    body = b"{}" if method == "POST" else b""
    head = (
        f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {bearer}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            if len(answer) > 1 << 20:
                break
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


PULL_KEY_TRICKS = [
    ("GET", "/admin/requests"),
    ("POST", "/admin/drain"),
    ("POST", "/admin/models/pull/../load"),
    ("POST", "/admin/models/pull/%2e%2e/load"),
    ("POST", "/admin/models/pull/..%2Fload"),
    ("POST", "/admin/models/pull/..%2F..%2Fdrain"),
    ("POST", "/admin/models/pull%2F..%2Fload"),
    ("POST", "/admin/models/pull/x/../../unload"),
    ("GET", "/admin/models/pull/../../requests"),
    ("GET", "//admin/requests"),
    ("GET", "/admin//requests"),
    ("GET", "/ADMIN/requests"),
    ("GET", "/admin/requests?/admin/models/pull"),
    ("GET", "/admin/requests#/admin/models/pull"),
    ("GET", "/admin/models/pullx"),
    ("GET", "/v1/models"),
    ("GET", "http://127.0.0.1/admin/requests"),
]


@pytest.mark.parametrize(("method", "target"), PULL_KEY_TRICKS)
def test_the_pull_key_opens_the_pull_routes_only(node: Node, method: str, target: str) -> None:
    status, body = _raw(node, method, target, PULL)
    assert status in (400, 401, 403, 404, 405), (status, body[:300])
    assert PULL.encode() not in body


def test_the_pull_key_does_open_the_pull_routes(node: Node) -> None:
    status, body = _raw(node, "GET", "/admin/models/pull", PULL)
    assert status == 200, body[:300]


GRANT_TRICKS = [
    ("GET", "/v1/models"),
    ("GET", "/v1/blobs/../models"),
    ("GET", "/v1/blobs/%2e%2e/models"),
    ("GET", "/v1/blobs/..%2Fmodels"),
    ("GET", "/v1/blobs/%2E%2E%2Fmodels"),
    ("POST", "/v1/blobs/../chat/completions"),
    ("POST", "/v1/blobs/x/../../chat/completions"),
    ("POST", "/v1/store/models/../../chat/completions"),
    ("GET", "/v1/store/models/..%2F..%2Fmodels"),
    ("GET", "/v1/store/models/../../../admin/requests"),
    ("GET", "//v1/models"),
    ("GET", "/v1//models"),
    ("GET", "/V1/models"),
    ("GET", "/v1/models?/v1/blobs/"),
    ("GET", "/v1/responses/x?/v1/blobs/"),
    ("GET", "/admin/requests"),
    ("GET", "/v1/blobs/../../admin/requests"),
]


@pytest.mark.parametrize(("method", "target"), GRANT_TRICKS)
def test_a_blob_grant_opens_the_blob_routes_only(node: Node, method: str, target: str) -> None:
    grant = blob_grant.issue(HUB_KEY, hub=HUB, audience="blobnode", subject="m", now=time.time())
    status, body = _raw(node, method, target, grant)
    assert status in (400, 401, 403, 404, 405), (status, body[:300])
    assert b'"object":"list"' not in body.replace(b" ", b"")  # no model list, no job list
    assert grant.encode() not in body


def test_a_blob_grant_does_open_the_blob_routes(node: Node) -> None:
    grant = blob_grant.issue(HUB_KEY, hub=HUB, audience="blobnode", subject="m", now=time.time())
    status, body = _raw(node, "GET", "/v1/blobs/" + "0" * 64, grant)
    assert status == 404, body[:300]  # past the key check: the store has no such blob
    forged = blob_grant.issue(
        Ed25519PrivateKey.generate(), hub=HUB, audience="blobnode", subject="m", now=time.time()
    )
    assert _raw(node, "GET", "/v1/blobs/" + "0" * 64, forged)[0] == 401


class _Listener(BaseHTTPRequestHandler):
    """A "peer" the caller of a pull names: it keeps what each request carried."""

    seen: ClassVar[list[str]] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        type(self).seen.append(self.headers.get("authorization") or "")
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET


def test_a_pull_key_pull_does_not_send_the_node_key_to_a_peer_its_caller_names(
    node: Node,
) -> None:
    _Listener.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Listener)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        peer = f"http://127.0.0.1:{server.server_address[1]}"
        headers = {"authorization": f"Bearer {PULL}"}
        body = {"spec": f"some-model-{TAG}", "peers": [peer]}
        started = httpx.post(node.url + "/admin/models/pull", json=body, headers=headers)
        assert started.status_code == 202, started.text
        job = started.json()["job"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = httpx.get(f"{node.url}/admin/models/pull/{job}", headers=headers).json()
            if status["state"] in ("done", "failed"):
                break
            time.sleep(0.2)
        assert status["state"] == "failed", status
    finally:
        server.shutdown()
        server.server_close()
    assert _Listener.seen, "the named peer was never asked"
    assert not any(API in auth for auth in _Listener.seen), _Listener.seen


def _start_blobnode(tmp: Path, model: Path | None, env: dict[str, str]) -> tuple[Node, Path]:
    port, log = free_port(), tmp / "holder.log"
    cmd = [sys.executable, str(HERE / "_blobnode.py"), str(tmp / "store"), "127.0.0.1"]
    proc = subprocess.Popen(
        [*cmd, str(port), API, ADMIN, *([str(model)] if model else [])],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **env},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return Node(url, port, proc), log
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    pytest.fail(f"the node did not start: {log.read_text()[-2000:]}")


def test_a_peer_that_stops_reading_a_blob_loses_the_connection(
    tmp_path: Path, smollm2_path: Path
) -> None:
    """Slowloris on the response side: a peer asks for a blob and never reads it. uvicorn
    waits for the socket to drain for ever, holding a descriptor and one of the key's
    in-flight places (a fleet key's 128 are shared by every router and peer: enough such
    requests and inference with that key gets 429). A blob send that cannot go out for
    `send_stall_s` ends the response, and the place is given back."""
    env = {"BLOBNODE_SEND_STALL_S": "2"}
    holder, log = _start_blobnode(tmp_path, smollm2_path, env)
    try:
        digest = httpx.get(
            holder.url + "/v1/store/models/smollm2-135m",
            headers={"authorization": f"Bearer {API}"},
            timeout=10,
        ).json()["files"][0]["sha256"]
        size = smollm2_path.stat().st_size
        stuck = []
        for _ in range(3):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", holder.port))
            sock.sendall(
                f"GET /v1/blobs/{digest} HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {API}\r\n\r\n".encode()
            )
            stuck.append(sock)
        time.sleep(6)  # the stall deadline (2 s) and then some
        for sock in stuck:
            sock.settimeout(10)
            got = 0
            try:
                while chunk := sock.recv(1 << 20):
                    got += len(chunk)
            except (ConnectionResetError, TimeoutError):
                pass
            sock.close()
            assert got < size // 2, f"the node still sent {got} of {size} bytes"
        assert holder.proc.poll() is None
        ok = httpx.get(
            f"{holder.url}/v1/blobs/{digest}",
            headers={"authorization": f"Bearer {API}", "range": "bytes=0-1023"},
            timeout=10,
        )
        assert ok.status_code == 206 and len(ok.content) == 1024
    finally:
        holder.proc.kill()
        holder.proc.wait(10)
    assert "Traceback" not in log.read_text()


def test_the_pull_key_does_not_read_the_credentials_in_an_admin_pull_url(tmp_path: Path) -> None:
    """The pull key reads every pull job (`GET /admin/models/pull`), the admin's too: a URL the
    admin pulled with a password or a signed query (`?X-Amz-Signature=…`) showed them in the
    job's spec, its sources and its error. Jobs show such a URL without them."""
    env = {"BLOBNODE_PULL_KEY": PULL, "BLOBNODE_ALLOW_PRIVATE": "1"}
    lan, _ = _start_blobnode(tmp_path, None, env)
    try:
        with socket.socket() as closed:  # a port nothing listens on: the pull fails
            closed.bind(("127.0.0.1", 0))
            port = closed.getsockname()[1]
        secret = f"s3cret-{TAG}"
        spec = f"http://user:{secret}@127.0.0.1:{port}/m.gguf?X-Amz-Signature={secret}x"
        admin = {"authorization": f"Bearer {ADMIN}"}
        started = httpx.post(lan.url + "/admin/models/pull", json={"spec": spec}, headers=admin)
        assert started.status_code == 202, started.text
        assert secret not in started.text
        pull = {"authorization": f"Bearer {PULL}"}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            jobs = httpx.get(lan.url + "/admin/models/pull", headers=pull, timeout=10)
            if all(j["state"] == "failed" for j in jobs.json()["data"]):
                break
            time.sleep(0.2)
        assert jobs.json()["data"] and jobs.json()["data"][0]["error"], jobs.text
        assert secret not in jobs.text, jobs.text
        assert f"127.0.0.1:{port}/m.gguf" in jobs.text  # still says which URL
    finally:
        lan.proc.kill()
        lan.proc.wait(10)


@pytest.mark.parametrize("spec", ["http://[bad/m.gguf", "http://[::1/m.gguf", "https://[zz]:1/m"])
def test_a_url_spec_that_does_not_parse_is_a_400_naming_spec(node: Node, spec: str) -> None:
    headers = {"authorization": f"Bearer {PULL}"}
    r = httpx.post(node.url + "/admin/models/pull", json={"spec": spec}, headers=headers)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "spec", r.text
    assert httpx.get(node.url + "/admin/models/pull", headers=headers).status_code == 200
