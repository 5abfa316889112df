"""Small things a first hour trips over: help text, the router's own port, paths printed whole,
timestamped warnings from a running node."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from edgebox.fleet.join import join
from tests.conftest import free_port, start_node
from tests.fleet.test_hub import PROFILE, Hub


def edgebox(*args: str, columns: int = 200) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgebox", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ | {"COLUMNS": str(columns)},
    )


def test_router_help_shows_keys_and_a_port_of_its_own() -> None:
    shown = " ".join(edgebox("router", "--help").stdout.split())
    assert "[[keys]]" in shown
    assert re.search(r"--port .*\[default: 8090\]", shown), shown


def test_a_router_without_nodes_names_the_config_table() -> None:
    done = edgebox("router", "--no-mdns", "--no-hub")
    assert done.returncode == 1
    assert "list [[nodes]] in --config" in done.stderr, done.stderr  # not eaten as markup


def test_a_long_path_is_printed_whole_on_a_narrow_terminal() -> None:
    path = "/tmp/a-rather-long-directory-name-for-models/another-level/SmolLM2-135M-Q4.gguf"
    done = edgebox("serve", "--model", path, columns=60)
    assert done.returncode == 1
    assert any(path in line for line in done.stderr.splitlines()), done.stderr  # not cut in two


def test_a_nodes_warnings_carry_timestamps(tmp_path: Path) -> None:
    """A joined node whose hub is down logs heartbeat failures with the time they happened."""
    hub = Hub(tmp_path / "hub", free_port(), tmp_path / "hub.log", interval=0.3)
    hub.start()
    home = tmp_path / "node"
    try:
        join(hub.token(name="box")["token"], home=home, profile=PROFILE)
    finally:
        hub.stop()
    node = start_node(
        home,
        "--model",
        "smollm2-135m",
        "--parallel",
        "1",
        "--ctx",
        "512",
        "--threads",
        "1",
        "--no-mdns",
        "--no-tunnel",
        env={"EDGEBOX_HOME": str(home)},
    )
    try:
        stamp = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
        end = time.monotonic() + 30
        while not (failed := [x for x in node.log.read_text().splitlines() if "heartbeat" in x]):
            assert time.monotonic() < end, node.log.read_text()
            time.sleep(0.2)
        assert re.match(stamp, failed[0]), failed
    finally:
        node.stop()


def test_the_banner_names_the_model_by_its_own_name_and_size() -> None:
    """llama.cpp's description says "llama 256M" for SmolLM2-135M (its size class)."""
    from edgebox.models import resolve_model
    from edgebox.runtimes.llamacpp.model import LlamaCppModel
    from edgebox.runtimes.llamacpp.runtime import describe

    text = describe(LlamaCppModel(resolve_model("smollm2-135m").path))
    assert "135M params" in text and "Q4_1" in text and "256M" not in text
    assert text.lower().startswith("smollm2")
