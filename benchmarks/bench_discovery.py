"""How fast a node appears on, and leaves, another box's browser over real mDNS.

Two network namespaces on a bridge (tests/netns.py; needs root and iproute2). A browser runs in
one; in the other an advertiser is started and stopped N times. Times are wall-clock
(time.time(), one kernel clock for both namespaces) from `Advertiser.start()` being called:

  registered  start() returned (probing, then the announcements zeroconf sends)
  added       the browser's `added` event
  removed     from `stop()` being called to the browser's `removed` event

Usage: sudo python benchmarks/bench_discovery.py [--runs 10] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


async def _advertise(home: str) -> None:
    from edgebox.fleet.identity import load_identity
    from edgebox.fleet.mdns import Advertiser

    identity = load_identity(Path(home), sshd_host_key=Path("/nonexistent"), name="bench")
    advertiser = Advertiser(identity, accelerator="cpu", models=["m"])
    loop = asyncio.get_running_loop()
    # One command per line from the parent, read off the loop so zeroconf keeps answering.
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        if line.strip() == "start":
            t0 = time.time()
            await advertiser.start(8080)
            print(json.dumps({"start": t0, "registered": time.time()}), flush=True)
        elif line.strip() == "stop":
            t0 = time.time()
            await advertiser.stop()
            print(json.dumps({"stop": t0}), flush=True)


async def _watch() -> None:
    from edgebox.fleet.mdns import NodeBrowser

    browser = NodeBrowser()
    await browser.start()
    print(json.dumps({"ready": time.time()}), flush=True)
    while True:
        event = await browser.events.get()
        print(json.dumps({event.kind: time.time()}), flush=True)


def _child(ns: object, role: str, *extra: str) -> subprocess.Popen[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--role", role, *extra]
    return subprocess.Popen(
        ns.command(argv),  # type: ignore[attr-defined]
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )


def _read(proc: subprocess.Popen[str], key: str) -> dict[str, float]:
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"child exited while waiting for {key!r}")
        data = json.loads(line)
        if key in data:
            return data


def measure(runs: int) -> dict[str, list[float]]:
    sys.path.insert(0, str(REPO))
    from tests.netns import NetnsLab

    results: dict[str, list[float]] = {"registered": [], "added": [], "removed": []}
    with NetnsLab() as lab:
        box, observer = lab.add_node("box", 1), lab.add_node("obs", 9)
        watcher = _child(observer, "watch")
        home = f"/tmp/edgebox-bench-{lab.token}"
        advertiser = _child(box, "advertise", "--home", home)
        assert advertiser.stdin is not None
        try:
            _read(watcher, "ready")
            for _ in range(runs):
                advertiser.stdin.write("start\n")
                advertiser.stdin.flush()
                started = _read(advertiser, "registered")
                added = _read(watcher, "added")
                advertiser.stdin.write("stop\n")
                advertiser.stdin.flush()
                stopped = _read(advertiser, "stop")
                removed = _read(watcher, "removed")
                results["registered"].append(started["registered"] - started["start"])
                results["added"].append(added["added"] - started["start"])
                results["removed"].append(removed["removed"] - stopped["stop"])
        finally:
            advertiser.kill()
            watcher.kill()
            subprocess.run(["rm", "-rf", home], check=False)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--write", type=Path, help="append a Markdown section to this file")
    parser.add_argument("--role", choices=["advertise", "watch"], help=argparse.SUPPRESS)
    parser.add_argument("--home", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "advertise":
        asyncio.run(_advertise(args.home))
        return
    if args.role == "watch":
        asyncio.run(_watch())
        return
    results = measure(args.runs)
    lines = [
        f"| {name} | {statistics.median(v) * 1000:.0f} | {min(v) * 1000:.0f} | "
        f"{max(v) * 1000:.0f} |"
        for name, v in results.items()
    ]
    table = "\n".join(["| step | median ms | min ms | max ms |", "|---|---|---|---|", *lines])
    print(table)
    if args.write:
        machine = f"{platform.node()}, {platform.processor() or platform.machine()}"
        command = f"python benchmarks/bench_discovery.py --runs {args.runs}"
        with args.write.open("a") as f:
            f.write(f"\n## mDNS discovery ({args.runs} runs)\n\n`{command}` on {machine}\n\n")
            f.write(table + "\n")


if __name__ == "__main__":
    main()
