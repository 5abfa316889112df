"""Heartbeats per second one hub sustains: N simulated nodes beating back to back over pinned
HTTPS (keep-alive), for a bounded time. The hub runs as a real `edgebox hub serve` process.

    python benchmarks/bench_hub.py --nodes 50 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from edgebox.fleet.heartbeat import box_telemetry
from edgebox.fleet.hub.client import HubClient, pinned_context
from edgebox.fleet.join import join


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_hub(data: Path) -> subprocess.Popen[bytes]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "edgebox",
        "hub",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data",
        str(data),
        "--heartbeat-interval",
        "60",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not (data / "hub.json").exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit("hub did not start")
        time.sleep(0.1)
    time.sleep(0.5)
    return proc


async def node_loop(
    client: httpx.AsyncClient,
    url: str,
    secret: str,
    until: float,
    lat: list[float],
    once: bool = False,
) -> None:
    # With an API address every node is in every answer's `peers` (what `serve --fleet` reads).
    api = {"port": 8080, "scheme": "http", "loopback_only": False}
    body = {"telemetry": box_telemetry(), "models": ["smollm2-135m"], "api": api}
    headers = {"authorization": f"Bearer {secret}"}
    while once or time.monotonic() < until:
        t = time.perf_counter()
        resp = await client.post(url + "/v1/hub/heartbeat", json=body, headers=headers)
        resp.raise_for_status()
        lat.append(time.perf_counter() - t)
        if once:
            return


async def drive(info: dict[str, object], secrets: list[str], seconds: float) -> list[float]:
    url = str(info["urls"][0])  # type: ignore[index]
    lat: list[float] = []
    limits = httpx.Limits(max_connections=len(secrets), max_keepalive_connections=len(secrets))
    async with httpx.AsyncClient(
        verify=pinned_context(str(info["fingerprint"])), limits=limits, timeout=30
    ) as client:
        # Warm-up: every node opens its connection (TLS handshake) before the timed window.
        warm: list[float] = []
        await asyncio.gather(*(node_loop(client, url, s, 0, warm, once=True) for s in secrets))
        until = time.monotonic() + seconds
        await asyncio.gather(*(node_loop(client, url, s, until, lat) for s in secrets))
    return lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "hub"
        os.environ["EDGEBOX_HOME"] = tmp
        hub = start_hub(data)
        try:
            info = json.loads((data / "hub.json").read_text())
            key = (data / "admin.key").read_text().strip()
            secrets = []
            with HubClient(info["urls"], info["fingerprint"], bearer=key) as admin:
                for i in range(args.nodes):
                    line = admin.request("POST", "/v1/hub/tokens", json={"ttl_seconds": 600})
                    member = join(
                        line["token"],
                        home=Path(tmp) / f"n{i}",
                        name=f"sim-{i}",
                        profile={"hostname": f"sim-{i}"},
                    )
                    secrets.append(member["node_secret"])
            lat = asyncio.run(drive(info, secrets, args.seconds))
            lat.sort()
            rate = len(lat) / args.seconds
            p50 = statistics.median(lat) * 1e3
            p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1e3
            machine = (
                f"{platform.machine()}, {psutil.cpu_count()} logical cores, "
                f"{psutil.virtual_memory().total / (1 << 30):.0f} GiB"
            )
            print(f"machine: {machine}; python {platform.python_version()}")
            print("| nodes | seconds | heartbeats | heartbeats/s | p50 ms | p99 ms |")
            print("|---:|---:|---:|---:|---:|---:|")
            print(
                f"| {args.nodes} | {args.seconds:g} | {len(lat)} | {rate:.0f} | {p50:.1f} "
                f"| {p99:.1f} |"
            )
            print(
                f"(one 5 s interval per node needs {args.nodes / 5:.0f} heartbeats/s; "
                f"this hub's rate covers about {rate * 5:.0f} nodes)"
            )
        finally:
            hub.send_signal(signal.SIGINT)
            hub.wait(15)


if __name__ == "__main__":
    main()
