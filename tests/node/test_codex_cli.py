"""The real Codex CLI (`codex exec`, npm @openai/codex) completes a turn against a node
through a custom model provider with `wire_api = "responses"`.

Codex sends no output limit and no temperature, so the node runs with `--max-tokens 48`
(`AGENT_NODE_ARGS`): a response that stops at the node's cap is `completed`, and the turn
ends. The test requires a completed turn: `codex exec` exits 0 with no ERROR within
`CODEX_TURN_S`, and the node answered every /v1/responses request with 200. How Codex is
kept to a small turn, and how to install it: tests/agent_clients.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent_clients import AGENT_NODE_ARGS, CODEX_TURN_S, load_average, recorded, run_codex
from tests.conftest import NodeProcess, start_node

KEY = "codex-test-key"


@pytest.fixture(scope="module")
def codex_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    home = tmp_path_factory.mktemp("codex-node")
    args = (*AGENT_NODE_ARGS, "--api-key", KEY, "--no-mdns")
    node = start_node(home, *args, env={"EDGEBOX_HOME": str(home)}, startup_s=120)
    yield node
    assert node.stop() == 0, node.log.read_text()


@pytest.mark.timeout(CODEX_TURN_S + 120)
def test_codex_exec_completes_a_turn_against_the_node(
    codex_node: NodeProcess, tmp_path: Path
) -> None:
    run = run_codex(codex_node.base_url, KEY, tmp_path)
    assert run.returncode == 0, f"codex exec failed after {run.took:.0f} s:\n{run.output[-4000:]}"
    assert "ERROR" not in run.output, run.output[-4000:]
    turns = recorded(codex_node.url, "responses", KEY)
    assert turns and all(r["status"] == 200 for r in turns), turns
    print(f"codex exec against a node: {run.took:.0f} s (load {load_average()})")
