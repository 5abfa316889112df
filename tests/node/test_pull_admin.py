"""Admin pulls on a real node process (`tests/models/_blobnode.py`) on loopback: at most
MAX_RUNNING_PULLS at once (429 with Retry-After past that), a duplicate joins the running job,
and URL pulls do not reach internal addresses unless the node allows it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from edgebox.node.pull_admin import MAX_RUNNING_PULLS
from tests.conftest import free_port, wait_healthy

pytestmark = pytest.mark.timeout(120)

API, ADMIN = "inference-key-pulls", "admin-key-pulls"
HERE = Path(__file__).parent.parent / "models"


@dataclass
class Node:
    url: str
    proc: subprocess.Popen[bytes]

    def pull(self, body: dict[str, object]) -> httpx.Response:
        headers = {"Authorization": f"Bearer {ADMIN}"}
        return httpx.post(self.url + "/admin/models/pull", json=body, headers=headers, timeout=10)

    def job(self, job: str) -> dict[str, object]:
        headers = {"Authorization": f"Bearer {ADMIN}"}
        answer = httpx.get(f"{self.url}/admin/models/pull/{job}", headers=headers, timeout=10)
        return dict(answer.json())

    def wait(self, job: str, timeout: float = 30) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.job(job)
            if status["state"] in ("done", "failed", "cancelled"):
                return status
            time.sleep(0.2)
        pytest.fail(f"pull {job} did not finish in {timeout} s")


def _node(tmp_path: Path, *, allow_private: bool) -> Iterator[Node]:
    port, log = free_port(), tmp_path / "node.log"
    cmd = [sys.executable, str(HERE / "_blobnode.py"), str(tmp_path / "store"), "127.0.0.1"]
    cmd += [str(port), API, ADMIN]
    env = {**os.environ, "BLOBNODE_ALLOW_PRIVATE": "1" if allow_private else ""}
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc, log)
    try:
        yield Node(url, proc)
    finally:
        proc.kill()
        proc.wait(10)


@pytest.fixture
def lan_node(tmp_path: Path) -> Iterator[Node]:
    """A node started with the allow option (its "internet" is a server on loopback)."""
    yield from _node(tmp_path, allow_private=True)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    yield from _node(tmp_path, allow_private=False)


@pytest.fixture
def www(tmp_path: Path, smollm2_path: Path) -> Iterator[str]:
    """A file server on loopback with three names for the bundled model."""
    folder = tmp_path / "www"
    folder.mkdir()
    for name in ("a.gguf", "b.gguf", "c.gguf"):
        (folder / name).symlink_to(smollm2_path)
    port, log = free_port(), tmp_path / "www.log"
    cmd = [sys.executable, str(HERE / "_fileserver.py"), str(folder), "127.0.0.1", str(port)]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc, log)
    try:
        yield url + "/files"
    finally:
        proc.kill()
        proc.wait(10)


def test_pulls_past_the_cap_get_429_and_a_duplicate_joins_the_running_job(
    lan_node: Node, www: str
) -> None:
    assert MAX_RUNNING_PULLS == 2
    slow = {"max_rate": 1e6}  # ~100 MB at 1 MB/s: both stay running through the test
    first = lan_node.pull({"spec": f"{www}/a.gguf", **slow})
    second = lan_node.pull({"spec": f"{www}/b.gguf", **slow})
    assert first.status_code == 202 and second.status_code == 202, (first.text, second.text)
    third = lan_node.pull({"spec": f"{www}/c.gguf", **slow})
    assert third.status_code == 429, third.text
    assert int(third.headers["Retry-After"]) >= 1
    error = third.json()["error"]
    assert error["code"] == "too_many_pulls" and "2" in error["message"], error
    again = lan_node.pull({"spec": f"{www}/a.gguf", **slow})
    assert again.status_code == 202 and again.json()["job"] == first.json()["job"], again.text
    jobs = httpx.get(
        lan_node.url + "/admin/models/pull",
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=10,
    ).json()["data"]
    assert len(jobs) == 2 and all(j["state"] in ("queued", "running") for j in jobs), jobs
    assert lan_node.proc.poll() is None


class _Metadata(BaseHTTPRequestHandler):
    """An internal service (cloud metadata, a router's admin page) that counts its visitors."""

    hits = 0
    redirect_to = ""

    def log_message(self, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        type(self).hits += 1
        if self.redirect_to and self.path.startswith("/go"):
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
def internal() -> Iterator[ThreadingHTTPServer]:
    _Metadata.hits, _Metadata.redirect_to = 0, ""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Metadata)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _refused(node: Node, spec: str) -> None:
    answer = node.pull({"spec": spec})
    if answer.status_code == 202:  # refused at connect time (a name that resolves late)
        status = node.wait(answer.json()["job"])
        assert status["state"] == "failed" and "internal address" in str(status["error"]), status
        return
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == "spec" and "internal address" in error["message"], error


def test_url_pulls_to_internal_addresses_are_refused_by_default(
    node: Node, internal: ThreadingHTTPServer
) -> None:
    port = internal.server_address[1]
    for host in ("127.0.0.1", "localhost", "[::ffff:127.0.0.1]", "0x7f000001"):
        _refused(node, f"http://{host}:{port}/latest/meta-data")
    for spec in ("http://169.254.169.254/latest/meta-data/", "http://10.1.2.3/m.gguf"):
        _refused(node, spec)
    assert _Metadata.hits == 0  # no request reached the internal service
    assert node.proc.poll() is None


def test_a_node_with_the_allow_option_pulls_from_a_lan_mirror(lan_node: Node, www: str) -> None:
    answer = lan_node.pull({"spec": f"{www}/a.gguf", "name": "mirrored"})
    assert answer.status_code == 202, answer.text
    status = lan_node.wait(answer.json()["job"], timeout=60)
    assert status["state"] == "done" and status["model"] == "mirrored", status
