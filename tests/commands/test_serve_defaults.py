"""`edgebox serve`'s documented defaults reach the node's config."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgebox.agent import NodeConfig
from edgebox.node.generation import STREAM_INTERVAL_S


def test_serve_streams_once_per_16_ms_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgebox.cli import app
    from edgebox.commands import serve

    configs: list[NodeConfig] = []
    monkeypatch.setenv("EDGEBOX_HOME", str(tmp_path))
    monkeypatch.setattr(serve, "run_node", configs.append)
    result = CliRunner().invoke(app, ["serve", "--no-mdns", "--no-tunnel"])
    assert result.exit_code == 0, result.output
    assert configs[0].stream_interval == pytest.approx(STREAM_INTERVAL_S)  # README: 16 ms
    assert NodeConfig().stream_interval == pytest.approx(STREAM_INTERVAL_S)
    result = CliRunner().invoke(app, ["serve", "--stream-interval", "0"])
    assert result.exit_code == 0, result.output
    assert configs[1].stream_interval == 0.0
