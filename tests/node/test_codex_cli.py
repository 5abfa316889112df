"""The real Codex CLI (`codex exec`, npm @openai/codex) completes a turn against a node
through a custom model provider with `wire_api = "responses"`.

Codex sends ~10k tokens of instructions and tools on its first request, so the node serves
the bundled Gemma 3 270M with a 16k context (SmolLM2's 8k is too small). Success is protocol:
Codex gets through its turn (a text answer, or tool calls and then an answer) without an
error from the API. `.ci/run` installs the CLI (cached) where `codex_binary` looks for it.
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

from tests.conftest import NodeProcess, start_node

CODEX_VERSION = "0.169.0"
CODEX_PREFIX = Path(os.environ.get("EDGEBOX_CODEX_PREFIX", Path.home() / ".cache/edgebox-codex"))
INSTALL = f"npm install --prefix {CODEX_PREFIX} @openai/codex@{CODEX_VERSION}"
MODEL = "gemma3-270m"
KEY = "codex-test-key"
TURN_TIMEOUT_S = 480
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


def test_codex_exec_completes_a_turn_against_the_node(
    gemma_node: NodeProcess, tmp_path: Path
) -> None:
    codex = codex_binary()
    codex_home, work = tmp_path / "codex-home", tmp_path / "work"
    codex_home.mkdir()
    work.mkdir()
    config = CONFIG.format(model=MODEL, base_url=gemma_node.base_url)
    (codex_home / "config.toml").write_text(config)
    env = {**os.environ, "CODEX_HOME": str(codex_home), "EDGEBOX_API_KEY": KEY, "NO_COLOR": "1"}
    started = time.monotonic()
    done = subprocess.run(
        [str(codex), "exec", "--skip-git-repo-check", "-s", "read-only", "Say hi in one word."],
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TURN_TIMEOUT_S,
    )
    took = time.monotonic() - started
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"codex exec failed after {took:.0f} s:\n{output[-4000:]}"
    assert "ERROR" not in output, output[-4000:]
    recent = httpx.get(
        gemma_node.url + "/admin/requests", headers={"Authorization": f"Bearer {KEY}"}, timeout=10
    ).json()
    print(f"codex exec took {took:.0f} s; node saw: {recent}")
