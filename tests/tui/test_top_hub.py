"""`edgebox top` and the hub, through the real CLI against a real hub: on the hub box it finds
the hub by itself; on a laptop `edgebox login` is enough; and what is missing is named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgebox.fleet import logins
from edgebox.fleet.directory import save_login
from edgebox.fleet.heartbeat import Heartbeat
from edgebox.fleet.hub.client import HubClient
from edgebox.fleet.identity import load_identity
from edgebox.fleet.join import join
from tests.conftest import free_port
from tests.fleet.test_hub import PROFILE, Hub


@pytest.fixture
def hub_box(tmp_path: Path) -> Iterator[tuple[Hub, dict]]:
    """A hub whose data dir is the default one of EDGEBOX_HOME=tmp_path/hubbox, with one node
    online (a heartbeat, no API)."""
    hub = Hub(tmp_path / "hubbox" / "hub", free_port(), tmp_path / "hub.log", interval=30)
    hub.start()
    try:
        member = join(hub.token(name="box1")["token"], home=tmp_path / "n", profile=PROFILE)
        with HubClient(member["hub_urls"], member["hub_fingerprint"]) as client:
            Heartbeat(member, models=lambda: ["smollm2-135m"]).beat(client)
        yield hub, member
    finally:
        hub.stop()


def _top(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "EDGEBOX_HUB_TOKEN"}
    cmd = [
        sys.executable,
        "-m",
        "edgebox",
        "top",
        "--once",
        "--json",
        "--interval",
        "0.2",
        "--no-mdns",
        *args,
    ]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=60,
        env=env | {"EDGEBOX_HOME": str(home), "COLUMNS": "200"},
    )


def _rows(done: subprocess.CompletedProcess[str]) -> list[tuple[str, str, str]]:
    assert done.returncode == 0, done.stderr
    return [(n["name"], n["status"], n["via"]) for n in json.loads(done.stdout)["nodes"]]


def test_top_on_the_hub_box_finds_the_hub(hub_box: tuple[Hub, dict], tmp_path: Path) -> None:
    # Only the hub's node: no "127.0.0.1:8080 unreachable" guess beside it.
    assert _rows(_top(home=tmp_path / "hubbox")) == [("box1", "online", "hub")]


def test_a_login_is_all_top_needs_on_a_laptop(hub_box: tuple[Hub, dict], tmp_path: Path) -> None:
    hub, _ = hub_box
    key = load_identity(tmp_path / "me", sshd_host_key=Path("/nonexistent")).ssh_public_key
    with hub.admin() as admin:
        line = admin.request("POST", "/v1/hub/users", json={"name": "me", "ssh_public_key": key})
    laptop = tmp_path / "laptop"
    save_login(logins.parse(line["login"]), home=laptop)
    assert ("box1", "online", "hub") in _rows(_top(home=laptop))
    url = hub.info["urls"][0]
    assert ("box1", "online", "hub") in _rows(_top("--hub", url, home=laptop))


def test_hub_url_alone_says_what_is_missing(hub_box: tuple[Hub, dict], tmp_path: Path) -> None:
    hub, _ = hub_box
    url = hub.info["urls"][0]
    done = _top("--hub", url, home=tmp_path / "stranger")
    assert done.returncode == 1
    assert "fingerprint" in done.stderr and "edgebox login" in done.stderr, done.stderr
    pinned = _top(
        "--hub", url, "--hub-fingerprint", hub.info["fingerprint"], home=tmp_path / "stranger"
    )
    assert pinned.returncode == 1
    assert "--hub-token" in pinned.stderr and "edgebox login" in pinned.stderr, pinned.stderr
    wrong = _top(
        "--hub",
        url,
        "--hub-fingerprint",
        hub.info["fingerprint"],
        "--hub-token",
        "not-the-key",
        home=tmp_path / "stranger",
    )
    (row,) = json.loads(wrong.stdout)["nodes"]
    assert row["status"] == "unreachable" and "refused" in row["error"], row
    assert "not-the-key" not in wrong.stdout + wrong.stderr
