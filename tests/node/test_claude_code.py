"""The real Claude Code (`claude -p`) completes a turn against a node's /v1/messages.

Claude Code sends what it sends a Claude model: `?beta=true`, its beta headers, `x-api-key`, a
system prompt in cached blocks, a dozen tools with JSON schemas, mid-conversation system
entries, `thinking`, `context_management`, `output_config` and max_tokens 32,000, streamed.
Its whole prompt (a 7k-character system prompt and 12 to 21 tools, ~10k tokens) is accepted,
but prefilling it on a loaded 2-core CI box takes minutes, so the test keeps Claude Code's own
flags to a small turn (`CLAUDE_SMALL_TURN`: `--bare`, one tool, a short system prompt) and a
128-token output cap. The bundled model is no agent: the test judges that a turn completes with
no API error, not the answer. Installing Claude Code: tests/agent_clients.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent_clients import (
    AGENT_NODE_ARGS,
    CLAUDE_SMALL_TURN,
    CLAUDE_TURN_S,
    load_average,
    recorded,
    run_claude,
)
from tests.conftest import NodeProcess, start_node

KEY = "claude-code-test-key"


@pytest.fixture(scope="module")
def agent_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    home = tmp_path_factory.mktemp("claude-node")
    node = start_node(home, *AGENT_NODE_ARGS, "--api-key", KEY, "--no-mdns", startup_s=120)
    yield node
    assert node.stop() == 0


@pytest.mark.timeout(CLAUDE_TURN_S + 180)
def test_claude_code_completes_a_turn(agent_node: NodeProcess, tmp_path: Path) -> None:
    result, took = run_claude(agent_node.url, KEY, tmp_path, "Say hello.", *CLAUDE_SMALL_TURN)
    assert result.get("type") == "result" and result.get("is_error") is False, result
    assert result.get("subtype") == "success", result
    turns = recorded(agent_node.url, "messages", KEY)
    assert turns and all(r["status"] == 200 for r in turns), turns
    print(f"Claude Code turn against a node: {took:.1f} s (load {load_average()})")
