"""The router trusts only verified nodes: a real rogue HTTP server advertised over real mDNS on
loopback gets no request and no key; a rogue advert carrying a hub node's public fingerprint
does not move that node; a pinned node proves its key and gets traffic; a rogue that passes the
challenge on to the real node is caught by the signed address."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgebox.api.identity import key_fingerprint
from edgebox.fleet.identity import load_identity, ssh_fingerprint
from edgebox.fleet.interfaces import LanInterface
from edgebox.fleet.mdns import Advertiser
from edgebox.node.identity_api import NodeSigner
from edgebox.router.app import new_client
from edgebox.router.cloud import SpendLedger
from edgebox.router.config import RouterConfig
from edgebox.router.nodes import NodeSource
from edgebox.router.service import Router
from edgebox.router.sources import HubPeers, MdnsNodes
from edgebox.router.trust import PROOF_CONTEXT, check_proof
from tests.conftest import NodeProcess, start_node

LOOPBACK = [LanInterface("lo", "127.0.0.1", "255.0.0.0")]
NO_SSHD = Path("/nonexistent")
MODEL = "smollm2-135m"
KEY = "sk-edgebox-trust-test-2718"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}


@dataclass
class Rogue:
    """A real HTTP server posing as an idle node with many free slots; records every request."""

    server: ThreadingHTTPServer
    seen: list[dict[str, Any]] = field(default_factory=list)
    relay_to: str | None = None  # pass identity challenges on to this node's URL

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def paths(self) -> list[str]:
        return [r["path"] for r in self.seen]


def _handler(rogue: Rogue) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _answer(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _record(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            rogue.seen.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": dict(self.headers),
                    "body": body,
                }
            )

        def do_GET(self) -> None:
            self._record()
            if self.path == "/health":
                load = {"slots": 16, "running": 0, "queued": 0, "n_ctx": 4096}
                self._answer(200, {"status": "ok", "models": {MODEL: load}})
            elif self.path == "/metrics":  # and claims to be very fast
                text = f'edgebox_decode_tokens_per_second{{model="{MODEL}"}} 100000.0\n'
                data = text.encode()
                self.send_response(200)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            elif self.path.startswith("/edgebox/identity") and rogue.relay_to:
                relayed = httpx.get(rogue.relay_to + self.path, timeout=5)
                self._answer(relayed.status_code, relayed.json())
            else:
                self._answer(
                    404, {"error": {"message": "no", "type": "x", "param": None, "code": None}}
                )

        def do_POST(self) -> None:
            self._record()
            self._answer(
                200,
                {
                    "id": "rogue",
                    "object": "chat.completion",
                    "created": 0,
                    "model": MODEL,
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": "stolen"},
                        }
                    ],
                },
            )

    return Handler


@pytest.fixture
def rogue() -> Iterator[Rogue]:
    box = Rogue(ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler))
    box.server.RequestHandlerClass = _handler(box)
    thread = threading.Thread(target=box.server.serve_forever, daemon=True)
    thread.start()
    yield box
    box.server.shutdown()
    box.server.server_close()


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_a_rogue_advert_next_to_serve_fleet_gets_no_prompt_and_no_key(
    rogue: Rogue, tmp_path: Path
) -> None:
    front = start_node(
        tmp_path,
        "--model",
        MODEL,
        "--parallel",
        "1",
        "--ctx",
        "512",
        "--threads",
        "1",
        "--mdns",
        "--fleet",
        env={
            "EDGEBOX_API_KEY": KEY,
            "EDGEBOX_MDNS_INTERFACES": "lo",
            "EDGEBOX_HOME": str(tmp_path / "front"),
        },
    )
    advert_id = load_identity(tmp_path / "rogue", sshd_host_key=NO_SSHD, name="rogue")

    async def advertise() -> None:
        advert = Advertiser(advert_id, accelerator="cpu", models=[MODEL], interfaces=LOOPBACK)
        await advert.start(rogue.port, api_on_lan=True)
        try:
            # The front's router has seen the advert and polled or challenged it twice.
            await asyncio.to_thread(_wait, lambda: len(rogue.seen) >= 2, 30, "advert not seen")
            for i in range(6):
                chat = {**CHAT, "messages": [{"role": "user", "content": f"Say hi {i}."}]}
                r = await asyncio.to_thread(
                    httpx.post,
                    front.base_url + "/chat/completions",
                    json=chat,
                    headers={"authorization": f"Bearer {KEY}"},
                    timeout=60,
                )
                assert r.status_code == 200 and r.headers["x-edgebox-route"].startswith("local")
        finally:
            await advert.stop()

    try:
        asyncio.run(advertise())
    finally:
        front.stop()
    assert not [p for p in rogue.paths() if p.startswith("/v1/")], rogue.paths()
    for request in rogue.seen:
        assert "authorization" not in {k.lower() for k in request["headers"]}, request
        assert KEY not in json.dumps(request["headers"]) and KEY.encode() not in request["body"]


@dataclass
class Beats:
    """What `HubPeers` reads from a heartbeat answer: the hub's online peers."""

    peers: list[dict[str, Any]]
    hub_url: str = "https://127.0.0.1:8443"  # the hub on this box: nodes at its host


def _router(sources: list[NodeSource], tmp_path: Path, **config: Any) -> Router:
    ledger = SpendLedger(tmp_path / "spend.json", None)
    return Router(RouterConfig(poll_interval_s=60, **config), sources, new_client(), ledger)


async def _chats(router: Router, n: int) -> list[str]:
    routes = []
    for _ in range(n):
        response = await router.handle("/v1/chat/completions", dict(CHAT), {})
        routes.append(response.headers["x-edgebox-route"].split(";")[0])
    return routes


def test_a_rogue_advert_with_a_hub_nodes_fingerprint_does_not_move_it(
    node: NodeProcess, rogue: Rogue, tmp_path: Path
) -> None:
    hub_node = load_identity(tmp_path / "hub-node", sshd_host_key=NO_SSHD, name="hub-node")
    # The hub's record of a node: its public host key and the address its heartbeats came from.
    record = {
        "id": "n1",
        "name": "hub-node",
        "status": "online",
        "models": [MODEL],
        "host_key": hub_node.ssh_public_key,
        "api_url": node.url,
    }
    impostor = load_identity(tmp_path / "impostor", sshd_host_key=NO_SSHD, name="impostor")
    # The rogue copies the hub node's public fingerprint into its own advert.
    forged = Advertiser(
        _with_fp(impostor, hub_node.host_key_fingerprint),
        accelerator="cpu",
        models=[MODEL],
        interfaces=LOOPBACK,
    )

    async def scenario() -> tuple[str, list[str], dict[str, Any]]:
        lan = MdnsNodes(LOOPBACK)
        await lan.start()
        await forged.start(rogue.port, api_on_lan=True)
        router = _router([HubPeers(Beats([record]), lan), lan], tmp_path)
        try:
            await asyncio.to_thread(
                _wait,
                lambda: any(d.node_id == impostor.node_id for d in lan.discovered()),
                15,
                "forged advert not seen",
            )
            await router.poller.poll_once()
            routes = await _chats(router, 6)
            status = router.poller.status
            return status["hub-node"].address.url, routes, {n: s.address for n, s in status.items()}
        finally:
            await forged.stop()
            await lan.stop()
            await router.relay.aclose()
            await router.client.aclose()

    url, routes, addresses = asyncio.run(scenario())
    assert url == node.url  # the hub's address, not the advert's
    assert routes == ["hub-node"] * 6
    assert not [p for p in rogue.paths() if p.startswith("/v1/")]
    listed = [a for a in addresses.values() if a.url.endswith(f":{rogue.port}")]
    assert [a.trust for a in listed] == ["unverified"]  # the advert is listed, unverified


def _with_fp(identity: Any, fingerprint: str) -> Any:
    from dataclasses import replace

    return replace(identity, host_key_fingerprint=fingerprint)


@pytest.fixture(scope="module")
def pinned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """A node with an identity of its own, advertised by the test (not by itself)."""
    home = tmp_path_factory.mktemp("pinned")
    node = start_node(
        home,
        "--model",
        MODEL,
        "--parallel",
        "1",
        "--ctx",
        "512",
        "--threads",
        "1",
        "--no-mdns",
        env={"EDGEBOX_HOME": str(home)},
    )
    yield node
    node.stop()


def test_a_pinned_node_proves_its_key_and_gets_traffic_a_relaying_rogue_does_not(
    pinned: NodeProcess, rogue: Rogue, tmp_path: Path
) -> None:
    node = pinned
    real = load_identity(node.log.parent, sshd_host_key=NO_SSHD)  # that node's identity
    pin = key_fingerprint(real.ssh_public_key)
    rogue.relay_to = node.url  # passes challenges on to the real node
    real_port = int(node.url.rsplit(":", 1)[1])
    genuine = Advertiser(real, accelerator="cpu", models=[MODEL], interfaces=LOOPBACK)
    relayer = Advertiser(
        _renamed(real, tmp_path), accelerator="cpu", models=[MODEL], interfaces=LOOPBACK
    )

    async def scenario() -> tuple[dict[str, Any], list[str]]:
        lan = MdnsNodes(LOOPBACK, pins=[pin])
        await lan.start()
        await genuine.start(real_port, api_on_lan=True)
        await relayer.start(rogue.port, api_on_lan=True)
        router = _router([lan], tmp_path)
        try:
            ports = {str(real_port), str(rogue.port)}
            await asyncio.to_thread(
                _wait,
                lambda: {a.url.rsplit(":", 1)[1] for a in lan.addresses()} >= ports,
                15,
                "adverts not seen",
            )
            await router.poller.poll_once()
            trust = {s.address.url: s.address for s in router.poller.status.values()}
            return trust, await _chats(router, 3)
        finally:
            await genuine.stop()
            await relayer.stop()
            await lan.stop()
            await router.relay.aclose()
            await router.client.aclose()

    trust, routes = asyncio.run(scenario())
    assert trust[node.url].trust == "verified"
    caught = trust[f"http://127.0.0.1:{rogue.port}"]
    assert caught.trust == "unverified" and "signed for 127.0.0.1:" in caught.note
    # by its own name, or name-<id> while an earlier test's node of the same hostname lingers
    assert set(routes) == {trust[node.url].name} and len(routes) == 3
    assert trust[node.url].name in (real.name, f"{real.name}-{real.node_id[:8]}")
    assert not [p for p in rogue.paths() if p.startswith("/v1/")]


def _renamed(identity: Any, tmp_path: Path) -> Any:
    """The real node's id and fingerprint under another mDNS name (a rogue's copy)."""
    from dataclasses import replace

    return replace(identity, name="relayer")


def test_check_proof_refuses_forgeries(tmp_path: Path) -> None:
    ident = load_identity(tmp_path / "n", sshd_host_key=NO_SSHD)
    signer = NodeSigner.from_key_file(ident.node_id, ident.ssh_private_key_path)
    pin = key_fingerprint(signer.public_key)
    assert pin == ssh_fingerprint(ident.ssh_public_key)
    nonce = "n" * 32
    answer = signer.prove(nonce, PROOF_CONTEXT, "10.0.0.5:8080")

    def check(**changes: Any) -> str:
        args: dict[str, Any] = {
            "nonce": nonce,
            "node_id": ident.node_id,
            "address": "10.0.0.5:8080",
            "trusted": {pin},
            **changes,
        }
        return check_proof(answer, **args).reason

    assert check() == "verified"
    assert check(trusted=set()).endswith("is neither pinned nor known to the hub")
    assert check(nonce="m" * 32).startswith("identity proof does not verify")
    assert "signed for 10.0.0.5:8080" in check(address="10.0.0.6:8080")
    assert check(node_id="someone-else").startswith("proof names another node id")
    assert check_proof(
        {"id": "x"}, nonce=nonce, node_id=None, address="a:1", trusted={pin}
    ).reason.startswith("no identity proof")
