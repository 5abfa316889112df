"""Prefill/decode split vs local prefill: TTFT breakdown by prompt length, and the cost model's
predicted crossover against the measured one.

Two real nodes on loopback serve SmolLM2-135M with the same per-sequence context (so their KV
layouts match): P, the prefill helper (`--threads P`), and D, the decode node (`--threads D`).
For each prompt length (fresh prompts: no prefix-cache hits):

  local:  one 1-token /v1/completions on D; its wall time is the TTFT.
  split:  `edgebox.router.disagg.hand_off` (the router's own code: prefill on P, KV snapshot
          streamed into D), then the 1-token request on D with X-Edgebox-KV.
          Reported as prefill (P's x-edgebox-prefill-ms), transfer+import (the rest of the
          hand-off) and the decode request.

The cost model (`estimate_split`) is fed the measured prefill rates of both nodes and the
router's default link (1000 Mbps) and KV size per token; it predicts the crossover length.

    python benchmarks/bench_split.py --sizes 256,512,1000,2000 --reps 2 --write
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_serve import emit, machine, start  # noqa: E402

from edgebox.router.config import Disagg  # noqa: E402
from edgebox.router.disagg import estimate_split, hand_off  # noqa: E402
from edgebox.router.nodes import parse_metrics  # noqa: E402
from tests.conftest import free_port  # noqa: E402

MODEL = "smollm2-135m"
WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "near",
    "river",
    "bank",
    "while",
    "birds",
    "sing",
]


def prompt(tokens: int, run: int) -> str:
    """About `tokens` tokens of plain words, unique per run (no prefix-cache hit)."""
    body = " ".join(WORDS[i % len(WORDS)] for i in range(int(tokens * 0.95)))
    return f"Run {run} {time.time_ns()}: {body}"


async def local_ttft(client: httpx.AsyncClient, url: str, text: str) -> tuple[float, int]:
    body = {"model": MODEL, "prompt": text, "max_tokens": 1, "temperature": 0}
    started = time.perf_counter()
    response = await client.post(url + "/v1/completions", json=body)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed, int(response.json()["usage"]["prompt_tokens"])


async def split_ttft(
    client: httpx.AsyncClient, p_url: str, d_url: str, text: str
) -> dict[str, float]:
    body: dict[str, Any] = {"model": MODEL, "prompt": text, "max_tokens": 1, "temperature": 0}
    started = time.perf_counter()
    handoff = await hand_off(client, p_url, d_url, MODEL, body, {})
    handed = time.perf_counter()
    response = await client.post(d_url + "/v1/completions", json=body, headers=handoff.headers())
    done = time.perf_counter()
    response.raise_for_status()
    return {
        "total": done - started,
        "prefill": handoff.prefill_s,
        "transfer": handed - started - handoff.prefill_s,
        "decode": done - handed,
        "tokens": handoff.tokens,
        "kv_bytes": handoff.kv_bytes,
    }


async def run(args: argparse.Namespace, p_url: str, d_url: str) -> list[dict[str, float]]:
    rows = []
    async with httpx.AsyncClient(timeout=300) as client:
        await local_ttft(client, d_url, prompt(32, -1))  # warm-up both nodes
        await local_ttft(client, p_url, prompt(32, -2))
        for size in args.sizes:
            local, split = [], []
            for rep in range(args.reps):  # alternate so drift hits both alike
                local.append(await local_ttft(client, d_url, prompt(size, 2 * rep)))
                split.append(await split_ttft(client, p_url, d_url, prompt(size, 2 * rep + 1)))
            tokens = statistics.median(s["tokens"] for s in split)
            p_rate = statistics.median(s["tokens"] / s["prefill"] for s in split)
            d_rate = statistics.median(n / t for t, n in local)
            med = {k: statistics.median(s[k] for s in split) for k in split[0]}
            rows.append(
                {
                    "size": size,
                    "tokens": tokens,
                    "local": statistics.median(t for t, _ in local),
                    "p_rate": p_rate,
                    "d_rate": d_rate,
                    **med,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,512,1000,2000")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--prefill-threads", type=int, default=2)
    parser.add_argument("--decode-threads", type=int, default=1)
    parser.add_argument("--write", action="store_true", help="append results to docs/benchmarks.md")
    args = parser.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]

    py = sys.executable
    urls, procs = [], []
    try:
        for threads in (args.prefill_threads, args.decode_threads):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            cmd = [
                py,
                "-m",
                "edgebox",
                "serve",
                "--port",
                str(port),
                "--threads",
                str(threads),
                "--parallel",
                "1",
                "--ctx",
                "4096",
            ]
            procs.append(start(cmd, url + "/health"))
            urls.append(url)
        started = time.monotonic()
        rows = asyncio.run(run(args, urls[0], urls[1]))
        wall = time.monotonic() - started
        # What `--disagg auto` would use: each node's own prefill measurement (its /metrics).
        reported = [
            parse_metrics(httpx.get(u + "/metrics", timeout=10).text)[MODEL].prefill_tokens_per_s
            for u in urls
        ]
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)

    cfg = Disagg()
    link = cfg.link_mbps * 1e6 / 8
    p_rate = statistics.median(r["p_rate"] for r in rows)
    d_rate = statistics.median(r["d_rate"] for r in rows)
    lines = [
        "## Prefill/decode split vs local (`benchmarks/bench_split.py`)",
        "",
        f"Machine: {machine()}. Command: `python benchmarks/bench_split.py --sizes "
        f"{','.join(map(str, args.sizes))} --reps {args.reps} --write` ({wall:.0f} s of "
        f"requests). Two nodes on loopback, SmolLM2-135M, --parallel 1 --ctx 4096; prefill node "
        f"--threads {args.prefill_threads}, decode node --threads {args.decode_threads}. "
        "TTFT = a 1-token /v1/completions (medians of the reps); predicted = `estimate_split` "
        f"with the median measured prefill rates (P {p_rate:.0f}, D {d_rate:.0f} tok/s) and the "
        f"default link ({cfg.link_mbps:.0f} Mbps, {cfg.kv_bytes_per_token} KV bytes/token).",
        "",
        "| prompt tokens | local TTFT ms | split TTFT ms | prefill on P ms | transfer+import ms "
        "| decode req ms | KV MB | predicted local ms | predicted split ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    predicted_cross = measured_cross = None
    for r in rows:
        est = estimate_split(int(r["tokens"]), d_rate, p_rate, cfg.kv_bytes_per_token, link)
        if predicted_cross is None and est.split_s < est.local_s:
            predicted_cross = int(r["tokens"])
        if measured_cross is None and r["total"] < r["local"]:
            measured_cross = int(r["tokens"])
        lines.append(
            f"| {r['tokens']:.0f} | {r['local'] * 1000:.0f} | {r['total'] * 1000:.0f} "
            f"| {r['prefill'] * 1000:.0f} | {r['transfer'] * 1000:.0f} | {r['decode'] * 1000:.0f} "
            f"| {r['kv_bytes'] / 1e6:.1f} | {est.local_s * 1000:.0f} | {est.split_s * 1000:.0f} |"
        )
    node_cross = (
        next(
            (
                int(r["tokens"])
                for r in rows
                if (
                    e := estimate_split(
                        int(r["tokens"]), reported[1], reported[0], cfg.kv_bytes_per_token, link
                    )
                ).split_s
                < e.local_s
            ),
            None,
        )
        if all(reported)
        else None
    )
    lines += [
        "",
        f"Crossover (smallest measured prompt where split wins): predicted "
        f"{predicted_cross or 'none'}, measured {measured_cross or 'none'}. The nodes' own "
        f"prefill measurements (`edgebox_prefill_tokens_per_second`, what `--disagg auto` uses): "
        f"P {reported[0]:.0f}, D {reported[1]:.0f} tok/s, predicting a crossover at "
        f"{node_cross or 'none'}.",
    ]
    emit(lines, args.write)


if __name__ == "__main__":
    main()
