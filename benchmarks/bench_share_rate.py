"""Blob pacing against inference: decode speed and a peer's transfer rate per `--share-rate`.

One node (`edgebox serve`, SmolLM2-135M, --threads 2, one slot) on loopback, with Gemma 3
270M's GGUF (253 MB) in its store. A client streams greedy `ignore_eos` chat completions (one
stream, --tokens tokens) while a second process pulls the Gemma blob from the node as a peer
would (ranged GETs of /v1/blobs/{sha} in 8 MiB chunks, 4 at a time, round and round the file,
bytes counted and dropped). Each generation without a transfer is paired with one during a
transfer on the same node (the two alternate), and the node is restarted per setting, the
settings taking turns each round (forward, then backward). Reported per setting: the median
decode rate with and without a transfer, the transfer's MB/s while the node decodes, and its
MB/s while the node is idle (unpaced: loopback speed).

Decode rate is (chunks - 1) / (last chunk - first chunk) at the client. Loopback has no link
limit, and the puller runs on the node's own cores: what it costs the box here (receiving at
full speed) a real peer pays on its own machine.

    python benchmarks/bench_share_rate.py --rounds 2 --pairs 3 --write
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_serve import emit, machine, wait_healthy  # noqa: E402

from tests.conftest import free_port  # noqa: E402

SERVED, SHARED = "smollm2-135m", "gemma3-270m"
CHUNK, PULLERS = 8 << 20, 4  # as a peer's pull fetches a blob
MB = 1e6
PROMPT = "Count from one to a thousand in words."


def pull(url: str, digest: str, size: int) -> None:
    """The peer: ranged GETs over the blob until stdin closes, then the received pieces as
    JSON [[monotonic time, bytes], ...] on stdout."""
    stop, lock = threading.Event(), threading.Lock()
    marks: list[tuple[float, int]] = []
    chunks = itertools.cycle(range(0, size, CHUNK))

    def worker() -> None:
        with httpx.Client(timeout=120) as client:
            while not stop.is_set():
                with lock:
                    start = next(chunks)
                rng = {"Range": f"bytes={start}-{min(start + CHUNK, size) - 1}"}
                with client.stream("GET", f"{url}/v1/blobs/{digest}", headers=rng) as r:
                    r.raise_for_status()
                    for piece in r.iter_raw(1 << 20):
                        with lock:
                            if not marks:
                                print("started", flush=True)
                            marks.append((time.monotonic(), len(piece)))
                        if stop.is_set():
                            break

    workers = [threading.Thread(target=worker) for _ in range(PULLERS)]
    for w in workers:
        w.start()
    sys.stdin.read()
    stop.set()
    for w in workers:
        w.join(120)
    print(json.dumps(marks), flush=True)


def generate(url: str, tokens: int) -> tuple[float, float, float]:
    """One streamed greedy generation: (first chunk's time, last chunk's time, decode tok/s)."""
    body = {
        "model": SERVED,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": tokens,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
    }
    times = []
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            choices = json.loads(line[6:])["choices"]
            if choices and choices[0]["delta"].get("content"):
                times.append(time.monotonic())
    if len(times) < 2:
        raise SystemExit(f"the node streamed {len(times)} chunks")
    return times[0], times[-1], (len(times) - 1) / (times[-1] - times[0])


def rate_between(marks: list[list[float]], start: float, end: float) -> float:
    """MB/s of the pieces received in [start, end]."""
    got = sum(n for t, n in marks if start <= t <= end)
    return got / (end - start) / MB


def with_transfer(url: str, blob: tuple[str, int], tokens: int) -> dict[str, float]:
    """A generation while the peer pulls; the pull's rate while idle (before) and decoding."""
    cmd = [sys.executable, __file__, "--pull", url, blob[0], str(blob[1])]
    puller = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert puller.stdin is not None and puller.stdout is not None
    try:
        if puller.stdout.readline().strip() != "started":
            raise SystemExit("the puller got no bytes")
        idle_from = time.monotonic()
        time.sleep(0.5)  # the node idle: unpaced
        idle_to = time.monotonic()
        first, last, tok_s = generate(url, tokens)
        puller.stdin.close()
        marks = json.loads(puller.stdout.readline())
    finally:
        puller.wait(60)
    return {
        "tok_s": tok_s,
        "busy_mb_s": rate_between(marks, first, last),
        "idle_mb_s": rate_between(marks, idle_from, idle_to),
    }


def serve(share_rate: float, env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [sys.executable, "-m", "edgebox", "serve", "--port", str(port), "--model", SERVED]
    cmd += ["--threads", "2", "--parallel", "1", "--ctx", "1024", "--no-mdns", "--no-tunnel"]
    cmd += ["--share-rate", f"{share_rate:g}"]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    if wait_healthy(url, 120):
        return proc, url
    proc.kill()
    raise SystemExit(f"the node did not start:\n{log.read_text()}")


def one_node(
    share_rate: float, env: dict[str, str], blob: tuple[str, int], args: argparse.Namespace
) -> list[dict[str, float]]:
    """`args.pairs` pairs of (no transfer, transfer) generations on a fresh node."""
    proc, url = serve(share_rate, env, Path(env["EDGEBOX_HOME"]) / f"node-{share_rate:g}.log")
    rows = []
    try:
        generate(url, args.tokens)  # warm-up
        for i in range(args.pairs):
            row: dict[str, float] = {}
            for transfer in (False, True) if i % 2 == 0 else (True, False):
                if transfer:
                    row |= with_transfer(url, blob, args.tokens)
                else:
                    row["alone_tok_s"] = generate(url, args.tokens)[2]
            print(f"share-rate {share_rate:g}: {row}", flush=True)
            rows.append(row)
    finally:
        proc.terminate()
        proc.wait(30)
    return rows


def table(results: dict[float, list[dict[str, float]]], args: argparse.Namespace) -> list[str]:
    load_avg = os.getloadavg()[0]
    lines = [
        "## Blob pacing against inference (`benchmarks/bench_share_rate.py`)",
        "",
        f"Machine: {machine()}; load average {load_avg:.1f} at the end of the run. "
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Command: "
        f"`python benchmarks/bench_share_rate.py --rounds {args.rounds} --pairs {args.pairs} "
        f"--tokens {args.tokens}`. {SERVED}, --threads 2, one stream of {args.tokens} tokens; "
        f"the peer pulls {SHARED}'s blob on loopback (8 MiB ranges, 4 at a time). Medians "
        f"over {args.rounds * args.pairs} pairs per setting; ratio: the pairs' own (during / "
        "alone), median.",
        "",
        "| --share-rate (MB/s) | decode tok/s, no transfer | decode tok/s, during transfer "
        "| ratio | transfer MB/s while decoding | transfer MB/s while idle |",
        "|---|---|---|---|---|---|",
    ]
    for rate, rows in sorted(results.items()):
        alone, during = (statistics.median(r[k] for r in rows) for k in ("alone_tok_s", "tok_s"))
        busy, idle = (statistics.median(r[k] for r in rows) for k in ("busy_mb_s", "idle_mb_s"))
        ratio = statistics.median(r["tok_s"] / r["alone_tok_s"] for r in rows)  # per pair
        label = "0 (unlimited)" if rate == 0 else f"{rate:g}"
        lines.append(
            f"| {label} | {alone:.1f} | {during:.1f} | {ratio:.2f} | {busy:.0f} | {idle:.0f} |"
        )
    return lines


def main() -> None:
    if sys.argv[1:2] == ["--pull"]:
        pull(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="0,10,40,100", help="MB/s settings, comma-separated")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=3, help="per node: alone/transfer pairs")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--write", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    from edgebox.models import resolve_model
    from edgebox.models.store import ModelStore

    rates = [float(r) for r in args.rates.split(",")]
    results: dict[float, list[dict[str, float]]] = {r: [] for r in rates}
    with tempfile.TemporaryDirectory(prefix="bench-share-rate-") as tmp:
        env = {**os.environ, "EDGEBOX_HOME": tmp, "EDGEBOX_MODELS_DIR": f"{tmp}/store"}
        entry = ModelStore(f"{tmp}/store").add_local(resolve_model(SHARED).path, SHARED).files[0]
        blob = (entry.sha256, entry.size)
        for round_ in range(args.rounds):
            for rate in rates if round_ % 2 == 0 else rates[::-1]:
                results[rate] += one_node(rate, env, blob, args)
    emit(table(results, args), args.write)


if __name__ == "__main__":
    main()
