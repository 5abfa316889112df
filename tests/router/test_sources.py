"""Node sources: real mDNS on loopback (in process) in front of a real node; hub records matched
to mDNS adverts by SSH host-key fingerprint, else reached at the address the hub recorded; and
a real node known only through a real hub, served a chat through a real `edgebox router`."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
from openai import OpenAI

from edgebox.fleet import logins
from edgebox.fleet.advert import DiscoveredNode
from edgebox.fleet.directory import save_login
from edgebox.fleet.identity import load_identity
from edgebox.fleet.interfaces import LanInterface
from edgebox.fleet.join import join
from edgebox.fleet.mdns import Advertiser
from edgebox.router.nodes import NodePoller
from edgebox.router.sources import MdnsNodes, hub_addresses
from tests.conftest import NodeProcess, free_port, start_node
from tests.fleet.test_hub import PROFILE, Hub
from tests.router.conftest import start_router

LOOPBACK = [LanInterface("lo", "127.0.0.1", "255.0.0.0")]
NO_SSHD = Path("/nonexistent")
MODEL = "smollm2-135m"


def test_mdns_source_finds_a_real_node_by_the_api_port_in_its_advert(
    node: NodeProcess, tmp_path: Path
) -> None:
    port = int(node.url.rsplit(":", 1)[1])
    shown = load_identity(tmp_path / "shown", sshd_host_key=NO_SSHD, name="shown")
    hidden = load_identity(tmp_path / "hidden", sshd_host_key=NO_SSHD, name="hidden")

    async def scenario() -> tuple[dict[str, str], int, int]:
        source = MdnsNodes(LOOPBACK)
        await source.start()
        adverts = [
            Advertiser(shown, accelerator="cpu", models=[MODEL], interfaces=LOOPBACK),
            Advertiser(hidden, accelerator="cpu", models=[MODEL], interfaces=LOOPBACK),
        ]
        try:
            await adverts[0].start(port, api_on_lan=True)
            await adverts[1].start(port + 1, api_on_lan=False)  # API on loopback only: no port
            ids = {shown.node_id, hidden.node_id}
            deadline = time.monotonic() + 15
            while {n.node_id for n in source.discovered()} & ids != ids:
                assert time.monotonic() < deadline, "mDNS adverts not seen on loopback"
                await asyncio.sleep(0.1)
            async with httpx.AsyncClient() as client:
                poller = NodePoller([source], client, interval=60)
                await poller.poll_once()
            urls = {a.name: a.url for a in source.addresses()}
            status = poller.status["shown"]
            load = status.models[MODEL]
            return urls, load.slots, load.n_ctx if status.healthy else -1
        finally:
            for advert in adverts:
                await advert.stop()
            await source.stop()

    urls, slots, n_ctx = asyncio.run(scenario())
    assert urls["shown"] == f"http://127.0.0.1:{port}"
    assert "hidden" not in urls  # seen, but it advertised no API port
    assert slots == 4 and n_ctx == 2048  # the shared node: --ctx 2048 per sequence


def _discovered(name: str, fingerprint: str, api_port: int | None) -> DiscoveredNode:
    return DiscoveredNode(
        node_id=name * 4,
        name=name,
        addresses=("10.0.0.7",),
        api_port=api_port,
        host_key_fingerprint=fingerprint,
        accelerator="cpu",
        model_digest="",
        protocol_version=1,
        service_name=f"{name}._edgebox._tcp.local.",
    )


def test_hub_nodes_go_to_their_mdns_address_else_to_the_address_the_hub_recorded(
    tmp_path: Path,
) -> None:
    ids = {n: load_identity(tmp_path / n, sshd_host_key=NO_SSHD, name=n) for n in "abcdefg"}
    host_key = {n: i.ssh_public_key for n, i in ids.items()}  # what the hub stores per node
    answer = {
        "data": [
            {
                "name": "a",
                "status": "online",
                "host_key": host_key["a"],
                "ssh_public_key": host_key["a"],
                "api_url": "http://192.0.2.1:8080",
            },  # also on mDNS: the LAN address, if proved
            {
                "name": "g",
                "status": "online",
                "host_key": host_key["g"],
                "api_url": "http://192.0.2.7:8080",
            },  # on mDNS, but no node key to prove it with
            {"name": "b", "status": "online", "host_key": host_key["b"]},
            {
                "name": "c",
                "status": "offline",
                "host_key": host_key["c"],
                "api_url": "http://192.0.2.3:8080",
            },
            {"name": "d", "status": "online", "host_key": host_key["d"]},
            {
                "name": "e",
                "status": "online",
                "host_key": host_key["e"],
                "api_url": "http://192.0.2.5:9000",
                "api_key": "ebk_e",
            },  # hub-only
            {
                "name": "f",
                "status": "online",
                "host_key": None,
                "api_url": "http://127.0.0.1:9001",
            },  # on the hub's own box
        ]
    }
    from edgebox.fleet.identity import ssh_fingerprint

    lan = [
        _discovered("a-lan", ssh_fingerprint(host_key["a"]), 8080),
        _discovered("c-lan", ssh_fingerprint(host_key["c"]), 8080),
        _discovered("d-lan", ssh_fingerprint(host_key["d"]), None),  # API on loopback only
        _discovered("g-lan", ssh_fingerprint(host_key["g"]), 8080),
    ]
    found, skipped = hub_addresses(answer, lan, "https://hub.example:8443")
    # mDNS never overrides the hub by itself: a's LAN address is tried only as unverified,
    # to be proved with the node key the hub recorded, else its hub address is used.
    assert [(a.name, a.url, a.trust, a.fallback_url) for a in found] == [
        ("a", "http://10.0.0.7:8080", "unverified", "http://192.0.2.1:8080"),
        ("g", "http://192.0.2.7:8080", "hub", None),
        ("e", "http://192.0.2.5:9000", "hub", None),
        ("f", "http://hub.example:9001", "hub", None),
    ]
    assert found[0].keys == {ssh_fingerprint(host_key["a"])}
    assert sorted(skipped) == ["b", "d"]  # c is offline: not listed at all
    # each node's own key from the hub goes with its address (sent once it is trusted)
    assert [a.key for a in found] == [None, None, "ebk_e", None]
    assert "ebk_e" not in repr(found)


def test_a_node_known_only_through_the_hub_answers_a_chat_through_the_router(
    tmp_path: Path,
) -> None:
    hub = Hub(tmp_path / "hub", free_port(), tmp_path / "hub.log", interval=0.5)
    hub.start()
    running: list[NodeProcess] = []
    try:
        home = tmp_path / "node"
        member = join(hub.token(name="hub-only")["token"], home=home, profile=PROFILE)
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
            "--no-tunnel",
            env={"EDGEBOX_HOME": str(home)},
        )
        running.append(node)
        port = int(node.url.rsplit(":", 1)[1])
        deadline = time.monotonic() + 30
        while True:  # the hub pairs the beat's peer address (loopback here) with the API port
            record = hub.get(f"/v1/hub/nodes/{member['node_id']}")
            if record["api_url"] == f"http://127.0.0.1:{port}" and record["status"] == "online":
                break
            assert time.monotonic() < deadline, record
            time.sleep(0.2)
        user_key = load_identity(tmp_path / "user", sshd_host_key=NO_SSHD).ssh_public_key
        with hub.admin() as admin:
            added = admin.request(
                "POST", "/v1/hub/users", json={"name": "me", "ssh_public_key": user_key}
            )
        router_home = tmp_path / "router-home"
        save_login(logins.parse(added["login"]), home=router_home)
        router = start_router(tmp_path, "--hub", env={"EDGEBOX_HOME": str(router_home)})
        running.append(router)  # --no-mdns: the hub is the only way it knows the node

        client = OpenAI(base_url=router.base_url, api_key="unused", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Say hi."}],
            max_tokens=4,
            temperature=0,
        )
        assert raw.headers["x-edgebox-route"].split(";")[0] == "hub-only"
        completion = raw.parse()
        assert completion.model == MODEL and completion.choices[0].message.content
    finally:
        for proc in reversed(running):
            proc.stop()
        hub.stop()


def test_serve_fleet_on_a_joined_node_routes_to_the_hubs_other_nodes(tmp_path: Path) -> None:
    """No mDNS, no user login: a `--fleet` node learns its peers from its heartbeat answers."""
    hub = Hub(tmp_path / "hub", free_port(), tmp_path / "hub.log", interval=0.5)
    hub.start()
    running: list[NodeProcess] = []
    try:
        homes = {name: tmp_path / name for name in ("front", "peer")}
        for name, home in homes.items():
            join(hub.token(name=name)["token"], home=home, profile=PROFILE)
        common = (
            "--model",
            MODEL,
            "--parallel",
            "1",
            "--ctx",
            "512",
            "--threads",
            "1",
            "--no-mdns",
            "--no-tunnel",
        )
        peer = start_node(
            homes["peer"], *common, "--alias", "peer-smol", env={"EDGEBOX_HOME": str(homes["peer"])}
        )
        running.append(peer)
        front = start_node(
            homes["front"], *common, "--fleet", env={"EDGEBOX_HOME": str(homes["front"])}
        )
        running.append(front)
        deadline = time.monotonic() + 30
        while "peer-smol" not in (ids := model_ids(front)):
            assert time.monotonic() < deadline, ids  # heartbeats every 0.5 s carry the peers
            time.sleep(0.3)
        assert MODEL in ids

        client = OpenAI(base_url=front.base_url, api_key="unused", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="peer-smol",
            messages=[{"role": "user", "content": "Say hi."}],
            max_tokens=4,
            temperature=0,
        )
        assert raw.headers["x-edgebox-route"].split(";")[0] == "peer"
        assert raw.parse().choices[0].message.content
    finally:
        for proc in reversed(running):
            proc.stop()
        hub.stop()


def model_ids(node: NodeProcess) -> list[str]:
    return [m["id"] for m in httpx.get(node.base_url + "/models", timeout=5).json()["data"]]


def test_two_nodes_that_share_a_hostname_are_two_nodes_to_the_router_and_top(
    tmp_path: Path,
) -> None:
    """Cloned images: two real nodes both named `ubuntu` (different node ids) advertise on
    loopback; the router polls both and `top` shows both. Before, the router keyed nodes by name
    and kept one, sending it all traffic (`reason=only-choice`)."""
    from edgebox.tui.mdns_source import MdnsSource

    homes = [tmp_path / "clone-a", tmp_path / "clone-b"]
    ids = [load_identity(h, sshd_host_key=NO_SSHD, name="ubuntu") for h in homes]
    common = (
        "--model",
        MODEL,
        "--parallel",
        "1",
        "--ctx",
        "512",
        "--threads",
        "1",
        "--no-mdns",
        "--no-tunnel",
    )
    running: list[NodeProcess] = []
    for home in homes:
        env = {"EDGEBOX_HOME": str(home), "EDGEBOX_SSHD_HOST_KEY": ""}
        running.append(start_node(home, *common, env=env))
    ports = [int(n.url.rsplit(":", 1)[1]) for n in running]

    async def scenario() -> tuple[dict[str, str], set[str], set[str]]:
        source, top = MdnsNodes(LOOPBACK), MdnsSource(interfaces=LOOPBACK)
        await source.start()
        adverts = [
            Advertiser(i, accelerator="cpu", models=[MODEL], interfaces=LOOPBACK) for i in ids
        ]
        try:
            for advert, port in zip(adverts, ports, strict=True):
                await advert.start(port, api_on_lan=True)
            want = {i.node_id for i in ids}
            deadline = time.monotonic() + 15
            while {n.node_id for n in source.discovered()} & want != want:
                assert time.monotonic() < deadline, "mDNS adverts not seen on loopback"
                await asyncio.sleep(0.1)
            async with httpx.AsyncClient() as client:
                poller = NodePoller([source], client, interval=60)
                await poller.poll_once()
            healthy = {s.address.url for s in poller.status.values() if s.healthy}
            urls = {a.name: a.url for a in source.addresses()}
            seen: set[str] = set()
            while seen != want:  # top: one online row per node id
                assert time.monotonic() < deadline + 15, seen
                snap = await top.poll()
                seen = {n.id for n in snap.nodes if n.status == "online"} & want
                await asyncio.sleep(0.2)
            return urls, healthy, seen
        finally:
            for advert in adverts:
                await advert.stop()
            await source.stop()
            await top.aclose()

    try:
        urls, healthy, seen = asyncio.run(scenario())
    finally:
        for node in running:
            node.stop()
    mine = {n.url for n in running}
    assert seen == {i.node_id for i in ids}
    assert mine <= healthy, "the router must poll both clones"
    assert {name: url for name, url in urls.items() if url in mine} == {
        f"ubuntu-{i.node_id[:8]}": n.url for i, n in zip(ids, running, strict=True)
    }  # a shared name gets the id's first 8 characters, as in `edgebox nodes`
