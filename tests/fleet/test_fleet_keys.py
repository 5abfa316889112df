"""A joined node serves the fleet on its LAN address with the key its hub minted for it.

Three network namespaces on one bridged LAN (tests/netns.py): a hub, a node and a box running
`edgebox router --hub`. The node joins with a token and runs the command its service unit
runs (`serve --host 0.0.0.0`); the hub records its LAN API address; /v1 from another box
without the node's key is 401; the router, logged in to the hub, gets the key from the hub
and serves a chat through the node with the OpenAI SDK; so does a second joined node running
`serve --fleet`, with the key from its heartbeat answers. The key appears in no log, no node
list and no join output.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from edgebox.fleet.identity import load_identity
from edgebox.provisioning.service import node_command
from tests.netns import Namespace, NetnsLab, netns_lab
from tests.sshnet import REPO

__all__ = ["netns_lab"]

HUB_PORT, NODE_PORT, ROUTER_PORT = 8443, 18080, 8090
MODEL = "smollm2-135m"

LOADED = """
import sys, httpx
try:
    models = httpx.get(sys.argv[1] + "/models", timeout=2).json()["data"]
    print(",".join(sorted(m["id"] for m in models if m.get("status", "loaded") == "loaded")))
except Exception:
    print("")
"""


def _edgebox(ns: Namespace, home: Path, *args: str, timeout: float = 60) -> dict | list:
    done = ns.run(
        [sys.executable, "-m", "edgebox", *args],
        env={"EDGEBOX_HOME": str(home), "PYTHONPATH": str(REPO), "EDGEBOX_SSHD_HOST_KEY": ""},
        timeout=timeout,
    )
    assert done.returncode == 0, f"edgebox {args[0]}: {done.stdout}\n{done.stderr}"
    return json.loads(done.stdout) if "--json" in args else {"stderr": done.stderr}


def _python(ns: Namespace, code: str, *argv: str) -> str:
    done = ns.run([sys.executable, "-c", code, *argv], timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _wait(what: str, check: Callable[[], bool], timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        tail = log.read_text(errors="replace")[-3000:] if log else ""
        assert time.monotonic() < deadline, f"no {what} after {timeout} s\n{tail}"
        time.sleep(0.5)


STATUS = """
import sys, httpx
headers = {"authorization": "Bearer " + sys.argv[2]} if sys.argv[2] else {}
for path in ("/health", "/v1/models"):
    print(httpx.get(sys.argv[1] + path, headers=headers, timeout=5).status_code)
"""

CHAT = """
import sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key="unused", max_retries=0)
raw = client.chat.completions.with_raw_response.create(
    model=sys.argv[2], messages=[{"role": "user", "content": "Say hi."}], max_tokens=4,
    temperature=0)
print(raw.headers["x-edgebox-route"].split(";")[0], bool(raw.parse().choices[0].message.content))
"""

MODELS = """
import sys, httpx
try:
    print(len(httpx.get(sys.argv[1] + "/models", timeout=2).json()["data"]))
except Exception:
    print(0)
"""


def test_a_joined_node_serves_its_lan_address_with_its_key_and_a_hub_router_uses_it(
    netns_lab: NetnsLab, tmp_path: Path
) -> None:
    hub_ns, node_ns = netns_lab.add_node("hub", 1), netns_lab.add_node("node", 2)
    router_ns = netns_lab.add_node("router", 3)
    data, hub_log = tmp_path / "hub", tmp_path / "hub.log"
    hub_ns.popen(
        [
            sys.executable,
            "-m",
            "edgebox",
            "hub",
            "serve",
            "--host",
            "10.77.0.1",
            "--port",
            str(HUB_PORT),
            "--data",
            str(data),
            "--heartbeat-interval",
            "1",
        ],
        log=hub_log,
        env={"EDGEBOX_HOME": str(tmp_path), "PYTHONPATH": str(REPO)},
    )
    _wait("hub", (data / "hub.json").exists, 30, hub_log)
    token = _edgebox(hub_ns, tmp_path, "token", "create", "--json", "--data", str(data))

    node_home = tmp_path / "node-home"
    joined = _edgebox(
        node_ns,
        node_home,
        "join",
        str(token["token"]),
        "--name",
        "box",
        "--no-service",
        "--no-user-keys",
        "--json",
    )
    key = json.loads((node_home / "fleet.json").read_text())["api_key"]
    assert key.startswith("ebk_") and key not in json.dumps(joined)
    # What the service unit runs, with a test port and without mDNS.
    unit = [
        *node_command(sys.executable),
        "--port",
        str(NODE_PORT),
        "--no-mdns",
        "-m",
        MODEL,
        "--ctx",
        "512",
        "--parallel",
        "1",
        "--threads",
        "1",
    ]
    assert unit[-13:-11] == ["--host", "0.0.0.0"]
    node_log = tmp_path / "node.log"
    node_ns.popen(unit, log=node_log, env={"EDGEBOX_HOME": str(node_home)})

    def recorded() -> bool:
        nodes = _edgebox(hub_ns, tmp_path, "hub", "nodes", "--json", "--data", str(data))
        assert isinstance(nodes, list) and key not in json.dumps(nodes)
        return nodes[0].get("api_url") == f"http://10.77.0.2:{NODE_PORT}"

    _wait("LAN API address at the hub", recorded, 90, node_log)

    # From another box: /health is open, /v1 takes the node's own key and nothing else.
    url = f"http://10.77.0.2:{NODE_PORT}"
    assert _python(router_ns, STATUS, url, "").split() == ["200", "401"]
    assert _python(router_ns, STATUS, url, "ebk_wrong").split() == ["200", "401"]
    assert _python(router_ns, STATUS, url, key).split() == ["200", "200"]
    # On the node's own box, loopback clients need no key (as on a node bound to 127.0.0.1).
    local = f"http://127.0.0.1:{NODE_PORT}"
    assert _python(node_ns, STATUS, local, "").split() == ["200", "200"]

    # A router logged in to the hub: the key comes from the hub, over the pinned login.
    router_home = tmp_path / "router-home"
    user_key = load_identity(tmp_path / "user", sshd_host_key=Path("/nonexistent"))
    (tmp_path / "user.pub").write_text(user_key.ssh_public_key + "\n")
    added = _edgebox(
        hub_ns,
        tmp_path,
        "hub",
        "user",
        "add",
        "router",
        "--key",
        str(tmp_path / "user.pub"),
        "--json",
        "--data",
        str(data),
    )
    assert isinstance(added, dict)
    _edgebox(router_ns, router_home, "login", str(added["login"]), "--mdns-wait", "0")
    router_log = tmp_path / "router.log"
    router_ns.popen(
        [
            sys.executable,
            "-m",
            "edgebox",
            "router",
            "--hub",
            "--no-mdns",
            "--port",
            str(ROUTER_PORT),
        ],
        log=router_log,
        env={"EDGEBOX_HOME": str(router_home), "PYTHONPATH": str(REPO)},
    )
    router_url = f"http://127.0.0.1:{ROUTER_PORT}/v1"
    _wait(
        "router model list", lambda: _python(router_ns, MODELS, router_url) != "0", 60, router_log
    )
    assert _python(router_ns, CHAT, router_url, MODEL) == "box True"

    # A second joined node with `serve --fleet`: its heartbeat brings the peer's key, and a
    # client on its own box reaches the peer's model through it.
    front_ns, front_home = netns_lab.add_node("front", 4), tmp_path / "front-home"
    _edgebox(
        front_ns,
        front_home,
        "join",
        str(_edgebox(hub_ns, tmp_path, "token", "create", "--json", "--data", str(data))["token"]),
        "--name",
        "front",
        "--no-service",
        "--authorized-keys",
        str(tmp_path / "front_keys"),
    )
    front_log = tmp_path / "front.log"
    front_ns.popen(
        [
            *node_command(sys.executable),
            "--port",
            str(NODE_PORT),
            "--no-mdns",
            "--fleet",
            "-m",
            MODEL,
            "--alias",
            "front-smol",
            "--ctx",
            "512",
            "--parallel",
            "1",
            "--threads",
            "1",
        ],
        log=front_log,
        env={"EDGEBOX_HOME": str(front_home)},
    )
    front_url = f"http://127.0.0.1:{NODE_PORT}/v1"
    _wait(
        "the peer's model at the --fleet node",
        # the peer's model, served by the peer (listed loaded there), beside front-smol; models
        # on this box's disk are listed too (available), so the count alone says nothing
        lambda: _python(front_ns, LOADED, front_url) == ",".join(sorted([MODEL, "front-smol"])),
        90,
        front_log,
    )
    assert _python(front_ns, CHAT, front_url, MODEL) == "box True"
    assert "edgebox-user:router" in (tmp_path / "front_keys").read_text()  # users' keys land
    for log in (hub_log, node_log, router_log, front_log):
        assert key not in log.read_text(errors="replace"), f"the node key reached {log.name}"
