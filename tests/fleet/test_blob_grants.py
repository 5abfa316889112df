"""Model sharing inside one hub's fleet with no shared key: real hubs, real nodes, real CLI.

Two nodes joined to one hub, each with its own /v1 key, pull a model from each other with the
blob grants their heartbeats bring; a node of another hub is refused; so are grants for
another node, from another hub, or used on an inference route. A laptop logged in to the hub
pulls from the nodes with the internet out of reach, and deploys to a node it knows only
through the hub. The hub's blob registry answers after a
restart, before any node has beaten again. No grant reaches a log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgebox.fleet.blob_peers import hub_blob_holders
from edgebox.fleet.hub.client import HubClient
from edgebox.models.store import digest_file
from tests.conftest import NodeProcess, free_port, start_node, wait_until
from tests.fleet.test_hub import Hub

pytestmark = pytest.mark.timeout(420)
ADMIN = "node-admin-key-grants"
DEAD_PROXY = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
NO_INTERNET = DEAD_PROXY | {"NO_PROXY": "127.0.0.1,localhost", "HF_HUB_OFFLINE": "1"}


def _cli(home: Path, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "edgebox", *args],
        env=os.environ | {"EDGEBOX_HOME": str(home), "EDGEBOX_SSHD_HOST_KEY": ""} | (env or {}),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, f"edgebox {args[0]}: {done.stdout}\n{done.stderr}"
    return done.stdout


def _joined_node(
    hub: Hub, home: Path, name: str, model: str, api_key: str, *, older: bool = False
) -> NodeProcess:
    """A node joined to `hub`; `older`: as if it joined before hubs issued grants (no hub
    key in its fleet.json: it learns it from its heartbeat answers)."""
    token = hub.token(name=name)["token"]
    _cli(home, "join", token, "--no-service", "--no-user-keys", "--json")
    if older:
        fleet = json.loads((home / "fleet.json").read_text())
        assert fleet.pop("hub_key")
        (home / "fleet.json").write_text(json.dumps(fleet))
    env = {"EDGEBOX_HOME": str(home), "EDGEBOX_MODELS_DIR": str(home / "models")}
    keys = ("--api-key", api_key, "--admin-key", ADMIN, "--no-mdns", "--no-tunnel")
    return start_node(home, "-m", model, *keys, "--ctx", "512", env=env)


def _pull(node: NodeProcess, body: dict[str, Any]) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {ADMIN}"}
    job = httpx.post(node.url + "/admin/models/pull", json=body, headers=auth, timeout=10)
    assert job.status_code in (200, 202), job.text
    status: dict[str, Any] = {}

    def ended() -> bool:
        url = f"{node.url}/admin/models/pull/{job.json()['job']}"
        status.update(httpx.get(url, headers=auth, timeout=10).json())
        return status["state"] in ("done", "failed", "cancelled")

    wait_until(ended, timeout=120, what="the pull to end", interval=0.3)
    return status


@pytest.fixture
def hubs(tmp_path: Path) -> Iterator[tuple[Hub, Hub]]:
    one = Hub(tmp_path / "hub1", free_port(), tmp_path / "hub1.log", interval=6)
    other = Hub(tmp_path / "hub2", free_port(), tmp_path / "hub2.log", interval=6)
    one.start()
    other.start()
    yield one, other
    one.stop()
    other.stop()


def _grants(hub: Hub, bearer: str | None = None) -> dict[str, str]:
    with hub.admin() as client:
        listed = client.request("GET", "/v1/hub/blob-grants", bearer=bearer)
    return {n["name"]: n["blob_grant"] for n in listed["data"]}


def test_fleet_members_share_model_blobs_with_grants_and_strangers_are_refused(
    hubs: tuple[Hub, Hub], tmp_path: Path, smollm2_path: Path
) -> None:
    hub, other_hub = hubs
    digest, _ = digest_file(smollm2_path)
    size = smollm2_path.stat().st_size
    a = _joined_node(hub, tmp_path / "a", "a", "smollm2-135m", "key-of-a")
    nodes = [a]
    try:
        b_home = tmp_path / "b"
        nodes.append(_joined_node(hub, b_home, "b", "all-minilm-l6-v2", "key-of-b", older=True))
        nodes.append(_joined_node(other_hub, tmp_path / "c", "c", "all-minilm-l6-v2", "key-of-c"))
        b, c = nodes[1], nodes[2]

        def registered() -> bool:
            return len(hub.get(f"/v1/hub/blobs/{digest}")["nodes"]) == 1

        wait_until(registered, timeout=90, what="node a's blob in the hub's registry")
        since = time.time()  # b's next beat brings a (and a grant for it) to b

        def b_beat() -> bool:
            listed = hub.get("/v1/hub/nodes")["data"]
            return any(n["name"] == "b" and n["last_heartbeat"] > since for n in listed)

        wait_until(b_beat, timeout=40, what="a beat of b's after a's blob was registered")
        # b holds neither a's key nor a shared one: its heartbeat's grant for a opens a's blobs
        done = _pull(b, {"spec": "smollm2-135m", "name": "smol"})
        assert done["state"] == "done", done
        assert done["sources"] == {a.url: size}
        # c (another hub's node) sends a its own key: refused, and nothing was fetched
        refused = _pull(c, {"spec": "smollm2-135m", "name": "smol", "peers": [a.url]})
        assert refused["state"] == "failed" and not refused.get("sources")
        _check_grant_refusals(hub, other_hub, a, digest)
        _laptop_pulls_from_the_fleet(hub, tmp_path / "laptop", digest, size, {a.url, b.url})
        _deploy_reaches_a_node_known_only_through_the_hub(tmp_path / "laptop", a)
        _registry_outlives_a_restart(hub, a, digest)
    finally:
        for node in nodes:
            node.stop()
    logs = [n.log.read_text(errors="replace") for n in nodes]
    logs += [hub.log.read_text(), other_hub.log.read_text()]
    assert not any("ebg1." in text for text in logs), "a blob grant reached a log"


def _check_grant_refusals(hub: Hub, other_hub: Hub, a: NodeProcess, digest: str) -> None:
    mine, strangers = _grants(hub), _grants(other_hub)
    blob = f"{a.url}/v1/blobs/{digest}/chunks"

    def get(url: str, grant: str) -> httpx.Response:
        return httpx.get(url, headers={"Authorization": f"Bearer {grant}"}, timeout=10)

    assert get(blob, mine["a"]).status_code == 200
    for grant, why in ((mine["b"], "another node"), (strangers["c"], "signature")):
        answer = get(blob, grant)
        assert answer.status_code == 401 and why in answer.json()["error"]["message"]
        assert grant not in answer.text
    inference = get(f"{a.url}/v1/models", mine["a"])
    assert inference.status_code == 403
    assert inference.json()["error"]["code"] == "grant_out_of_scope"
    chat = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "hi"}]}
    posted = httpx.post(
        f"{a.url}/v1/chat/completions",
        json=chat,
        headers={"Authorization": f"Bearer {mine['a']}"},
        timeout=10,
    )
    assert posted.status_code == 403
    assert get(f"{a.url}/admin/requests", mine["a"]).status_code == 401


def _laptop_pulls_from_the_fleet(
    hub: Hub, home: Path, digest: str, size: int, node_urls: set[str]
) -> None:
    with hub.admin() as client:
        user = client.request("POST", "/v1/hub/users", json={"name": "ann"})
    _cli(home, "login", user["login"], "--json")
    env = NO_INTERNET | {"EDGEBOX_MODELS_DIR": str(home / "models")}
    out = _cli(home, "pull", "smollm2-135m", "--name", "smol", "--json", env=env)
    done = json.loads(out.splitlines()[-1])
    assert done["event"] == "done" and done["sha256"] == [digest], out
    assert set(done["sources"]) <= node_urls and sum(done["sources"].values()) == size
    # what a pull whose digest is known up front asks the hub: the holders only (a holds the
    # model from the start; b once its beat lists what it pulled)
    held = hub_blob_holders([digest], home=home)
    assert held is not None and held <= node_urls and len(held) >= 1, held
    assert hub_blob_holders(["cd" * 32], home=home) == set()
    assert hub_blob_holders([digest], home=home / "not-logged-in") is None


def _deploy_reaches_a_node_known_only_through_the_hub(home: Path, a: NodeProcess) -> None:
    """The laptop sees no node by mDNS or record: `deploy --to a` finds a through the hub,
    and a fetches the manifest of "smol" from b (which holds it) with its grant for b (b
    checks it with the hub key its heartbeat brought)."""
    args = ("deploy", "smol", "--to", "a", "--wait", "0", "--admin-key", ADMIN, "--json")
    outcomes = json.loads(_cli(home, *args, env=NO_INTERNET))
    assert [(o["node"], o["result"]) for o in outcomes] == [(a.url, "placed")], outcomes
    auth = {"Authorization": f"Bearer {ADMIN}"}
    jobs = httpx.get(a.url + "/admin/models/pull", headers=auth, timeout=10).json()["data"]
    assert [(j["state"], j["model"]) for j in jobs] == [("done", "smol")], jobs


def _registry_outlives_a_restart(hub: Hub, a: NodeProcess, digest: str) -> None:
    """a stops (no beat can refill the registry), the hub restarts at once: a new process
    still names a as a holder (its status is read from the file until the sweeper runs)."""
    a_id = next(n["id"] for n in hub.get("/v1/hub/nodes")["data"] if n["name"] == "a")
    assert a.stop() == 0
    hub.stop()
    hub.start()
    with HubClient(hub.info["urls"], hub.info["fingerprint"], bearer=_admin(hub)) as client:
        holders = client.request("GET", f"/v1/hub/blobs/{digest}")["nodes"]
    assert a_id in [n["id"] for n in holders]


def _admin(hub: Hub) -> str:
    return (hub.data / "admin.key").read_text().strip()
