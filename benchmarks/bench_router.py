"""Router overhead: the same requests direct to a node and through `edgebox router`.

One node (the bundled SmolLM2-135M) and one router in front of it (--disagg off), plus, when
`--litellm PATH` names a LiteLLM venv's `litellm` executable, a LiteLLM proxy configured for
the same node. Requests alternate between the paths, in a rotating order, so drift on a noisy
machine and whatever the previous request left behind hit each path alike.

(a) added latency: non-streamed /v1/completions with max_tokens=1 (a lone request's round
    trip is then mostly HTTP and the router); reported as p50/p99 of each path and of the
    difference from direct.
(b) streaming: 64-token streamed completions; TTFT and decode tok/s medians, and the
    router/direct ratio.
(d) a fast upstream: one short sentence to /v1/embeddings (a few ms at the node), so the
    node's own time, and its noise, hide less of what the proxy adds; p50/p99 as in (a).
(c) proxy CPU: the CPU time (user + system, child processes included) each proxy process
    spends per request over `--cpu-requests` back-to-back 1-token requests (its background
    work in that time, e.g. the router's 2 s node poll, included): what the proxy costs, and
    the figure least moved by other load on a shared machine.

    python benchmarks/bench_router.py --requests 60 --streams 8 --write
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_serve import SHORT, emit, machine, over_http, prompt_for, start  # noqa: E402

from tests.conftest import free_port  # noqa: E402

MODEL = "smollm2-135m"
EMBED_MODEL = "all-minilm-l6-v2"
# LiteLLM's proxy refuses to start without a master key; every path gets the same bearer header
# (the node and the router run without keys here and ignore it).
BENCH_KEY = "sk-edgebox-bench-only"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timed_post(
    base_url: str, route: str, body_for: Callable[[int], dict]
) -> Callable[[int], float]:
    """A function that POSTs request `i`'s body to `route` and returns its round trip in s."""
    client = httpx.Client(timeout=120, headers={"Authorization": f"Bearer {BENCH_KEY}"})

    def run(i: int) -> float:
        body = body_for(i)
        started = time.perf_counter()
        response = client.post(base_url + route, json=body)
        elapsed = time.perf_counter() - started
        response.raise_for_status()
        return elapsed

    return run


def one_token(base_url: str, model: str) -> Callable[[int], float]:
    # A prompt of its own per path and request: no path gains from another's prefix cache.
    return timed_post(
        base_url,
        "/completions",
        lambda i: {
            "model": model,
            "prompt": f"{base_url} {i} {SHORT}",
            "max_tokens": 1,
            "temperature": 0,
        },
    )


def cpu_seconds(proc: subprocess.Popen[bytes]) -> float:
    """User + system CPU of a process and its children (LiteLLM may fork workers)."""
    root = psutil.Process(proc.pid)
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            times = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def rotated(paths: dict[str, str], i: int) -> list[str]:
    """The paths in a different order each round, so no path always follows the same one."""
    names = list(paths)
    return names[i % len(names) :] + names[: i % len(names)]


def one_embedding(base_url: str) -> Callable[[int], float]:
    return timed_post(
        base_url,
        "/embeddings",
        lambda i: {
            "model": EMBED_MODEL,
            "input": f"Sentence number {i} about the weather.",
        },
    )


def litellm_proxy(exe: str, node_url: str, port: int, tmp: Path) -> subprocess.Popen[bytes]:
    config = tmp / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {node_url}/v1\n"
        "      api_key: none\n"
        f"  - model_name: {EMBED_MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{EMBED_MODEL}\n"
        f"      api_base: {node_url}/v1\n"
        "      api_key: none\n"
        "general_settings:\n"
        f"  master_key: {BENCH_KEY}\n"
    )
    cmd = [exe, "--config", str(config), "--port", str(port), "--num_workers", "1"]
    return start(cmd, f"http://127.0.0.1:{port}/health/liveliness")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--cpu-requests", type=int, default=200)
    parser.add_argument("--fast-requests", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--litellm", help="path of a `litellm` executable (its own venv)")
    parser.add_argument("--write", action="store_true", help="append results to docs/benchmarks.md")
    args = parser.parse_args()

    py = sys.executable
    node_port, router_port, litellm_port = free_port(), free_port(), free_port()
    node_url = f"http://127.0.0.1:{node_port}"
    procs = [
        start(
            [
                py,
                "-m",
                "edgebox",
                "serve",
                "--port",
                str(node_port),
                "--threads",
                str(args.threads),
                "--parallel",
                "2",
                "--ctx",
                "2048",
            ],
            node_url + "/health",
        )
    ]
    tmp = Path(tempfile.mkdtemp(prefix="bench-router-"))
    try:
        proxies: dict[str, subprocess.Popen[bytes]] = {}
        proxies["router"] = start(
            [
                py,
                "-m",
                "edgebox",
                "router",
                "--port",
                str(router_port),
                "--node",
                node_url,
                "--disagg",
                "off",
            ],
            f"http://127.0.0.1:{router_port}/health",
        )
        procs.append(proxies["router"])
        paths = {"direct": node_url + "/v1", "router": f"http://127.0.0.1:{router_port}/v1"}
        if args.litellm:
            proxies["litellm"] = litellm_proxy(args.litellm, node_url, litellm_port, tmp)
            procs.append(proxies["litellm"])
            paths["litellm"] = f"http://127.0.0.1:{litellm_port}/v1"

        latency: dict[str, list[float]] = {name: [] for name in paths}
        runners = {name: one_token(url, MODEL) for name, url in paths.items()}
        for name in paths:
            runners[name](-1)  # warm-up: connections, caches
        for i in range(args.requests):
            for name in rotated(paths, i):
                latency[name].append(runners[name](i))
        fast: dict[str, list[float]] = {name: [] for name in paths}
        embedders = {name: one_embedding(url) for name, url in paths.items()}
        for name in paths:
            embedders[name](-1)
        for i in range(args.fast_requests):
            for name in rotated(paths, i):
                fast[name].append(embedders[name](i))
        cpu_ms = {}
        for name, proc in proxies.items():  # (c): back to back, so idle time does not count
            before = cpu_seconds(proc)
            for i in range(args.cpu_requests):
                runners[name](args.requests + i)
            cpu_ms[name] = (cpu_seconds(proc) - before) / args.cpu_requests * 1000

        streams: dict[str, list[tuple[float, float, int]]] = {name: [] for name in paths}
        streamers = {name: over_http(url, MODEL, BENCH_KEY) for name, url in paths.items()}
        for i in range(args.streams):
            for name in rotated(paths, i):
                streams[name].append(streamers[name](prompt_for(SHORT, i)))
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=30)

    direct = latency["direct"]
    lines = [
        "## Router overhead (`benchmarks/bench_router.py`)",
        "",
        f"Machine: {machine()}. Command: `python benchmarks/bench_router.py --requests "
        f"{args.requests} --streams {args.streams} --cpu-requests {args.cpu_requests} --fast-requests {args.fast_requests}"
        f"{' --litellm ...' if args.litellm else ''} --write`. One node (SmolLM2-135M, "
        f"--parallel 2, --threads {args.threads}), all paths on loopback, requests alternating in a rotating order.",
        "",
        "| path | 1-token request p50 ms | p99 ms | added p50 ms | added p99 ms "
        "| proxy CPU ms/request | stream TTFT p50 ms | decode tok/s p50 | tok/s vs direct |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base_tps = statistics.median(s[1] for s in streams["direct"])
    for name in paths:
        added = [a - d for a, d in zip(latency[name], direct, strict=True)]
        tps = statistics.median(s[1] for s in streams[name])
        ttft = statistics.median(s[0] for s in streams[name]) * 1000
        lines.append(
            f"| {name} | {pct(latency[name], 0.5) * 1000:.2f} | {pct(latency[name], 0.99) * 1000:.2f}"
            f" | {pct(added, 0.5) * 1000:.2f} | {pct(added, 0.99) * 1000:.2f}"
            f" | {f'{cpu_ms[name]:.2f}' if name in cpu_ms else '-'} | {ttft:.1f}"
            f" | {tps:.1f} | {tps / base_tps:.3f} |"
        )
    lines += [
        "",
        f"Fast upstream ({args.fast_requests} alternating requests per path: one short sentence "
        f"to /v1/embeddings, {EMBED_MODEL}):",
        "",
        "| path | p50 ms | p99 ms | added p50 ms | added p99 ms |",
        "|---|---|---|---|---|",
    ]
    for name in paths:
        added = [a - d for a, d in zip(fast[name], fast["direct"], strict=True)]
        lines.append(
            f"| {name} | {pct(fast[name], 0.5) * 1000:.2f} | {pct(fast[name], 0.99) * 1000:.2f}"
            f" | {pct(added, 0.5) * 1000:.2f} | {pct(added, 0.99) * 1000:.2f} |"
        )
    emit(lines, args.write)


if __name__ == "__main__":
    main()
