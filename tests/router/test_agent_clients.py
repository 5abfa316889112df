"""The real agent CLIs through the router: `codex exec` (/v1/responses) and `claude -p`
(/v1/messages) pointed at an `edgebox router` with an API key, in front of one node started
with `AGENT_NODE_ARGS` (SmolLM2, 8k context, `--max-tokens 48`). The router translates both
APIs to chat completions; each CLI must complete a turn with no API error and the node must
have answered every chat completion the router sent with 200. How each CLI is kept to a
small turn, and how to install it: tests/agent_clients.py."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.agent_clients import (
    AGENT_NODE_ARGS,
    CLAUDE_SMALL_TURN,
    CLAUDE_TURN_S,
    CODEX_TURN_S,
    load_average,
    recorded,
    run_claude,
    run_codex,
)
from tests.conftest import NodeProcess, start_node
from tests.router.conftest import start_router

pytestmark = pytest.mark.system

KEY = "agent-router-test-key"  # the router's; the node, on loopback behind it, has none


@dataclass(frozen=True)
class Front:
    node: NodeProcess
    router: NodeProcess


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    tmp = tmp_path_factory.mktemp("agent-router")
    node = start_node(tmp, *AGENT_NODE_ARGS, "--no-mdns", startup_s=120)
    try:
        router = start_router(tmp, "--node", node.url, "--api-key", KEY, api_key=KEY)
    except BaseException:
        node.stop()
        raise
    yield Front(node, router)
    router.stop()
    assert node.stop() == 0


def chats_answered(front: Front) -> list[int]:
    return [r["status"] for r in recorded(front.node.url, "chat")]


@pytest.mark.timeout(CODEX_TURN_S + 120)
def test_codex_exec_completes_a_turn_through_the_router(front: Front, tmp_path: Path) -> None:
    before = len(chats_answered(front))
    run = run_codex(front.router.base_url, KEY, tmp_path)
    assert run.returncode == 0, f"codex exec failed after {run.took:.0f} s:\n{run.output[-4000:]}"
    assert "ERROR" not in run.output, run.output[-4000:]
    statuses = chats_answered(front)[before:]
    assert statuses and set(statuses) == {200}, statuses
    print(f"codex exec through the router: {run.took:.0f} s (load {load_average()})")


@pytest.mark.timeout(CLAUDE_TURN_S + 180)
def test_claude_code_completes_a_turn_through_the_router(front: Front, tmp_path: Path) -> None:
    before = len(chats_answered(front))
    result, took = run_claude(front.router.url, KEY, tmp_path, "Say hello.", *CLAUDE_SMALL_TURN)
    assert result.get("type") == "result" and result.get("is_error") is False, result
    assert result.get("subtype") == "success", result
    statuses = chats_answered(front)[before:]
    assert statuses and set(statuses) == {200}, statuses
    print(f"Claude Code turn through the router: {took:.1f} s (load {load_average()})")
