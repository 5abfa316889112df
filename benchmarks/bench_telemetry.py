"""What telemetry costs: one `TelemetrySampler.sample()` on this machine, and `/health` of a
running node answered from its cache (≤ 1 s old) versus with a fresh sample.

    python benchmarks/bench_telemetry.py --samples 200 [--url http://127.0.0.1:8080]

Prints median and p99 in milliseconds. Without --url only the sampler is timed.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import httpx
import psutil

from edgebox.hardware.telemetry import TelemetrySampler


def percentiles(ms: list[float]) -> str:
    ms = sorted(ms)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return f"median {statistics.median(ms):.2f} ms, p99 {p99:.2f} ms (n={len(ms)})"


def time_sampler(n: int) -> list[float]:
    sampler = TelemetrySampler()
    sampler.sample()  # the first call waits for psutil's CPU window
    out = []
    for _ in range(n):
        started = time.perf_counter()
        sampler.sample()
        out.append((time.perf_counter() - started) * 1000)
        time.sleep(0.06)  # past the CPU figure's minimum window, so each call reads psutil
    sampler.close()
    return out


def time_health(url: str, n: int, gap: float) -> list[float]:
    out = []
    with httpx.Client(timeout=10) as client:
        client.get(url + "/health")  # probe and first sample happen here
        for _ in range(n):
            time.sleep(gap)
            started = time.perf_counter()
            client.get(url + "/health").raise_for_status()
            out.append((time.perf_counter() - started) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--url", help="a running node, e.g. http://127.0.0.1:8080")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {psutil.cpu_count()} threads, "
        f"{psutil.virtual_memory().total / (1 << 30):.1f} GiB, "
        f"load {' '.join(f'{x:.1f}' for x in psutil.getloadavg())}"
    )
    print("sampler.sample():", percentiles(time_sampler(args.samples)))
    if args.url:
        print("/health, cached sample:", percentiles(time_health(args.url, args.samples, 0.0)))
        fresh = time_health(args.url, max(10, args.samples // 20), 1.05)
        print("/health, fresh sample:", percentiles(fresh))


if __name__ == "__main__":
    main()
