"""The real Codex CLI (`codex exec`, npm @openai/codex) completes a turn against a node
through a custom model provider with `wire_api = "responses"`.

Codex sends ~6k tokens of instructions and tools on its first request (more with a project's
AGENTS.md), so the node serves the bundled Gemma 3 270M with a 16k context. The tiny model is
no agent: success is protocol, Codex's requests accepted and its turn never ended by an API
error. `.ci/run` installs the CLI (cached) where `codex_binary` looks for it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import NodeProcess, start_node, wait_until

CODEX_VERSION = "0.169.0"
CODEX_PREFIX = Path(os.environ.get("EDGEBOX_CODEX_PREFIX", Path.home() / ".cache/edgebox-codex"))
INSTALL = f"npm install --prefix {CODEX_PREFIX} @openai/codex@{CODEX_VERSION}"
MODEL = "gemma3-270m"
KEY = "codex-test-key"
TURN_WINDOW_S = 150  # an API error ends `codex exec` within a second
CONFIG = """\
model = "{model}"
model_provider = "edgebox"
model_context_window = 16384

[model_providers.edgebox]
name = "edgebox"
base_url = "{base_url}"
wire_api = "responses"
env_key = "EDGEBOX_API_KEY"
request_max_retries = 0
stream_max_retries = 0
"""


def codex_binary() -> Path:
    installed = CODEX_PREFIX / "node_modules" / ".bin" / "codex"
    found = installed if installed.exists() else shutil.which("codex")
    if found is None:
        pytest.fail(f"the Codex CLI is not installed; install it with: {INSTALL}")
    return Path(found)


@pytest.fixture(scope="module")
def gemma_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    home = tmp_path_factory.mktemp("codex-node")
    args = ("--model", MODEL, "--ctx", "16384", "--parallel", "1", "--api-key", KEY)
    node = start_node(home, *args, "--no-mdns", env={"EDGEBOX_HOME": str(home)})
    yield node
    assert node.stop() == 0, node.log.read_text()


def recorded_responses(node: NodeProcess) -> list[dict[str, object]]:
    records = httpx.get(
        node.url + "/admin/requests", headers={"Authorization": f"Bearer {KEY}"}, timeout=10
    ).json()["data"]
    return [r for r in records if r["kind"] == "responses"]


@pytest.mark.timeout(TURN_WINDOW_S + 120)
def test_codex_exec_runs_its_turn_against_the_node(gemma_node: NodeProcess, tmp_path: Path) -> None:
    """Codex's requests are accepted (an API error makes `codex exec` print ERROR and exit at
    once); when its turn ends within the window it must end cleanly. The tiny model often
    writes on for minutes at temperature 1, so a turn still running at the window's end is
    stopped, and the node must have answered its request with 200."""
    codex = codex_binary()
    codex_home, work = tmp_path / "codex-home", tmp_path / "work"
    codex_home.mkdir()
    work.mkdir()
    config = CONFIG.format(model=MODEL, base_url=gemma_node.base_url)
    (codex_home / "config.toml").write_text(config)
    env = {**os.environ, "CODEX_HOME": str(codex_home), "EDGEBOX_API_KEY": KEY, "NO_COLOR": "1"}
    log = tmp_path / "codex.log"
    started = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(codex), "exec", "--skip-git-repo-check", "-s", "read-only", "Say hi."],
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            returncode: int | None = proc.wait(timeout=TURN_WINDOW_S)
        except subprocess.TimeoutExpired:
            returncode = None
            proc.terminate()
            proc.wait(timeout=30)
    took = time.monotonic() - started
    output = log.read_text()
    assert "ERROR" not in output, output[-4000:]
    if returncode is not None:
        assert returncode == 0, f"codex exec failed after {took:.0f} s:\n{output[-4000:]}"
    wait_until(lambda: recorded_responses(gemma_node), timeout=60, what="the node's record")
    records = recorded_responses(gemma_node)
    assert records and all(r["status"] == 200 for r in records), records
    print(f"codex exec: {'finished' if returncode is not None else 'stopped'} after {took:.0f} s")
