"""Run the real agent CLIs, Codex (`codex exec`) and Claude Code (`claude -p`), against a node
or a router: shared by tests/node/test_codex_cli.py, tests/node/test_claude_code.py and
tests/router/test_agent_clients.py. `.ci/run` installs both CLIs into caches where these
helpers look for them; a missing CLI fails the test with the command that installs it.

Both CLIs talk to the bundled SmolLM2-135M (the fastest bundled chat model: Gemma 3 270M is
twice its size) on a node started with `AGENT_NODE_ARGS`: an 8k context and `--max-tokens 48`,
since Codex sends no output limit and the tiny model would otherwise write until its context
ends (10+ minutes on a loaded 2-core box). Each CLI is kept to a small turn by its own flags:
Codex's full first request (~6k tokens of instructions and tools, which SmolLM2's 8k context
holds) takes ~3 minutes of prefill on a loaded 2-core box, so `codex exec` runs with short
model instructions and without its multi-agent, goal and web search tools (~1.5k tokens);
test_responses_api.py checks the recorded full request. The tiny model is no agent: these
judge that a turn completes with no API error, not the answer."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

MODEL = "smollm2-135m"
# Neither CLI sends a temperature: at 1 the tiny model rambles past any cap (Claude Code, asked
# for one sentence, wrote 128 tokens of nonsense 4 times running and failed the turn), so the
# node's default is greedy.
AGENT_NODE_ARGS = (
    *("--model", MODEL, "--ctx", "8192", "--parallel", "1"),
    *("--max-tokens", "48", "--temperature", "0"),
)

CODEX_VERSION = "0.169.0"
CODEX_PREFIX = Path(os.environ.get("EDGEBOX_CODEX_PREFIX", Path.home() / ".cache/edgebox-codex"))
CODEX_INSTALL = f"npm install --prefix {CODEX_PREFIX} @openai/codex@{CODEX_VERSION}"
CODEX_TURN_S = 300  # a turn took 48 s at load 5 on a 2-core box
CODEX_CONFIG = """\
model = "{model}"
model_provider = "edgebox"
model_context_window = 8192
model_instructions_file = "{instructions}"
web_search = "disabled"
include_permissions_instructions = false
include_apps_instructions = false
include_environment_context = false

[features]
multi_agent = false
goals = false

[model_providers.edgebox]
name = "edgebox"
base_url = "{base_url}"
wire_api = "responses"
env_key = "EDGEBOX_API_KEY"
request_max_retries = 0
stream_max_retries = 0
"""

CLAUDE_VERSION = "2.1.328"
CLAUDE_DIR = Path(os.environ.get("EDGEBOX_CLAUDE_CODE_DIR", "~/.cache/edgebox/claude-code"))
CLAUDE_INSTALL = f"npm install --prefix {CLAUDE_DIR} @anthropic-ai/claude-code@{CLAUDE_VERSION}"
CLAUDE_TURN_S = 420  # a turn took 142 s on a 2-core box at load 11.6, 10 s idle
CLAUDE_OFFLINE = {  # no update checks, telemetry or error reports: the server is all it may reach
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "CLAUDE_CODE_MAX_OUTPUT_TOKENS": "128",  # else 32,000: the whole context of rambling
}
# Claude Code's whole prompt (~10k tokens) is accepted but takes minutes to prefill here. It
# takes an answer cut at max_tokens for an error (it resumes it 3 times, then fails the turn):
# asked for one sentence, SmolLM2 ended 6 of 6 answers on its own within 71 tokens; with
# "You are a helpful assistant." alone, 2 of 6 ran to 96.
BRIEF = "You are a helpful assistant. Answer in one short sentence."
CLAUDE_SMALL_TURN = ("--bare", "--tools", "Read", "--system-prompt", BRIEF)


def _binary(installed: Path, name: str, install: str) -> Path:
    found = installed if installed.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed; install it with: {install}")
    return Path(found)


def codex_binary() -> Path:
    return _binary(CODEX_PREFIX / "node_modules/.bin/codex", "codex", CODEX_INSTALL)


def claude_binary() -> Path:
    installed = CLAUDE_DIR.expanduser() / "node_modules/.bin/claude"
    return _binary(installed, "claude", CLAUDE_INSTALL)


@dataclass(frozen=True)
class CodexRun:
    returncode: int
    output: str  # stdout and stderr together
    took: float  # seconds


def run_codex(base_url: str, key: str, tmp_path: Path, prompt: str = "Say hi.") -> CodexRun:
    """One `codex exec` turn against `base_url` (…/v1) in a fresh CODEX_HOME; fails the test
    with Codex's output if the turn runs past `CODEX_TURN_S`."""
    home, work = tmp_path / "codex-home", tmp_path / "codex-work"
    home.mkdir()
    work.mkdir()
    instructions = home / "instructions.md"
    instructions.write_text("You are a coding agent. Answer briefly.\n")
    config = CODEX_CONFIG.format(model=MODEL, base_url=base_url, instructions=instructions)
    (home / "config.toml").write_text(config)
    env = {**os.environ, "CODEX_HOME": str(home), "EDGEBOX_API_KEY": key, "NO_COLOR": "1"}
    command = [str(codex_binary()), "exec", "--skip-git-repo-check", "-s", "read-only", prompt]
    log = tmp_path / "codex.log"
    started = time.monotonic()
    with log.open("w") as out:
        try:
            done = subprocess.run(
                command,
                cwd=work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=CODEX_TURN_S,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"codex exec ran past {CODEX_TURN_S} s:\n{log.read_text()[-4000:]}")
    return CodexRun(done.returncode, log.read_text(), time.monotonic() - started)


def run_claude(url: str, key: str, home: Path, *args: str) -> tuple[dict[str, Any], float]:
    """One `claude -p` turn against `url` (no /v1) with HOME at `home`: its JSON result and
    the seconds it took; a non-zero exit fails the test with Claude Code's output."""
    work = home / "work"
    work.mkdir(parents=True, exist_ok=True)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE"))},
        **CLAUDE_OFFLINE,
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": url,
        "ANTHROPIC_API_KEY": key,
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
        timeout=CLAUDE_TURN_S,
    )
    took = time.monotonic() - started
    assert done.returncode == 0, f"claude failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result, took


def recorded(node_url: str, kind: str, key: str | None = None) -> list[dict[str, Any]]:
    """The node's recent requests of one kind (`responses`, `messages`, `chat`)."""
    auth = {"Authorization": f"Bearer {key}"} if key else {}
    records = httpx.get(node_url + "/admin/requests", headers=auth, timeout=10).json()["data"]
    return [r for r in records if r["kind"] == kind]


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())
