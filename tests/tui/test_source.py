"""Sources against real node processes on loopback, closed ports and a hub stand-in."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import openai
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from edgebox.tui.source import DirectSource, HubSource
from tests.conftest import NodeProcess, free_port, start_node, wait_until

MODEL = "smollm2-135m"


def test_direct_source_reads_models_and_a_positive_token_rate(node: NodeProcess) -> None:
    client = openai.OpenAI(base_url=node.base_url, api_key="unused", max_retries=0, timeout=60)

    async def two_polls():
        source = DirectSource([node.url])
        try:
            first = await source.poll()
            for prompt in ("Name a colour.", "Count to five."):
                client.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": prompt}],
                    max_tokens=12,
                    temperature=0,
                )
            return first, await source.poll()
        finally:
            await source.aclose()

    first, second = asyncio.run(two_polls())
    (before,) = first.nodes
    (after,) = second.nodes
    assert before.status == after.status == "online"
    assert before.tokens_per_s is None  # no rate from a single poll
    assert MODEL in [m.name for m in after.models]  # next to the default embedding model
    assert after.models[0].slots == 4
    assert after.tokens_per_s is not None and after.tokens_per_s > 0
    assert after.models[0].tokens_per_s == after.tokens_per_s
    chat = next(m for m in after.models if m.name == MODEL)  # how it is served, for the detail
    assert chat.runtime == "LlamaCppRuntime" and (chat.fast_path or "").startswith("llamacpp: ")
    assert after.p50_ttft_s is not None and 0 < after.p50_ttft_s < 30
    assert after.version and after.last_seen and after.url == node.url
    # /health's hardware and telemetry: this machine's class and memory, its CPU load.
    assert after.hw_class and after.memory_total and after.memory_total > 0
    assert after.memory_used is not None and 0 < after.memory_used <= after.memory_total
    assert after.cpu_pct is not None
    assert second.online == 1 and second.tokens_per_s == after.tokens_per_s


def test_a_closed_port_shows_unreachable_beside_a_live_node(node: NodeProcess) -> None:
    dead = f"http://127.0.0.1:{free_port()}"

    async def poll():
        source = DirectSource([dead, node.url])
        try:
            return await source.poll()
        finally:
            await source.aclose()

    snap = asyncio.run(poll())
    assert [n.status for n in snap.nodes] == ["unreachable", "online"]
    assert snap.nodes[0].url == dead and snap.nodes[0].error
    assert snap.online == 1


def test_a_node_that_stops_turns_unreachable_then_offline_after_the_ttl(tmp_path: Path) -> None:
    proc = start_node(tmp_path, "--parallel", "1", "--ctx", "512")
    source = DirectSource([proc.url], offline_after=1.0)

    async def poll():
        return (await source.poll()).nodes[0]

    try:
        loop = asyncio.new_event_loop()
        alive = loop.run_until_complete(poll())
        assert proc.stop() == 0
        gone = loop.run_until_complete(poll())
        seen = [gone]

        def offline() -> bool:
            seen.append(loop.run_until_complete(poll()))
            return seen[-1].status == "offline"

        # Offline once the 1 s TTL has passed: polled for, at most 1.1 s.
        wait_until(offline, timeout=1.1, what="the stopped node to turn offline")
        later = seen[-1]
        loop.run_until_complete(source.aclose())
        loop.close()
    finally:
        proc.stop()
    assert alive.status == "online" and alive.last_seen is not None
    assert gone.status == "unreachable" and gone.error
    assert gone.last_seen == alive.last_seen
    assert later.status == "offline" and later.last_seen == alive.last_seen and later.error


def test_hub_source_sends_its_token_and_lists_the_hub_nodes() -> None:
    """Against a loopback stand-in for the hub API (the hub is not merged yet)."""
    seen: list[str | None] = []

    async def nodes(request: Request) -> JSONResponse:
        seen.append(request.headers.get("authorization"))
        return JSONResponse(
            {
                "object": "list",
                "data": [  # the shape of edgebox.fleet.hub's answer
                    {
                        "id": "a",
                        "name": "spark",
                        "status": "online",
                        "last_heartbeat": 10.0,
                        "profile": {"hw_class": "nvidia-dgx-spark"},
                        "telemetry": {},
                        "models": ["m"],
                    },
                    {
                        "id": "b",
                        "name": "mac",
                        "status": "offline",
                        "last_heartbeat": 1.0,
                        "profile": {},
                        "telemetry": {},
                        "models": [],
                    },
                    {
                        "id": "c",
                        "name": "old",
                        "status": "revoked",
                        "last_heartbeat": 1.0,
                        "profile": {},
                        "telemetry": {},
                        "models": [],
                    },
                ],
            }
        )

    app = Starlette(routes=[Route("/v1/hub/nodes", nodes)])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.02)

        async def poll():
            source = HubSource(f"http://127.0.0.1:{port}", "secret-token")
            try:
                return await source.poll()
            finally:
                await source.aclose()

        snap = asyncio.run(poll())
    finally:
        server.should_exit = True
        thread.join(10)
    assert seen == ["Bearer secret-token"]
    assert [(n.name, n.status, n.via, n.hw_class) for n in snap.nodes] == [
        ("spark", "online", "hub", "nvidia-dgx-spark"),
        ("mac", "offline", "hub", None),
    ]  # a revoked node is not part of the fleet


def test_an_unreachable_hub_is_one_unreachable_row_without_the_token() -> None:
    async def poll():
        source = HubSource(f"http://127.0.0.1:{free_port()}", "secret-token")
        try:
            return await source.poll()
        finally:
            await source.aclose()

    (hub,) = asyncio.run(poll()).nodes
    assert hub.status == "unreachable" and hub.error and hub.error.startswith("hub:")
    assert "secret" not in hub.model_dump_json()


def test_a_node_seen_directly_and_in_the_hub_list_is_one_row() -> None:
    """`top` on a hub's box, or on a logged-in laptop at home, sees the joined nodes on mDNS and
    in the hub's list: one row each (the live one), matched by key, not by name."""
    from edgebox.fleet.identity import ssh_fingerprint
    from edgebox.tui.parse import node_from_health, node_from_hub
    from edgebox.tui.source import one_row_per_node

    host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOr1cB0ZcRuzyjh2JmR7VMzs0Zg1zDdY2G5RGqjHm3Tm"
    fingerprint = ssh_fingerprint(host_key)
    health = {"node": {"id": "8beaf7df", "name": "box1", "ssh_host_key_fingerprint": fingerprint}}
    direct = node_from_health(
        url="http://10.0.0.11:8080",
        health=health,
        metrics=None,
        previous=None,
        elapsed_s=None,
        seen_at=1.0,
    )
    hub_entry = {"id": "node_1", "name": "box1", "status": "online", "host_key": host_key}
    same = node_from_hub(hub_entry)
    other = node_from_hub({"id": "node_2", "name": "box1", "status": "online"})  # no key: kept
    assert direct.key_fingerprints == same.key_fingerprints == (ssh_fingerprint(host_key),)
    assert one_row_per_node([direct, same, other]) == (direct, other)
    offline = direct.model_copy(update={"status": "unreachable"})
    assert one_row_per_node([offline, same]) == (offline, same)  # the hub's view still counts
