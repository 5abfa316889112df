"""The measurements `bench_engine.py` takes: one level of concurrent completions against an
OpenAI-compatible server, a long prompt's time to first token, and in-process llama-cpp-python;
and the token times of streams an in-process engine runs (`StreamStamps`)."""

from __future__ import annotations

import asyncio
import json
import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

TTFT_PARAGRAPHS = 27  # ~500 tokens with SmolLM2's tokenizer
TOPICS = (
    "a robot who learns to paint",
    "a lighthouse keeper and a storm",
    "a cat that runs a bakery",
    "the last train of the night",
    "a gardener on Mars",
    "a clock that runs backwards",
    "two rival chess players",
    "a map drawn by a child",
)


class StreamStamps:
    """When each token of `n` in-process streams arrived: `sink(i)` is stream i's event sink."""

    def __init__(self, n: int) -> None:
        self.stamps: list[list[float]] = [[] for _ in range(n)]
        self.done = [threading.Event() for _ in range(n)]

    def sink(self, i: int) -> Callable[[Any], None]:
        from edgebox.runtimes.base import FinishEvent, TokenEvent

        def take(event: Any) -> None:
            if isinstance(event, TokenEvent):
                self.stamps[i].append(time.perf_counter())
            elif isinstance(event, FinishEvent):
                self.done[i].set()

        return take

    def wait(self, timeout: float = 300) -> None:
        for event in self.done:
            if not event.wait(timeout):
                raise RuntimeError("a stream did not finish")


@dataclass
class Figures:
    aggregate: list[float] = field(default_factory=list)  # tok/s of each round (all streams)
    decode: list[float] = field(default_factory=list)  # tok/s after the first token, per request
    ttft: list[float] = field(default_factory=list)  # seconds, per request
    failed: int = 0


def story_prompt(tag: str, i: int) -> str:
    return f"Run {tag}-{i} at {time.time_ns()}.\nWrite a short story about {TOPICS[i % 8]}.\n"


def ttft_prompt(tag: str) -> str:
    body = " ".join(
        f"Paragraph {i}: the keeper counted ships, logged the weather and wrote letters."
        for i in range(TTFT_PARAGRAPHS)
    )
    return f"Run {tag} at {time.time_ns()}.\n{body}\nSummary:"


async def streamed(client: httpx.AsyncClient, body: dict) -> tuple[int, float, float, float]:
    """(tokens, ttft, time of the last token, wall) of one streamed completion."""
    started = time.perf_counter()
    first = last = 0.0
    n = 0
    usage = None
    payload = {**body, "stream": True, "stream_options": {"include_usage": True}}
    async with client.stream("POST", "/completions", json=payload) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage") or usage
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                last = time.perf_counter() - started
                first = first or last
                n += 1
    tokens = int(usage["completion_tokens"]) if usage else n
    return tokens, first, last, time.perf_counter() - started


async def whole(client: httpx.AsyncClient, body: dict) -> tuple[int, float, float, float]:
    started = time.perf_counter()
    r = await client.post("/completions", json=body)
    r.raise_for_status()
    wall = time.perf_counter() - started
    return int(r.json()["usage"]["completion_tokens"]), 0.0, 0.0, wall


async def measure_level(
    client: httpx.AsyncClient, c: int, stream: bool, tokens: int, tag: str, figures: Figures
) -> None:
    """One round of `c` concurrent greedy completions of `tokens` tokens."""
    one = streamed if stream else whole
    bodies = [
        {
            "model": "m",
            "prompt": story_prompt(tag, i),
            "max_tokens": tokens,
            "temperature": 0,
            "ignore_eos": True,  # every request runs to `tokens` on both servers
        }
        for i in range(c)
    ]
    t = time.perf_counter()
    done = await asyncio.gather(*(one(client, b) for b in bodies), return_exceptions=True)
    wall = time.perf_counter() - t
    ok = [d for d in done if not isinstance(d, BaseException)]
    for d in done:
        if isinstance(d, BaseException):
            print(f"request failed: {d!r}", file=sys.stderr)
    figures.failed += len(done) - len(ok)
    figures.aggregate.append(sum(n for n, *_ in ok) / wall)
    for n, first, last, _ in ok:
        if stream and n > 1 and last > first:
            figures.decode.append((n - 1) / (last - first))
            figures.ttft.append(first)


async def measure_ttft(client: httpx.AsyncClient, prompt: str, figures: Figures) -> None:
    body = {"model": "m", "prompt": prompt, "max_tokens": 1, "temperature": 0}
    try:
        _, first, _, wall = await streamed(client, body)
    except httpx.HTTPError as exc:
        print(f"TTFT request failed: {exc!r}", file=sys.stderr)
        figures.failed += 1
        return
    figures.ttft.append(first or wall)


def in_process_worker(path: str, threads: int, repack: bool, tokens: int) -> None:
    """A child process's loop: loads llama-cpp-python once (flash attention on, as `auto`
    resolves on this CPU for edgebox and llama-server), then for each line on stdin runs one
    single-stream completion of `tokens` tokens (end-of-text banned, as the servers'
    `ignore_eos`) and one 500-token TTFT, and prints them as JSON: the benchmark asks for a
    round between the servers' rounds, so in-process takes its turn like them."""
    import llama_cpp
    from llama_cpp import Llama

    default_params = llama_cpp.llama_cpp.llama_model_default_params

    def params() -> object:
        p = default_params()
        p.use_extra_bufts = repack
        return p

    llama_cpp.llama_cpp.llama_model_default_params = params  # Llama() has no repack option
    llm = Llama(
        path, n_ctx=2048, n_threads=threads, n_threads_batch=threads, flash_attn=True, verbose=False
    )
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    no_eos = {t: -math.inf for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)}
    print("ready", flush=True)
    for i, line in enumerate(sys.stdin):
        if line.startswith("ttft "):  # a TTFT alone (bench_ttft.py), after the same settle
            time.sleep(0.5)
            started = time.perf_counter()
            next(
                iter(
                    llm.create_completion(ttft_prompt(line[5:].strip()), max_tokens=1, stream=True)
                )
            )
            print(json.dumps({"ttft": time.perf_counter() - started}), flush=True)
            continue
        started = time.perf_counter()
        stamps = [
            time.perf_counter()
            for c in llm.create_completion(
                story_prompt(f"in-{line.strip()}", i),
                max_tokens=tokens,
                temperature=0,
                stream=True,
                logit_bias=no_eos,
            )
            if c["choices"][0]["text"]  # type: ignore[index]
        ]
        wall = time.perf_counter() - started
        time.sleep(0.5)  # the same settle the servers get before their TTFT
        started = time.perf_counter()
        next(iter(llm.create_completion(ttft_prompt(f"in{i}"), max_tokens=1, stream=True)))
        ttft = time.perf_counter() - started
        decode = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
        out = {"tok_s": len(stamps) / wall, "decode": decode, "ttft": ttft}
        print(json.dumps(out), flush=True)
