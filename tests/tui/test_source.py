"""DirectSource against a real node process on loopback, and against a closed port."""

from __future__ import annotations

import asyncio

import openai

from edgebox.tui.source import DirectSource
from tests.conftest import NodeProcess, free_port

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
    assert [m.name for m in after.models] == [MODEL]
    assert after.models[0].slots == 4
    assert after.tokens_per_s is not None and after.tokens_per_s > 0
    assert after.models[0].tokens_per_s == after.tokens_per_s
    assert after.p50_ttft_s is not None and 0 < after.p50_ttft_s < 30
    assert after.version and after.last_seen and after.url == node.url
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
