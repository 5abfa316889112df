"""Commands that report an action print it as JSON with `--json`, like the listings do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgebox import __version__
from edgebox.cli import app
from edgebox.fleet.identity import load_identity
from edgebox.fleet.known import KnownNode, KnownNodes
from tests.conftest import free_port
from tests.fleet.test_hub import Hub


def test_version_json() -> None:
    result = CliRunner().invoke(app, ["version", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"version": __version__}


def test_nodes_rm_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEBOX_HOME", str(tmp_path))
    KnownNodes().add(KnownNode("abcdef0123", "box-7", "10.1.2.3", 8080, "SHA256:x", time.time()))
    removed = CliRunner().invoke(app, ["nodes", "rm", "box-7", "--json"])
    assert removed.exit_code == 0, removed.output
    assert json.loads(removed.output) == {"id": "abcdef0123", "name": "box-7", "removed": True}
    again = CliRunner().invoke(app, ["nodes", "rm", "box-7", "--json"])
    assert again.exit_code == 1 and "error:" in again.output


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    h = Hub(tmp_path / "hub", free_port(), tmp_path / "hub.log")
    h.start()
    yield h
    h.stop()


def _cli(hub: Hub, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "edgebox", *args, "--json", "--data", str(hub.data)]
    return subprocess.run(cmd, env=os.environ, text=True, capture_output=True, timeout=60)


def test_token_revoke_and_user_rm_json(hub: Hub, tmp_path: Path) -> None:
    made = hub.token(name="box")
    revoked = _cli(hub, "token", "revoke", made["id"])
    assert revoked.returncode == 0, revoked.stderr
    assert json.loads(revoked.stdout) == {"id": made["id"], "revoked": True}
    key = load_identity(tmp_path / "me", sshd_host_key=Path("/nonexistent")).ssh_public_key
    with hub.admin() as admin:
        admin.request("POST", "/v1/hub/users", json={"name": "me", "ssh_public_key": key})
    removed = _cli(hub, "hub", "user", "rm", "me")
    assert removed.returncode == 0, removed.stderr
    assert json.loads(removed.stdout) == {"name": "me", "removed": True}
    gone = _cli(hub, "hub", "user", "rm", "me")
    assert gone.returncode == 1 and gone.stdout == "" and "error:" in gone.stderr
