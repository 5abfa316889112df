"""Throughput of this tree's node against an earlier commit's, side by side in one run.

Both nodes serve the same bundled GGUF with the same threads and slots; rounds alternate
between them (never both loaded at once), so machine noise hits both alike. Each round sends
`streams` non-streamed, greedy /v1/completions requests of `--tokens` tokens at once, each
with a unique first line so no prefix cache helps; a round's figure is its tokens over its
wall time. Reported: the median per node and stream count, and the ratio new / old.

    python benchmarks/bench_before_after.py --before 64d8b0e --rounds 5 --write
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_serve import emit, machine, wait_healthy  # noqa: E402

from tests.conftest import free_port  # noqa: E402

MODEL = "smollm2-135m"


def checkout(rev: str, into: Path) -> Path:
    """A detached worktree of `rev` (removed by the caller's temp dir cleanup)."""
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(into), rev], check=True
    )
    return into


def drop_checkout(tree: Path) -> None:
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False
    )


def head_rev() -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()


def serve(tree: Path, threads: int, parallel: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "edgebox",
        "serve",
        "--port",
        str(port),
        "--model",
        MODEL,
        "--threads",
        str(threads),
        "--parallel",
        str(parallel),
        "--ctx",
        "2048",
    ]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.Popen(
        cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    if wait_healthy(url, 120):
        return proc, url
    proc.kill()
    raise RuntimeError(f"the node from {tree} did not start")


async def round_tps(url: str, streams: int, tokens: int, tag: str) -> float:
    async with httpx.AsyncClient(timeout=600) as client:

        async def one(i: int) -> int:
            body = {
                "model": MODEL,
                "prompt": f"[{tag}-{i}] Once upon a time,",
                "max_tokens": tokens,
                "temperature": 0,
            }
            answer = await client.post(url + "/v1/completions", json=body)
            answer.raise_for_status()
            return int(answer.json()["usage"]["completion_tokens"])

        began = time.perf_counter()
        done = await asyncio.gather(*(one(i) for i in range(streams)))
        return sum(done) / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git revision to compare against")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--streams", default="1,8")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    levels = [int(s) for s in args.streams.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        old_tree = checkout(args.before, Path(tmp) / "before")
        try:
            nodes = {
                "before": serve(old_tree, args.threads, max(levels)),
                "now": serve(ROOT, args.threads, max(levels)),
            }
            results: dict[tuple[str, int], list[float]] = {}
            for name, (_, url) in nodes.items():  # warm-up
                asyncio.run(round_tps(url, 2, 8, f"warm-{name}"))
            for r in range(args.rounds):
                for streams in levels:
                    order = list(nodes) if r % 2 == 0 else list(reversed(nodes))
                    for name in order:
                        tps = asyncio.run(
                            round_tps(nodes[name][1], streams, args.tokens, f"{name}-{r}-{streams}")
                        )
                        results.setdefault((name, streams), []).append(tps)
                        print(name, streams, f"{tps:.1f} tok/s", flush=True)
        finally:
            for proc, _ in nodes.values():
                proc.terminate()
                proc.wait(timeout=30)
            drop_checkout(old_tree)
    head = head_rev()
    lines = [
        f"### Node throughput: {head} against {args.before}",
        "",
        f"Machine: {machine()}. Command: `python benchmarks/bench_before_after.py --before "
        f"{args.before} --rounds {args.rounds} --tokens {args.tokens}`. Non-streamed "
        f"/v1/completions, greedy, {args.tokens} tokens each, {args.threads} threads, "
        "rounds alternating between the two nodes; median of the rounds' tokens/s.",
        "",
        "| streams | before tok/s | now tok/s | now / before | rounds (before; now) |",
        "|---|---|---|---|---|",
    ]
    for streams in levels:
        old = results[("before", streams)]
        new = results[("now", streams)]
        ratio = statistics.median(new) / statistics.median(old)
        spread = f"{min(old):.1f}-{max(old):.1f}; {min(new):.1f}-{max(new):.1f}"
        lines.append(
            f"| {streams} | {statistics.median(old):.1f} | {statistics.median(new):.1f} "
            f"| {ratio:.3f} | {spread} |"
        )
    emit(lines, args.write)


if __name__ == "__main__":
    main()
