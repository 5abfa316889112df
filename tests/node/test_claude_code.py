"""The real Claude Code (`claude -p`) completes a turn against a node's /v1/messages.

Claude Code sends what it sends a Claude model: `?beta=true`, its beta headers, `x-api-key`, a
system prompt in cached blocks, a dozen tools with JSON schemas, mid-conversation system
entries, `thinking`, `context_management`, `output_config` and max_tokens 32,000, streamed.
Its whole prompt (a 7k-character system prompt and 12 to 21 tools, ~10k tokens) is accepted,
but prefilling it on a loaded 2-core CI box takes minutes, so the test keeps Claude Code's own
flags to a small turn: `--bare`, one tool (`--tools Read`), a short `--system-prompt` and a
64-token output cap; that fits SmolLM2's 8k context. The bundled model is no agent: the test
judges that a turn completes with no API error, not the answer. .ci/run installs Claude Code;
by hand:

    npm install --prefix ~/.cache/edgebox/claude-code @anthropic-ai/claude-code@2.1.328
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import NodeProcess, start_node

MODEL = "smollm2-135m"
KEY = "claude-code-test-key"
VERSION = "2.1.328"
CLAUDE_DIR = Path(os.environ.get("EDGEBOX_CLAUDE_CODE_DIR", "~/.cache/edgebox/claude-code"))
INSTALL = f"npm install --prefix {CLAUDE_DIR} @anthropic-ai/claude-code@{VERSION}"
TURN_TIMEOUT_S = 420  # a turn took 142 s on a 2-core box at load 11.6, 10 s idle
OFFLINE = {  # no update checks, telemetry or error reports: the node is all it may reach
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "CLAUDE_CODE_MAX_OUTPUT_TOKENS": "96",  # else 32,000: the whole context of rambling
}
SMALL_TURN = ("--bare", "--tools", "Read", "--system-prompt", "You are a helpful assistant.")


def claude_binary() -> Path:
    installed = CLAUDE_DIR.expanduser() / "node_modules" / ".bin" / "claude"
    if installed.exists():
        return installed
    found = shutil.which("claude")
    if found is None:
        pytest.fail(f"Claude Code is not installed; install it with: {INSTALL}")
    return Path(found)


@pytest.fixture(scope="module")
def agent_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    node = start_node(
        tmp_path_factory.mktemp("claude-node"),
        "--model",
        MODEL,
        "--ctx",
        "8192",
        "--parallel",
        "1",
        "--api-key",
        KEY,
        startup_s=120,
    )
    yield node
    assert node.stop() == 0


def run_claude(node: NodeProcess, home: Path, *args: str) -> tuple[dict[str, object], float]:
    work = home / "work"
    work.mkdir(parents=True, exist_ok=True)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE"))},
        **OFFLINE,
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": node.url,
        "ANTHROPIC_API_KEY": KEY,
    }
    command = [str(claude_binary()), "-p", *args, "--model", MODEL, "--output-format", "json"]
    started = time.monotonic()
    done = subprocess.run(
        command,
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TURN_TIMEOUT_S,
    )
    took = time.monotonic() - started
    assert done.returncode == 0, f"claude failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1]), took


@pytest.mark.timeout(TURN_TIMEOUT_S + 180)
def test_claude_code_completes_a_turn(agent_node: NodeProcess, tmp_path: Path) -> None:
    result, took = run_claude(agent_node, tmp_path, "Say hello.", *SMALL_TURN)
    assert result.get("type") == "result" and result.get("is_error") is False, result
    assert result.get("subtype") == "success", result
    served = httpx.get(
        agent_node.url + "/admin/requests", headers={"Authorization": f"Bearer {KEY}"}, timeout=10
    ).json()["data"]
    turns = [r for r in served if r["kind"] == "messages"]
    assert turns and all(r["status"] == 200 for r in turns), served
    print(f"Claude Code turn: {took:.1f} s")
