"""The README's and docs/quickstart.md's commands, verbatim, on a hub, two boxes and a laptop.

Each test runs the documented steps of one section of docs/quickstart.md (conftest.py extracts
them from the Markdown at test time and checks what they print against the shown output), in
document order; the last test fails when the docs hold a step the suite did not run. What the
docs cannot say (which namespace is "box1", the laptop coming home to the LAN, a box losing
power, waiting for the router to find the boxes) is done here, in code, between steps.

System test: root, iproute2, OpenSSH, useradd, setpriv and curl; fails (never skips) without
them; about 3 minutes on 2 busy cores. Step logs: the path printed at the end (pytest -s), or
a directory of your choice in $EDGEBOX_JOURNEY_LOGS.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from tests.journeys.conftest import Journey
from tests.journeys.world import wait_for

pytestmark = [pytest.mark.system, pytest.mark.timeout(900)]

BOXES = ("box1", "box2")


def test_one_node_and_the_openai_sdk(journey: Journey) -> None:
    journey.run("first-serve")
    journey.wait_http("box1", "http://127.0.0.1:8080/health")
    try:
        journey.run("first-sdk")
        journey.run("readme-curl")
        journey.run("readme-sdk")
    finally:  # Ctrl-C, as the docs say, before box1 joins (its node takes the same port)
        assert journey.stop("first-serve") == 0, "the node did not exit cleanly on Ctrl-C"


def test_hub_tokens_and_join(journey: Journey) -> None:
    journey.run("hub-serve")
    journey.run("token-box1")
    journey.run("token-box2")
    assert journey.bound["TOKEN1"] != journey.bound["TOKEN2"]
    journey.run("join-box1")
    units = journey.world["box1"].binds.get("/etc/systemd/system")
    if units is not None:  # systemctl is there but no systemd runs: nothing half-installed
        assert not (units / "edgebox-node.service").exists(), "join left its unit file behind"
    journey.run("serve-box1")
    journey.run("join-box2")
    journey.run("serve-box2")


def test_nodes_and_the_registry(journey: Journey) -> None:
    journey.require("serve-box1", "serve-box2")
    journey.run("nodes")
    journey.run("hub-nodes")
    top = journey.run("hub-top")
    snapshot = json.loads(top[top.index("{") :])
    assert sorted(n["name"] for n in snapshot["nodes"]) == ["box1", "box2"], snapshot


def _authorized(journey: Journey, box: str, key: str) -> bool:
    path = journey.world[box].dir / "root" / ".ssh" / "authorized_keys"
    return path.exists() and key in path.read_text()


def test_laptop_through_the_relay(journey: Journey) -> None:
    journey.require("serve-box1", "serve-box2")
    journey.run("user-add")
    journey.run("login")
    _, _, _, home = journey.world["laptop"].user or ("", 0, 0, Path())
    material = (home / ".edgebox" / "id_ed25519.pub").read_text().split()[1]
    for box in ("box1", "box2"):  # "at their next heartbeat (a few seconds)"
        wait_for(lambda b=box: _authorized(journey, b, material), f"the key on {box}", 20)
    top = journey.run("top")
    snapshot = json.loads(top[top.index("{") :])
    assert sorted(n["name"] for n in snapshot["nodes"]) == ["box1", "box2"], snapshot
    journey.run("ssh-relay")
    journey.run("forward-relay")
    try:
        journey.run("forward-use")
    finally:
        journey.stop("forward-relay")


def test_laptop_at_home_on_the_lan(journey: Journey) -> None:
    journey.require("login")
    journey.world.lan_up("laptop")  # the laptop comes home
    journey.run("sync-home")
    journey.run("ssh-lan")


ROUTE_PROBE = """
import concurrent.futures, json, httpx
def one(i):
    r = httpx.post("http://127.0.0.1:8090/v1/chat/completions", timeout=120, json={
        "model": "smollm2-135m", "max_tokens": 24,
        "messages": [{"role": "user", "content": f"Count to {i + 3}."}]})
    return r.status_code, r.headers.get("x-edgebox-route", "")
with concurrent.futures.ThreadPoolExecutor(8) as pool:
    print(json.dumps(list(pool.map(one, range(8)))))
"""


def _routable(journey: Journey) -> list[str]:
    """The boxes the laptop's router would send requests to now (its /health)."""
    done = journey.world["laptop"].run("curl -s http://127.0.0.1:8090/health", timeout=10)
    try:
        nodes = json.loads(done.stdout)["nodes"]
    except (ValueError, KeyError):
        return []
    return sorted(n for n, s in nodes.items() if s["healthy"] and s["trust"] != "unverified")


def test_router_balances_and_fails_over(journey: Journey) -> None:
    journey.require("login", "sync-home")
    journey.run("router")
    # "it finds the boxes within a few seconds": the hub's list, then each box's proof
    wait_for(lambda: _routable(journey) == ["box1", "box2"], "both boxes in the router", 45)
    journey.run("router-sdk")
    laptop = journey.world["laptop"]
    probe = laptop.dir / "route_probe.py"
    probe.write_text(ROUTE_PROBE)
    probe.chmod(0o644)
    done = laptop.run(f"python {probe}", root=False, timeout=300)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert all(status == 200 for status, _ in results), results
    served = [route.split(";")[0] for _, route in results]
    counts = {b: served.count(b) for b in BOXES}
    print("8 concurrent requests through the router:", counts)
    assert min(counts.values()) >= 2, f"placement piled onto one node: {results}"

    # box2 loses its node: the next request still succeeds, on box1.
    proc, _ = journey.background.pop("serve-box2")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    time.sleep(0.5)
    again = journey.run("router-sdk")
    assert "ran on box1;" in again, again


def test_every_documented_step_is_run_here(journey: Journey) -> None:
    """A step the docs gain must be run by this suite, and a step it runs must be in the docs."""
    source = Path(__file__).read_text()
    here = set(re.findall(r'journey\.run\("([a-z0-9-]+)"', source))
    assert sorted(set(journey.steps) - here) == [], "documented steps no journey test runs"
    assert sorted(here - set(journey.steps)) == [], "steps this suite runs that the docs lost"
