"""Time to first token for a model on disk but not loaded (load on demand) vs loaded.

One node serves SmolLM2-135M; Gemma 3 270M is on its disk. Each round sends a streamed,
greedy /v1/completions request for Gemma with `keep_alive: 0` (the node loads it, answers, and
unloads it: the next round is cold again), waits for the unload, then sends the same request
with Gemma loaded (`keep_alive: -1`, then unloaded over /admin for the next cold round).
Cold and warm alternate, so machine noise hits both alike. Reported: the median time from
sending the request to the first token, cold and warm, and the load's own time as the node
measured it (its /health model events).

    python benchmarks/bench_cold_start.py --rounds 5 --write
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

from bench_serve import emit, machine, wait_healthy  # noqa: E402

from tests.conftest import free_port  # noqa: E402

SERVED, COLD = "smollm2-135m", "gemma3-270m"


def serve(threads: int, ctx: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [sys.executable, "-m", "edgebox", "serve", "--port", str(port), "--model", SERVED]
    cmd += ["--threads", str(threads), "--parallel", "1", "--ctx", str(ctx)]
    cmd += ["--no-mdns", "--no-tunnel"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    if wait_healthy(url, 120):
        return proc, url
    proc.kill()
    raise SystemExit(f"the node did not start:\n{log.read_text()}")


def first_token_s(url: str, keep_alive: object) -> float:
    body = {"model": COLD, "prompt": "The capital of France is", "max_tokens": 4}
    body |= {"temperature": 0, "stream": True, "keep_alive": keep_alive}
    started = time.perf_counter()
    first = None
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():  # read it all: the request ends before any unload
            if first is None and line.startswith("data: {"):
                first = time.perf_counter() - started
    if first is None:
        raise SystemExit("no token came back")
    return first


def wait_unloaded(url: str) -> None:
    deadline = time.monotonic() + 60
    while COLD in httpx.get(url + "/health", timeout=10).json()["models"]:
        if time.monotonic() > deadline:
            raise SystemExit(f"{COLD} was not unloaded")
        time.sleep(0.05)


def load_seconds(url: str) -> list[float]:
    events = httpx.get(url + "/health", timeout=10).json()["model_events"]
    return [e["seconds"] for e in events if e["model"] == COLD and e["event"] == "loaded"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=1024)
    parser.add_argument("--write", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = serve(args.threads, args.ctx, Path(tmp) / "node.log")
        cold, warm = [], []
        try:
            for _ in range(args.rounds):
                cold.append(first_token_s(url, 0))
                wait_unloaded(url)
                first_token_s(url, -1)  # load it and keep it
                warm.append(first_token_s(url, -1))
                httpx.post(url + "/admin/models/unload", json={"model": COLD}, timeout=60)
                wait_unloaded(url)
            loads = load_seconds(url)
        finally:
            proc.terminate()
            proc.wait(30)
    load_avg = os.getloadavg()[0]
    median_cold, median_warm = statistics.median(cold) * 1000, statistics.median(warm) * 1000
    lines = [
        "## Load on demand: first token, on disk vs loaded (`benchmarks/bench_cold_start.py`)",
        "",
        f"Machine: {machine()}; load average {load_avg:.1f} at the end of the run. "
        f"Date: {time.strftime('%Y-%m-%d')}. Command: `python benchmarks/bench_cold_start.py "
        f"--rounds {args.rounds} --threads {args.threads} --ctx {args.ctx}`. Streamed greedy "
        f"/v1/completions for {COLD} (4 tokens) on a node serving {SERVED}; cold and warm "
        "alternate.",
        "",
        f"| {COLD} | median time to first token (ms) | min (ms) | rounds |",
        "|---|---|---|---|",
        f"| on disk, not loaded (load on demand) | {median_cold:.0f} | {min(cold) * 1000:.0f} "
        f"| {len(cold)} |",
        f"| loaded | {median_warm:.0f} | {min(warm) * 1000:.0f} | {len(warm)} |",
        "",
        f"The node's own load time (resolve, budget check, open): median "
        f"{statistics.median(loads) * 1000:.0f} ms over {len(loads)} loads; cold / warm = "
        f"{median_cold / median_warm:.1f}x.",
    ]
    emit(lines, args.write)


if __name__ == "__main__":
    main()
