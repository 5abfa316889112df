"""Peer-to-peer model transfer between node processes on separate hosts (network namespaces
on one bridge, no route to the internet): digests verified, a lying peer caught, a killed
transfer resumed, and no bytes for a peer without the key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgebox.models import resolve_model
from edgebox.models.store import ModelStore
from tests.netns import Namespace, NetnsLab, NetnsUnavailable

pytestmark = [pytest.mark.system, pytest.mark.timeout(240)]

HERE = Path(__file__).parent
API, ADMIN, PORT = "fleet-secret", "admin-secret", 8090


@dataclass
class BlobNode:
    ns: Namespace
    store: ModelStore
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.ns.addresses['eth0']}:{PORT}"


class Lan:
    def __init__(self, lab: NetnsLab, tmp: Path) -> None:
        self.lab, self.tmp = lab, tmp
        self.ctl = lab.add_node("ctl", 250)
        self.nodes: dict[str, BlobNode] = {}

    def start(self, name: str, host: int, *model: str) -> BlobNode:
        node = self.nodes.get(name)
        if node is None:
            ns = self.lab.add_node(name, host)
            node = BlobNode(ns, ModelStore(self.tmp / name), self.tmp / f"{name}.log")
            self.nodes[name] = node
        argv = [sys.executable, str(HERE / "_blobnode.py"), str(node.store.root), "0.0.0.0"]
        # the "internet" here is a LAN address: these nodes allow private pull URLs
        env = {"BLOBNODE_ALLOW_PRIVATE": "1"}
        node.proc = node.ns.popen([*argv, str(PORT), API, ADMIN, *model], log=node.log, env=env)
        deadline = time.monotonic() + 30
        while self.call("GET", node.url + "/health", "")["status"] != 200:
            if node.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"node {name} did not start: {node.log.read_text()[-2000:]}")
            time.sleep(0.2)
        return node

    def internet(self, host: int, folder: Path) -> str:
        """A file server (no key) in a namespace of its own on the LAN: the "internet"."""
        ns = self.lab.add_node("inet", host)
        argv = [sys.executable, str(HERE / "_fileserver.py"), str(folder), "0.0.0.0", str(PORT)]
        proc = ns.popen(argv, log=self.tmp / "inet.log")
        url = f"http://{ns.addresses['eth0']}:{PORT}"
        deadline = time.monotonic() + 30
        while self.call("GET", url + "/health", "")["status"] != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the file server did not start: {(self.tmp / 'inet.log').read_text()}")
            time.sleep(0.2)
        self.inet = ns
        return url

    def call(self, method: str, url: str, key: str, body: object = None) -> dict:
        argv = [sys.executable, str(HERE / "_netclient.py"), method, url, key]
        if body is not None:
            argv.append(json.dumps(body))
        try:
            result = self.ctl.run(argv, timeout=20)
            return json.loads(result.stdout)
        except (ValueError, subprocess.TimeoutExpired):
            return {"status": 0, "body": None}

    def pull(self, node: BlobNode, body: dict) -> str:
        started = self.call("POST", node.url + "/admin/models/pull", ADMIN, body)
        assert started["status"] == 202, started
        return started["body"]["job"]

    def wait(self, node: BlobNode, job: str, timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.call("GET", f"{node.url}/admin/models/pull/{job}", ADMIN)["body"]
            if status and status["state"] in ("done", "failed", "cancelled"):
                return status
            time.sleep(0.3)
        pytest.fail(f"pull {job} on {node.url} did not finish in {timeout} s")


@pytest.fixture
def lan(tmp_path: Path) -> Iterator[Lan]:
    try:
        lab = NetnsLab(subnet=78)
    except NetnsUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield Lan(lab, tmp_path)
    finally:
        lab.close()


@pytest.fixture(scope="module")
def model() -> Path:
    return resolve_model("smollm2-135m").path


def test_two_nodes_get_the_model_from_a_peer_with_digests_verified(lan: Lan, model: Path) -> None:
    a = lan.start("a", 1, str(model))
    b, c = lan.start("b", 2), lan.start("c", 3)
    expected = a.store.get("smollm2-135m")
    assert expected is not None
    status = lan.wait(b, lan.pull(b, {"spec": "smollm2-135m", "peers": [a.url]}))
    assert status["state"] == "done", status
    assert status["sources"] == {a.url: expected.size}
    # c asks by its Hugging Face spec: offline, the peers that pulled it as that spec answer;
    # with two of them the chunks come from both, and all agree
    spec = "example/smol-GGUF:SmolLM2-135M-Instruct.Q4_1.gguf"
    status = lan.wait(c, lan.pull(c, {"spec": spec, "peers": [a.url, b.url]}))
    assert status["state"] == "done" and set(status["sources"]) == {a.url, b.url}, status
    for node in (b, c):
        got = node.store.get("smollm2-135m")
        assert got is not None and got.files[0].sha256 == expected.files[0].sha256
        assert got.files[0].chunks == expected.files[0].chunks
        assert node.store.path_of(got).read_bytes() == model.read_bytes()


def test_a_lying_peer_is_caught_and_the_chunk_fetched_elsewhere(lan: Lan, model: Path) -> None:
    good = lan.start("good", 1, str(model))
    liar = lan.start("liar", 2, str(model), "corrupt")
    d = lan.start("d", 3)
    status = lan.wait(d, lan.pull(d, {"spec": "smollm2-135m", "peers": [liar.url, good.url]}))
    assert status["state"] == "done", status
    assert any(r.startswith(liar.url) and "chunk 2" in r for r in status["rejected"]), status
    assert status["chunks"]["2"] == good.url
    got = d.store.get("smollm2-135m")
    assert got is not None and d.store.path_of(got).read_bytes() == model.read_bytes()


def test_a_peer_without_the_key_gets_401_and_no_bytes(lan: Lan, model: Path) -> None:
    a = lan.start("a", 1, str(model))
    digest = a.store.get("smollm2-135m").files[0].sha256  # type: ignore[union-attr]
    for path in (f"/v1/blobs/{digest}", f"/v1/blobs/{digest}/chunks", "/v1/store/models/x"):
        assert lan.call("GET", a.url + path, "")["status"] == 401
        assert lan.call("GET", a.url + path, "wrong")["status"] == 401
    assert lan.call("GET", a.url + "/v1/blobs/" + "0" * 64, API)["status"] == 404
    assert lan.call("GET", a.url + "/v1/blobs/..%2F..%2Fetc%2Fpasswd", API)["status"] in (400, 404)
    assert lan.call("GET", a.url + "/v1/blobs/" + "A" * 64, API)["status"] == 400
    e = lan.start("e", 2)
    status = lan.wait(
        e, lan.pull(e, {"spec": "smollm2-135m", "peers": [{"url": a.url, "key": "no"}]})
    )
    assert status["state"] == "failed" and "no peer has a model named" in status["error"]


def test_a_transfer_killed_midway_resumes_where_it_stopped(lan: Lan, model: Path) -> None:
    a = lan.start("a", 1, str(model))
    b = lan.start("b", 2)
    size = model.stat().st_size
    job = lan.pull(b, {"spec": "smollm2-135m", "peers": [a.url], "max_rate": 20e6})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = lan.call("GET", f"{b.url}/admin/models/pull/{job}", ADMIN)["body"]
        if status and status["bytes_done"] > size * 0.4:
            break
        time.sleep(0.1)
    assert b.proc is not None
    b.proc.kill()
    b.proc.wait(10)
    partial = b.store.partial_path(a.store.get("smollm2-135m").files[0].sha256)  # type: ignore[union-attr]
    done_before = len(partial.with_suffix(".done").read_text().splitlines())
    assert done_before >= 3
    lan.start("b", 2)
    status = lan.wait(b, lan.pull(b, {"spec": "smollm2-135m", "peers": [a.url]}))
    assert status["state"] == "done", status
    fetched_again = sum(status["sources"].values())
    assert fetched_again <= size - done_before * (8 << 20)  # the verified chunks were kept
    got = b.store.get("smollm2-135m")
    assert got is not None and b.store.path_of(got).read_bytes() == model.read_bytes()
    assert not partial.exists()


def test_the_internet_only_serves_what_no_peer_has(lan: Lan, model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "www"
    folder.mkdir()
    (folder / model.name).symlink_to(model)
    www = lan.internet(9, folder) + f"/files/{model.name}"
    a = lan.start("a", 1, str(model))
    b, c = lan.start("b", 2), lan.start("c", 3)
    digest = a.store.get("smollm2-135m").files[0].sha256  # type: ignore[union-attr]
    body = {"spec": www, "sha256": digest, "name": "smol"}
    status = lan.wait(b, lan.pull(b, {**body, "peers": [a.url]}))
    assert status["state"] == "done" and set(status["sources"]) == {a.url}, status
    status = lan.wait(c, lan.pull(c, {**body, "peers": []}))
    host = www.split("/")[2]
    assert status["state"] == "done" and set(status["sources"]) == {host}, status
    got = c.store.get("smol")
    assert got is not None and got.files[0].sha256 == digest and got.quantisation == "Q4_1"


def test_a_node_finds_its_peers_over_mdns_when_no_peers_are_named(lan: Lan, tmp_path: Path) -> None:
    """Real `edgebox serve` nodes on a LAN without a hub: a pull without `peers` asks the
    mDNS neighbours (sharing a --fleet-key) and gets the model from the one that has it."""
    payload = tmp_path / "rand.gguf"
    payload.write_bytes(b"GGUF" + os.urandom((20 << 20) - 4))  # a GGUF as far as a pull checks
    ModelStore(tmp_path / "a-store").add_local(payload, "rand", link=False)
    nodes = {}
    for name, host in (("a", 1), ("b", 2)):
        ns = lan.lab.add_node(name, host)
        argv = [sys.executable, "-m", "edgebox", "serve", "--host", "0.0.0.0"]
        argv += ["--port", str(PORT), "--fleet-key", API, "--admin-key", ADMIN]
        argv += ["--ctx", "512", "--parallel", "1", "--threads", "1"]
        env = {"EDGEBOX_MODELS_DIR": str(tmp_path / f"{name}-store")}
        env["EDGEBOX_HOME"] = str(tmp_path / f"{name}-home")
        log = tmp_path / f"{name}.log"
        nodes[name] = BlobNode(ns, ModelStore(tmp_path / f"{name}-store"), log)
        nodes[name].proc = ns.popen(argv, log=log, env=env)
    for node in nodes.values():
        deadline = time.monotonic() + 90
        while lan.call("GET", node.url + "/health", "")["status"] != 200:
            assert time.monotonic() < deadline, node.log.read_text()[-2000:]
            time.sleep(0.5)
    b = nodes["b"]
    status = lan.wait(b, lan.pull(b, {"spec": "rand"}))
    assert status["state"] == "done", status
    assert set(status["sources"]) == {nodes["a"].url}
    got = b.store.get("rand")
    assert got is not None and b.store.path_of(got).read_bytes() == payload.read_bytes()
