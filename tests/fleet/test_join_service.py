"""`edgebox join` installing the node service, with systemctl replaced by a script on PATH.

Each join runs as root in a private mount namespace whose /etc/systemd/system is an empty
tmpfs, so the real process writes a real unit file where systemd would read it, and this
machine's own /etc/systemd/system is never touched. A failing systemctl (an init system that
is not running, no permission) must leave no unit file behind and say what to run instead.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fleet.test_hub import Hub, hub

__all__ = ["hub"]

UNIT = "/etc/systemd/system/edgebox-node.service"


def _fake_systemctl(bin_dir: Path, exit_code: int) -> Path:
    bin_dir.mkdir()
    calls = bin_dir / "calls"
    script = bin_dir / "systemctl"
    script.write_text(
        f'#!/bin/sh\necho "$*" >> {shlex.quote(str(calls))}\n'
        f'[ "$1" = enable ] && exit {exit_code}\nexit 0\n'
    )
    script.chmod(0o755)
    return calls


def _join_in_private_mounts(token: str, home: Path, bin_dir: Path) -> tuple[int, str, str]:
    """`edgebox join TOKEN` as root over a private tmpfs /etc/systemd/system; returns its exit
    code, its output and what it left in that directory (the unit, if any)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.fail("this test needs root and unshare (util-linux)", pytrace=False)
    join = shlex.join([sys.executable, "-m", "edgebox", "join", token, "--name", "box"])
    script = (
        "mount -t tmpfs tmpfs /etc/systemd/system && "
        f"{join}; echo rc=$?; echo '--- left:'; cat {UNIT} 2>/dev/null || echo none"
    )
    env = os.environ | {
        "EDGEBOX_HOME": str(home),
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "COLUMNS": "200",
        "EDGEBOX_SSHD_HOST_KEY": "",
    }
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    head, _, left = done.stdout.partition("--- left:\n")
    code = int(head.strip().rsplit("rc=", 1)[1])
    return code, head + done.stderr, left.strip()


def test_a_failing_systemctl_leaves_no_unit_and_says_what_to_run(hub: Hub, tmp_path: Path) -> None:
    calls = _fake_systemctl(tmp_path / "bin", exit_code=1)
    code, output, left = _join_in_private_mounts(hub.token()["token"], tmp_path / "n", calls.parent)
    assert code == 0, output  # the box joined all the same
    assert left == "none", f"unit file left behind:\n{left}"
    assert "enable --now edgebox-node.service" in calls.read_text()  # it really was tried
    flat = " ".join(output.split())
    assert "exited with 1" in flat and f"removed {UNIT} again" in flat, output
    assert "run `edgebox serve --host 0.0.0.0` yourself" in flat, output
    member = json.loads((tmp_path / "n" / "fleet.json").read_text())
    assert member["name"] == "box" and member["api_key"].startswith("ebk_")
    assert member["api_key"] not in output  # the node's key is never printed


def test_a_working_systemctl_gets_a_unit_that_serves_on_every_interface(
    hub: Hub, tmp_path: Path
) -> None:
    calls = _fake_systemctl(tmp_path / "bin", exit_code=0)
    code, output, left = _join_in_private_mounts(hub.token()["token"], tmp_path / "n", calls.parent)
    assert code == 0, output
    exec_start = next(line for line in left.splitlines() if line.startswith("ExecStart="))
    assert shlex.split(exec_start.removeprefix("ExecStart="))[1:] == [
        "-m",
        "edgebox",
        "serve",
        "--host",
        "0.0.0.0",
    ]
    assert f'Environment="EDGEBOX_HOME={tmp_path / "n"}"' in left
    assert calls.read_text().splitlines() == ["daemon-reload", "enable --now edgebox-node.service"]
    assert f"service: systemd unit {UNIT}" in output
