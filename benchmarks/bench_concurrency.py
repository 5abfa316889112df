"""Concurrent serving: aggregate decode tok/s and TTFT at 1, 2, 4 and 8 streams.

Compares, in one run, on the same GGUF with the same threads and slot context:
  (a) edgebox serve            (continuous batching, --parallel 8)
  (b) python -m llama_cpp.server  (llama-cpp-python's server; one request at a time)
  (c) llama.cpp's C++ llama-server (continuous batching, -np 8), built by
      benchmarks/build_llama_server.sh from the sdist edgebox pins (skipped with a note
      when it cannot be built)
plus the single-stream in-process decode rate of llama-cpp-python (flash attention on,
as `auto` resolves on CPU for the other two) as the ceiling.

Each request is a streamed /v1/completions call of 64 tokens with a unique first line, so
no server can reuse another request's prefix. A round sends `c` requests at once;
aggregate tok/s is the tokens of the round over its wall time. Reported: the median over
rounds, and TTFT p50/p99 over every request at that level.

    python benchmarks/bench_concurrency.py --rounds 3 --write
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_serve import TOKENS, emit, in_process, machine, prompt_for, start  # noqa: E402

from edgebox.models import resolve_model  # noqa: E402
from tests.conftest import free_port  # noqa: E402

LEVELS = (1, 2, 4, 8)
SLOT_CTX = 2048
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


@dataclass
class Level:
    aggregate: list[float] = field(default_factory=list)  # tok/s per round
    ttft: list[float] = field(default_factory=list)  # seconds, every request
    decode: list[float] = field(default_factory=list)  # tok/s after the first token, per request
    tokens: int = 0
    errors: int = 0  # requests that failed or were cut short by the server


async def one_request(
    client: httpx.AsyncClient, model: str, prompt: str, retry: bool = True
) -> tuple[float | None, int, float]:
    """(ttft seconds, streamed token chunks, decode tok/s); ttft None when it failed."""
    started = time.perf_counter()
    ttft = last = 0.0
    n = 0
    body = {"model": model, "prompt": prompt, "max_tokens": TOKENS, "temperature": 0}
    try:
        async with client.stream("POST", "/completions", json={**body, "stream": True}) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("choices") and chunk["choices"][0].get("text"):
                    last = time.perf_counter() - started
                    if n == 0:
                        ttft = last
                    n += 1
    except (httpx.RemoteProtocolError, httpx.ConnectError) as exc:
        if n == 0 and retry:  # a kept-alive connection the server had already closed
            return await one_request(client, model, prompt, retry=False)
        print(f"request failed: {exc!r}", file=sys.stderr)
        return None, n, 0.0
    except httpx.HTTPError as exc:
        print(f"request failed: {exc!r}", file=sys.stderr)
        return None, n, 0.0
    decode = (n - 1) / (last - ttft) if n > 1 and last > ttft else 0.0
    return (ttft if n else None), n, decode


async def measure_server(base_url: str, model: str, rounds: int) -> dict[int, Level]:
    results: dict[int, Level] = {}
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits) as client:
        await one_request(client, model, prompt_for("Warm-up.", 0))
        for c in LEVELS:
            level = results[c] = Level()
            for r in range(rounds):
                prompts = [
                    prompt_for(f"Write a short story about {TOPICS[i % len(TOPICS)]}.", r * 100 + i)
                    for i in range(c)
                ]
                t = time.perf_counter()
                done = await asyncio.gather(*(one_request(client, model, p) for p in prompts))
                wall = time.perf_counter() - t
                tokens = sum(n for _, n, _ in done)
                level.aggregate.append(tokens / wall)
                level.ttft.extend(ttft for ttft, _, _ in done if ttft is not None)
                level.decode.extend(rate for ttft, _, rate in done if ttft is not None)
                level.errors += sum(1 for ttft, _, _ in done if ttft is None)
                level.tokens += tokens
    return results


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def run_server(cmd: list[str], port: int, model: str, rounds: int) -> dict[int, Level]:
    proc = start(cmd, f"http://127.0.0.1:{port}/v1/models")
    try:
        return asyncio.run(measure_server(f"http://127.0.0.1:{port}/v1", model, rounds))
    finally:
        proc.terminate()
        proc.wait(30)


def llama_server_binary() -> str | None:
    found = shutil.which("llama-server")
    if found:
        return found
    script = ROOT / "benchmarks" / "build_llama_server.sh"
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"llama-server build failed; skipping it:\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return done.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-llama-server", action="store_true")
    parser.add_argument(
        "--gpu-layers", type=int, default=-1, help="layers to offload where the build has a GPU"
    )
    parser.add_argument("--write", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    model = resolve_model(args.model)
    path, threads, gpu = str(model.path), str(args.threads), str(args.gpu_layers)
    py = sys.executable

    # flash attention on, as `auto` resolves on this CPU for edgebox and llama-server
    ceiling_run = in_process(model.path, args.threads, flash_attn=True, gpu_layers=args.gpu_layers)
    ceiling_run(prompt_for("Warm-up.", 0))
    ceiling = statistics.median(
        ceiling_run(prompt_for(f"Write a short story about {TOPICS[i]}.", i))[1]
        for i in range(max(3, args.rounds))
    )

    servers: dict[str, dict[int, Level]] = {}
    port = free_port()
    servers["edgebox"] = run_server(
        [
            py,
            "-m",
            "edgebox",
            "serve",
            "-m",
            path,
            "--alias",
            "m",
            "--port",
            str(port),
            "--threads",
            threads,
            "--parallel",
            "8",
            "--ctx",
            str(SLOT_CTX),
            "--gpu-layers",
            gpu,
        ],
        port,
        "m",
        args.rounds,
    )
    port = free_port()
    servers["llama_cpp.server"] = run_server(
        [
            py,
            "-m",
            "llama_cpp.server",
            "--model",
            path,
            "--model_alias",
            "m",
            "--port",
            str(port),
            "--n_threads",
            threads,
            "--n_threads_batch",
            threads,
            "--n_ctx",
            str(SLOT_CTX),
            "--interrupt_requests",
            "False",
            "--n_gpu_layers",
            gpu,
        ],
        port,
        "m",
        args.rounds,
    )
    binary = None if args.skip_llama_server else llama_server_binary()
    if binary:
        port = free_port()
        servers["llama-server (C++)"] = run_server(
            [
                binary,
                "-m",
                path,
                "-a",
                "m",
                "--port",
                str(port),
                "-t",
                threads,
                "-tb",
                threads,
                "-np",
                "8",
                "-c",
                str(SLOT_CTX * 8),
                "--no-webui",
                "-ngl",
                "999" if args.gpu_layers < 0 else gpu,
            ],
            port,
            "m",
            args.rounds,
        )

    lines = [
        f"### Concurrent streams ({time.strftime('%Y-%m-%d')})",
        "",
        f"`python benchmarks/bench_concurrency.py --rounds {args.rounds} --threads {args.threads}`"
        f" --gpu-layers {args.gpu_layers} on {machine()}, model {model.alias} "
        f"({model.path.name}), {TOKENS}-token streamed completions, {args.rounds} rounds per "
        f"level, slot context {SLOT_CTX}. In-process single-stream decode (ceiling): "
        f"**{ceiling:.1f} tok/s**.",
        "",
        "| server | streams | aggregate tok/s (median) | TTFT p50 ms | TTFT p99 ms | failed |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, levels in servers.items():
        for c, level in levels.items():
            lines.append(
                f"| {name} | {c} | {statistics.median(level.aggregate):.1f} | "
                f"{statistics.median(level.ttft) * 1000:.0f} | {p99(level.ttft) * 1000:.0f} | "
                f"{level.errors} |"
            )
    ours = servers["edgebox"]
    lines += ["", "Ratios at each level (edgebox ÷ other, aggregate tok/s):", ""]
    for c in LEVELS:
        parts = []
        for name, levels in servers.items():
            if name != "edgebox":
                ratio = statistics.median(ours[c].aggregate) / statistics.median(
                    levels[c].aggregate
                )
                parts.append(f"{ratio:.2f}x {name}")
        lines.append(f"- {c} stream(s): " + ", ".join(parts))
    single = {name: statistics.median(levels[1].decode) for name, levels in servers.items()}
    lines += [
        "",
        "Single-stream decode rate after the first token (median), vs in-process "
        f"{ceiling:.1f} tok/s: "
        + ", ".join(f"{name} {rate:.1f} ({rate / ceiling:.1%})" for name, rate in single.items()),
    ]
    if not binary:
        lines += ["", "llama-server (C++) was skipped: its build failed or was not asked for."]
    emit(lines, args.write)


if __name__ == "__main__":
    main()
