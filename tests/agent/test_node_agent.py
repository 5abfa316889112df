"""`NodeAgent` in this process, with a real model and real HTTP: it starts the node's parts in
order and stops them all, after a clean stop and after a step that fails part-way."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from edgebox.agent import AgentError, NodeAgent, NodeConfig


def _small(port: int) -> NodeConfig:
    return NodeConfig(
        models=("smollm2-135m",),
        port=port,
        ctx=512,
        parallel=1,
        threads=1,
        mdns=False,
        tunnel=False,
    )


def _records(home: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((home / "run").glob("node-*.json"))]


def _closed(agent: NodeAgent) -> bool:
    (runtime,) = agent.runtimes.chat.values()
    return runtime.engine.ctx is None


@pytest.mark.slow  # model loads and a real server in process
def test_a_node_starts_in_order_and_stops_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEBOX_HOME", str(tmp_path))
    agent = NodeAgent(_small(0))
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not _records(tmp_path):  # the record is written once the port is bound
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.05)
    (record,) = _records(tmp_path)
    health = httpx.get(record["url"] + "/health", timeout=5).json()
    assert health["status"] == "ok" and "smollm2-135m" in health["models"]
    assert agent.http is not None
    agent.http.server.should_exit = True  # what SIGINT/SIGTERM do
    thread.join(30)
    assert not thread.is_alive()
    assert _records(tmp_path) == [] and _closed(agent)
    with pytest.raises(httpx.TransportError):
        httpx.get(record["url"] + "/health", timeout=2)


@pytest.mark.slow
def test_a_port_in_use_stops_the_start_and_closes_the_runtimes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEBOX_HOME", str(tmp_path))
    first = NodeAgent(_small(0))
    thread = threading.Thread(target=first.run, daemon=True)
    thread.start()
    while not _records(tmp_path):
        assert thread.is_alive()
        time.sleep(0.05)
    port = int(_records(tmp_path)[0]["port"])
    second = NodeAgent(_small(port))
    try:
        with pytest.raises(SystemExit):  # uvicorn's own exit when it cannot bind
            second.run()
        assert _closed(second) and len(_records(tmp_path)) == 1  # only the first node's
    finally:
        assert first.http is not None
        first.http.server.should_exit = True
        thread.join(30)
    assert _records(tmp_path) == []


def test_a_bad_option_is_refused_before_any_model_loads() -> None:
    with pytest.raises(AgentError, match="--flash-attn must be auto, on or off"):
        NodeConfig(flash_attn="sometimes")
    with pytest.raises(AgentError, match="2 --alias for 1 --model"):
        NodeConfig(models=("a",), aliases=("x", "y"))
    with pytest.raises(AgentError, match="pass --fleet too"):
        from edgebox.router.config import RouterConfig

        NodeConfig(router_config=RouterConfig())
