"""`edgebox ssh-config install`, `edgebox ssh --dry-run` and their errors, through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgebox.cli import app
from tests.provisioning.test_ssh_config import DOC


@pytest.fixture
def homes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EDGEBOX_HOME", str(tmp_path / "eb"))
    (tmp_path / "eb").mkdir()
    (tmp_path / "eb" / "fleet_nodes.json").write_text(json.dumps(DOC))
    return tmp_path


def test_install_adds_the_include_once(homes: Path) -> None:
    runner = CliRunner()
    first = runner.invoke(app, ["ssh-config", "install", "--json"])
    assert first.exit_code == 0, first.output
    assert json.loads(first.output)["changed"] is True
    second = runner.invoke(app, ["ssh-config", "install", "--json"])
    assert json.loads(second.output)["changed"] is False
    text = (homes / "home" / ".ssh" / "config").read_text()
    assert text == f"Include {homes}/eb/ssh_config\n"
    assert "Host spark.edgebox" in (homes / "eb" / "ssh_config").read_text()


def test_dry_run_prints_the_hub_route(homes: Path) -> None:
    done = CliRunner().invoke(app, ["ssh", "spark", "--via", "hub", "--dry-run", "--", "uptime"])
    assert done.exit_code == 0, done.output
    assert done.output.split() == [
        "ssh",
        "-F",
        f"{homes}/eb/ssh_config",
        "spark.edgebox",
        "--",
        "uptime",
    ]


def test_unknown_node_and_missing_directory_are_one_line_errors(homes: Path) -> None:
    done = CliRunner().invoke(app, ["ssh", "nope", "--dry-run"])
    assert done.exit_code == 1 and "unknown node 'nope' (known: spark)" in done.output
    (homes / "eb" / "fleet_nodes.json").unlink()
    done = CliRunner().invoke(app, ["forward", "spark", "8080"])
    assert done.exit_code == 1 and "join a fleet first" in done.output
    done = CliRunner().invoke(app, ["forward", "spark", "80x"])
    assert done.exit_code == 1 and "REMOTE_PORT[:LOCAL_PORT]" in done.output
