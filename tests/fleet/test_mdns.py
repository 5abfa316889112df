"""Real mDNS on loopback and between Linux network namespaces: advertisers, `edgebox nodes`,
the browser."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgebox.fleet.advert import NodeEvent, model_digest
from edgebox.fleet.identity import load_identity
from edgebox.fleet.interfaces import LanInterface
from edgebox.fleet.mdns import Advertiser, NodeBrowser
from tests.netns import Namespace, NetnsLab

REPO = Path(__file__).resolve().parents[2]
NO_SSHD = Path("/nonexistent")  # as EDGEBOX_SSHD_HOST_KEY="" in the nodes: their own key


@dataclass
class AdvertiserProcess:
    ns: Namespace
    home: Path
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def node_id(self) -> str:
        return load_identity(self.home, sshd_host_key=NO_SSHD).node_id

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _env(home: Path) -> dict[str, str]:
    # Every namespace reads the same /etc/ssh; pin each node to its own edgebox key instead.
    return {"EDGEBOX_HOME": str(home), "EDGEBOX_SSHD_HOST_KEY": "", "PYTHONPATH": str(REPO)}


def _edgebox(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgebox", *args]


def start_advertisers(tmp_path: Path, spec: list[tuple[Namespace, str]]) -> list[AdvertiserProcess]:
    """Start `edgebox nodes advertise` in each namespace and wait until each has announced."""
    started = []
    for ns, name in spec:
        home = tmp_path / name
        log = tmp_path / f"{name}.log"
        argv = _edgebox(
            "nodes",
            "advertise",
            "--name",
            name,
            "--port",
            "8080",
            "--model",
            "smollm2-135m",
            "--accelerator",
            "cpu",
        )
        started.append(AdvertiserProcess(ns, home, ns.popen(argv, log=log, env=_env(home)), log))
    deadline = time.monotonic() + 20
    for adv in started:
        while "advertising" not in adv.log.read_text():
            if adv.proc.poll() is not None or time.monotonic() > deadline:
                for a in started:
                    a.stop()
                pytest.fail(f"advertiser in {adv.ns.name} did not start:\n{adv.log.read_text()}")
            time.sleep(0.05)
    return started


def list_nodes(ns: Namespace, tmp_path: Path, *variants: tuple[str, ...]) -> list[list[dict]]:
    """`edgebox nodes --json --wait 2 [ARGS]` in `ns`, once per variant, all at the same time."""
    procs = [
        subprocess.Popen(
            ns.command(_edgebox("nodes", "--json", "--wait", "2", *args)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **_env(tmp_path / f"browser{i}")},
        )
        for i, args in enumerate(variants or [()])
    ]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0, stderr
        results.append(json.loads(stdout))
    return results


LOOPBACK = [LanInterface("lo", "127.0.0.1", "255.0.0.0")]


def test_browser_api_events_on_loopback(tmp_path: Path) -> None:
    """In process, on 127.0.0.1: added, updated (new models), removed (goodbye), in order."""
    identity = load_identity(tmp_path, sshd_host_key=NO_SSHD)
    seen: list[NodeEvent] = []

    async def next_ours(browser: NodeBrowser) -> NodeEvent:
        while True:  # other edgebox nodes on this machine's loopback are not ours to judge
            event = await browser.next_event(timeout=10)
            if event.node.node_id == identity.node_id:
                return event

    async def scenario() -> None:
        browser = NodeBrowser(LOOPBACK, on_event=seen.append)
        await browser.start()
        advertiser = Advertiser(identity, accelerator="cpu", models=["a"], interfaces=LOOPBACK)
        try:
            await advertiser.start(8080, api_on_lan=False)
            added = await next_ours(browser)
            assert added.kind == "added"
            assert added.node.addresses == ("127.0.0.1",) and added.node.api_port is None
            assert browser.nodes[added.node.service_name] == added.node
            await advertiser.update_models(["a", "b"])
            updated = await next_ours(browser)
            assert updated.kind == "updated"
            assert updated.node.model_digest == model_digest(["b", "a"])
            await advertiser.stop()
            removed = await next_ours(browser)
            assert removed.kind == "removed" and removed.node == updated.node
            assert added.node.service_name not in browser.nodes
        finally:
            await advertiser.stop()
            await browser.stop()

    asyncio.run(scenario())
    assert [e.kind for e in seen if e.node.node_id == identity.node_id] == [
        "added",
        "updated",
        "removed",
    ]


def test_a_model_change_during_registration_is_what_later_browsers_see(tmp_path: Path) -> None:
    """`update_models` while `start` is still probing (a model loaded right after `serve`
    starts) waits for the registration, so a browser started afterwards gets the new digest."""
    identity = load_identity(tmp_path, sshd_host_key=NO_SSHD)

    async def scenario() -> str | None:
        advertiser = Advertiser(identity, accelerator="cpu", models=["a"], interfaces=LOOPBACK)
        browser = NodeBrowser(LOOPBACK)
        try:
            starting = asyncio.create_task(advertiser.start(8080, api_on_lan=False))
            await asyncio.sleep(0.05)  # registration has begun; probing takes ~1.5 s
            await advertiser.update_models(["a", "b"])
            await starting
            await browser.start()  # a browser that knows nothing of the first record
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                ours = [n for n in browser.nodes.values() if n.node_id == identity.node_id]
                if ours and ours[0].model_digest == model_digest(["a", "b"]):
                    break
                await asyncio.sleep(0.1)
            return ours[0].model_digest if ours else None
        finally:
            await advertiser.stop()
            await browser.stop()

    assert asyncio.run(scenario()) == model_digest(["a", "b"])


def test_three_nodes_appear_on_a_fourth(netns_lab: NetnsLab, tmp_path: Path) -> None:
    boxes = [netns_lab.add_node(f"n{i}", i) for i in (1, 2, 3)]
    observer = netns_lab.add_node("obs", 9)
    advertisers = start_advertisers(tmp_path, [(ns, f"box{i}") for i, ns in enumerate(boxes, 1)])
    try:
        (nodes,) = list_nodes(observer, tmp_path)
    finally:
        for adv in advertisers:
            adv.stop()
    by_name = {n["name"]: n for n in nodes}
    assert sorted(by_name) == ["box1", "box2", "box3"]
    for i, adv in enumerate(advertisers, 1):
        node, identity = by_name[f"box{i}"], load_identity(adv.home, sshd_host_key=NO_SSHD)
        assert node["id"] == identity.node_id
        assert node["addresses"] == [f"10.77.0.{i}"]
        assert node["api_port"] == 8080
        assert node["accelerator"] == "cpu"
        assert node["ssh_host_key_fingerprint"] == identity.host_key_fingerprint
        assert node["sources"] == ["mdns"]
        # Nothing secret on the wire: neither the private key nor any part of it.
        private = identity.ssh_private_key_path.read_text()
        body = "".join(private.splitlines()[1:-1])
        wire = json.dumps(node)
        assert body[:40] not in wire and "PRIVATE" not in wire
        assert set(node["txt"]) == {"v", "id", "name", "fp", "api", "acc", "md"}


def test_browser_reports_a_stopped_node_removed(netns_lab: NetnsLab, tmp_path: Path) -> None:
    a, b, observer = (netns_lab.add_node(r, i) for r, i in (("a", 1), ("b", 2), ("obs", 9)))
    log = tmp_path / "watch.log"
    watcher = observer.popen(
        _edgebox("nodes", "watch", "--json"), log=log, env=_env(tmp_path / "watch")
    )
    try:
        first, second = start_advertisers(tmp_path, [(a, "alpha"), (b, "beta")])
        try:
            events = _wait_events(log, lambda ev: len(ev) >= 2, timeout=10)
            assert sorted((e["event"], e["node"]["name"]) for e in events) == [
                ("added", "alpha"),
                ("added", "beta"),
            ]
            first.stop()  # SIGTERM: the advertiser says goodbye
            events = _wait_events(log, lambda ev: len(ev) >= 3, timeout=5)
            assert (events[2]["event"], events[2]["node"]["id"]) == ("removed", first.node_id)
            time.sleep(0.5)
            assert len(_events(log)) == 3, "beta must stay"
        finally:
            first.stop()
            second.stop()
    finally:
        watcher.send_signal(signal.SIGTERM)
        watcher.wait(timeout=10)


def test_excluded_interfaces_are_ignored(netns_lab: NetnsLab, tmp_path: Path) -> None:
    box = netns_lab.add_node("box", 1)
    observer = netns_lab.add_node("obs", 9)
    container = netns_lab._namespace("ctr")  # reachable from the observer only via its docker0
    netns_lab.link(observer, "docker0", container, "eth0", third_octet=5)
    box_peer = netns_lab._namespace("boxc")  # the box has a docker0 of its own
    netns_lab.link(box, "docker0", box_peer, "eth0", third_octet=6)
    advertisers = start_advertisers(tmp_path, [(box, "box"), (container, "ctr")])
    try:
        # Control: naming docker0 explicitly does reach the container's advertisement.
        default, chosen = list_nodes(observer, tmp_path, (), ("--interface", "docker0"))
    finally:
        for adv in advertisers:
            adv.stop()
    assert [(n["name"], n["addresses"]) for n in default] == [("box", ["10.77.0.1"])]
    assert [(n["name"], n["addresses"]) for n in chosen] == [("ctr", ["10.77.5.2"])]


def _events(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def _wait_events(log: Path, done, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = _events(log)
        if done(events):
            return events
        time.sleep(0.05)
    raise AssertionError(f"events so far: {_events(log)}\n{log.read_text()}")


@pytest.mark.system
def test_serve_advertises_answers_nodes_add_and_says_goodbye(
    netns_lab: NetnsLab, tmp_path: Path
) -> None:
    box, observer = netns_lab.add_node("srv", 1), netns_lab.add_node("obs", 9)
    log = tmp_path / "watch.log"
    watcher = observer.popen(
        _edgebox("nodes", "watch", "--json"), log=log, env=_env(tmp_path / "watch")
    )
    secret = "sk-edgebox-test-9f8e7d6c5b4a"
    argv = _edgebox(
        "serve",
        "--host",
        "0.0.0.0",
        "--port",
        "8080",
        "--parallel",
        "1",
        "--ctx",
        "512",
        "--threads",
        "1",
    )
    serve_log = tmp_path / "serve.log"
    server = box.popen(
        argv, log=serve_log, env=_env(tmp_path / "srv") | {"EDGEBOX_API_KEY": secret}
    )
    try:
        (added,) = _wait_events(log, lambda ev: len(ev) >= 1, timeout=60)
        node = added["node"]
        assert added["event"] == "added"
        assert (node["addresses"], node["api_port"]) == (["10.77.0.1"], 8080)
        assert node["model_digest"] == model_digest(["smollm2-135m", "all-minilm-l6-v2"])
        assert node["id"] == load_identity(tmp_path / "srv", sshd_host_key=NO_SSHD).node_id
        env = _env(tmp_path / "obs")
        result = observer.run(_edgebox("nodes", "add", "10.77.0.1:8080", "--json"), env=env)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["id"] == node["id"]
        result = observer.run(_edgebox("nodes", "--json", "--wait", "2"), env=env)
        (row,) = json.loads(result.stdout)
        assert row["sources"] == ["mdns", "manual"] and "fingerprint_mismatch" not in row
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=20) == 0, serve_log.read_text()
        events = _wait_events(log, lambda ev: len(ev) >= 2, timeout=5)
        assert (events[1]["event"], events[1]["node"]["id"]) == ("removed", node["id"])
        assert secret not in log.read_text() + result.stdout + serve_log.read_text()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        watcher.send_signal(signal.SIGTERM)
        watcher.wait(timeout=10)
