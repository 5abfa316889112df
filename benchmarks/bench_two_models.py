"""One model's decode speed on a node that serves two, against an earlier commit's node.

A node serving SmolLM2-135M and Gemma 3 270M (both llama.cpp): each model answers once, so
both engines have decoded, then single-stream, non-streamed, greedy 128-token completions go to
SmolLM2 alone while Gemma sits idle. Three nodes stay up side by side and take turns round by
round: this tree with two models, the earlier commit with two models, and this tree with
SmolLM2 only (the speed one model should have). The two engines' threads are two OpenMP
teams; before `runtimes/llamacpp/openmp.py` libgomp then throttled its barrier spin and the busy
model ran at half speed.

    python benchmarks/bench_two_models.py --before 1e54056 --rounds 5 --write
"""

from __future__ import annotations

import argparse
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

from bench_before_after import checkout, drop_checkout, head_rev  # noqa: E402
from bench_engine import cpu_kind  # noqa: E402
from bench_serve import bench_home, emit, wait_healthy  # noqa: E402

from tests.conftest import free_port  # noqa: E402

BUSY, IDLE = "smollm2-135m", "gemma3-270m"
# Greedy SmolLM2 keeps counting past any length asked of it, so every answer runs to
# max_tokens on both commits (the earlier one has no ignore_eos).
PROMPT = "Count from 1 to 1000: 1, 2, 3, 4, 5, 6,"


def serve(tree: Path, models: list[str], threads: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "edgebox", "serve", "--port", str(port)]
    for model in models:
        cmd += ["--model", model]
    cmd += ["--threads", str(threads), "--parallel", "1", "--ctx", "1024", "--gpu-layers", "0"]
    # Each node decides its own OpenMP settings: none inherited from this process (which
    # imported edgebox's llama.cpp package and so set them for itself).
    env = {k: v for k, v in bench_home().items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["PYTHONPATH"] = str(tree)
    proc = subprocess.Popen(
        cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    if wait_healthy(url, 180):
        return proc, url
    proc.kill()
    raise RuntimeError(f"the node from {tree} did not start")


def completion(url: str, model: str, tokens: int, tag: str) -> tuple[int, float]:
    body = {
        "model": model,
        "prompt": f"[{tag}] {PROMPT}",
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,  # where the node knows it; the prompt does not end anyway
    }
    began = time.perf_counter()
    answer = httpx.post(url + "/v1/completions", json=body, timeout=600)
    answer.raise_for_status()
    return int(answer.json()["usage"]["completion_tokens"]), time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git revision to compare against")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        old_tree = checkout(args.before, Path(tmp) / "before")
        nodes: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
        try:
            nodes["now, two models"] = serve(ROOT, [BUSY, IDLE], args.threads)
            nodes["before, two models"] = serve(old_tree, [BUSY, IDLE], args.threads)
            nodes["now, one model"] = serve(ROOT, [BUSY], args.threads)
            for name, (_, url) in nodes.items():  # every engine decodes once
                if "two" in name:
                    completion(url, IDLE, 4, "warm")
                completion(url, BUSY, 4, "warm")
            for r in range(args.rounds):
                for name, (_, url) in nodes.items():
                    n, wall = completion(url, BUSY, args.tokens, f"{name}-{r}")
                    results.setdefault(name, []).append(n / wall)
                    print(f"{name}: {n} tokens, {n / wall:.1f} tok/s", flush=True)
        finally:
            for proc, _ in nodes.values():
                proc.terminate()
                proc.wait(timeout=30)
            drop_checkout(old_tree)
    head = head_rev()
    alone = statistics.median(results["now, one model"])
    lines = [
        f"### One model's speed on a two-model node ({time.strftime('%Y-%m-%d %H:%M UTC')})",
        "",
        f"`python benchmarks/bench_two_models.py --before {args.before} --rounds {args.rounds} "
        f"--tokens {args.tokens} --threads {args.threads}` ({head}) on {cpu_kind()}. "
        f"{BUSY} answers single-stream {args.tokens}-token completions while {IDLE}, loaded and "
        f"warmed, sits idle; nodes take turns. Load average before {load_before:.2f}, after "
        f"{os.getloadavg()[0]:.2f} (1 min).",
        "",
        "| node | tok/s (median) | rounds | vs this tree with one model |",
        "|---|---:|---|---:|",
    ]
    for name, rates in results.items():
        rounds = ", ".join(f"{x:.1f}" for x in rates)
        lines.append(
            f"| {name} | {statistics.median(rates):.1f} | {rounds} | "
            f"{statistics.median(rates) / alone:.2f}x |"
        )
    emit(lines, args.write)


if __name__ == "__main__":
    main()
