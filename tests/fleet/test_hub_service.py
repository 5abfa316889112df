"""Service units rendered for systemd and launchd (content only; installing needs a real init)."""

from __future__ import annotations

import plistlib
from pathlib import Path

from edgebox.provisioning.service import (
    LAUNCHD_LABEL,
    node_command,
    render_launchd_plist,
    render_systemd_unit,
)


def test_systemd_unit_runs_the_node_with_its_home_and_restarts() -> None:
    cmd = node_command("/opt/edgebox venv/bin/python")
    unit = render_systemd_unit(cmd, home=Path("/var/lib/edgebox"), user="edgebox")
    lines = unit.splitlines()
    assert "ExecStart='/opt/edgebox venv/bin/python' -m edgebox serve --host 0.0.0.0" in lines
    assert 'Environment="EDGEBOX_HOME=/var/lib/edgebox"' in lines
    assert "Restart=on-failure" in lines and "User=edgebox" in lines
    assert "WantedBy=multi-user.target" in lines
    assert lines.index("[Service]") < lines.index("[Install]")
    user_unit = render_systemd_unit(cmd, home=Path("/h"))
    assert "WantedBy=default.target" in user_unit and "User=" not in user_unit


def test_a_pipx_run_join_points_the_service_at_pipx_not_its_cache() -> None:
    cached = "/root/.local/pipx/.cache/1a2b3c/bin/python"
    cmd = node_command(cached, pipx="/usr/bin/pipx")
    assert cmd[:3] == ["/usr/bin/pipx", "run", "--spec"] and cmd[3].startswith("edgebox==")
    assert cmd[-4:] == ["edgebox", "serve", "--host", "0.0.0.0"]
    lasting = "/root/.local/pipx/venvs/edgebox/bin/python"
    assert node_command(lasting, pipx="/usr/bin/pipx")[:4] == [lasting, "-m", "edgebox", "serve"]


def test_launchd_plist_is_valid_and_keeps_the_node_alive() -> None:
    cmd = ["/Users/a&b/.venv/bin/python", "-m", "edgebox", "serve"]
    plist = plistlib.loads(render_launchd_plist(cmd, home=Path("/Users/a&b/.edgebox")).encode())
    assert plist["Label"] == LAUNCHD_LABEL
    assert plist["ProgramArguments"] == cmd
    assert plist["EnvironmentVariables"] == {"EDGEBOX_HOME": "/Users/a&b/.edgebox"}
    assert plist["RunAtLoad"] is True and plist["KeepAlive"] is True
