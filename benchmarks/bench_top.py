"""`edgebox top` costs: polling N nodes, and the TUI's CPU share refreshing 200 nodes at 2 Hz.

Part 1 polls one real node's /health and /metrics through DirectSource with its URL repeated N
times (N real nodes would not fit this machine); the node answers each copy for real.
Part 2 runs the Textual app headless over a simulated 200-node fleet refreshed every 0.5 s and
reads the process's CPU time (the target in issue 7: at most 10% of one core).

Usage: python benchmarks/bench_top.py [--sizes 1 10 50 200] [--seconds 10] [--write]
       python benchmarks/bench_top.py --compare REV [--tui-rounds 3] [--seconds 10] [--write]
`--compare REV` measures part 2 only, on this tree and on git revision REV's `edgebox/` (this
same benchmark code drives both), alternating the two in separate processes for several rounds
so that the load of a shared machine falls on both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_serve import emit, machine, start  # noqa: E402

from edgebox.tui.app import FleetApp  # noqa: E402
from edgebox.tui.snapshot import FleetSnapshot, ModelLoad, NodeSnapshot  # noqa: E402
from edgebox.tui.source import DirectSource  # noqa: E402

GIB = 1 << 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def poll_times(url: str, n: int, rounds: int) -> tuple[float, float]:
    """Median wall and CPU milliseconds of one poll of `n` copies of `url`."""
    # One node answers all N copies here, so it (not the poller) is slow at large N: allow 10 s.
    source = DirectSource([url] * n, timeout=httpx.Timeout(10.0))
    walls, cpus = [], []
    try:
        await source.poll()  # warm-up: connections, first sample
        for _ in range(rounds):
            w, c = time.perf_counter(), time.process_time()
            snap = await source.poll()
            walls.append(time.perf_counter() - w)
            cpus.append(time.process_time() - c)
            errors = {x.error for x in snap.nodes if x.status != "online"}
            assert snap.online == n, f"only {snap.online}/{n} nodes answered: {errors}"
    finally:
        await source.aclose()
    return statistics.median(walls) * 1000, statistics.median(cpus) * 1000


class SimulatedFleet:
    """`n` nodes whose figures change on every poll, so every refresh redraws every row."""

    def __init__(self, n: int, *, changing: bool = True) -> None:
        self.n, self.tick, self.changing = n, 0, changing

    async def poll(self) -> FleetSnapshot:
        self.tick += 1 if self.changing or not self.tick else 0
        t = self.tick
        nodes = tuple(
            NodeSnapshot(
                name=f"node-{i:03d}",
                id=f"n{i}",
                url=f"http://10.0.{i // 250}.{i % 250}:8080",
                status="offline" if i % 17 == 0 else "online",
                hw_class="nvidia-gpu",
                accelerators=("NVIDIA RTX 4090",),
                memory_used=(i + t) % 24 * GIB,
                memory_total=24 * GIB,
                utilization_pct=float((i * 7 + t) % 100),
                temperature_c=40.0 + (i + t) % 40,
                power_w=100.0 + (i * t) % 300,
                cpu_pct=float((i + 3 * t) % 100),
                models=(
                    ModelLoad(
                        name="llama-3.1-8b",
                        running=(i + t) % 4,
                        queued=t % 3,
                        slots=4,
                        tokens_per_s=float((i * t) % 200),
                    ),
                ),
                tokens_per_s=float((i * t) % 200),
                p50_ttft_s=0.1 + (i % 10) / 100,
                last_seen=time.time(),
            )
            for i in range(self.n)
        )
        return FleetSnapshot(taken_at=time.time(), nodes=nodes)

    async def aclose(self) -> None:
        return None


def timed_app(n: int, hz: float, changing: bool) -> tuple[FleetApp, list[float]]:
    """The app over a simulated fleet, and the list its refreshes' durations go to."""
    app = FleetApp(SimulatedFleet(n, changing=changing), interval=1 / hz)
    frames: list[float] = []
    show = app.show

    def timed_show(snap: FleetSnapshot) -> None:
        t = time.perf_counter()
        show(snap)
        frames.append(time.perf_counter() - t)

    app.show = timed_show  # type: ignore[method-assign]
    return app, frames


async def measure(frames: list[float], seconds: float) -> tuple[float, float, int]:
    await asyncio.sleep(2)  # settle: first polls, layout
    frames.clear()
    c, w = time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    share = (time.process_time() - c) / (time.perf_counter() - w)
    return share, statistics.median(frames) * 1000, len(frames)


async def tui_cpu_share(
    n: int, hz: float, seconds: float, *, changing: bool = True
) -> tuple[float, float, int]:
    """(CPU share of one core, median ms per refresh, refreshes) for the headless app."""
    app, frames = timed_app(n, hz, changing)
    async with app.run_test(size=(160, 50)):
        return await measure(frames, seconds)


async def tui_child(n: int, seconds: float, changing: bool) -> tuple[float, float, int]:
    """The app on its real terminal driver (stdout is a pty the parent reads)."""
    app, frames = timed_app(n, 2.0, changing)
    result = asyncio.ensure_future(measure(frames, seconds))
    result.add_done_callback(lambda _: app.exit())
    await app.run_async()
    return await result


def pty_cpu_share(n: int, seconds: float, *, changing: bool) -> tuple[float, float, int]:
    """`tui_cpu_share` with the app drawing to a 160x50 pseudo-terminal that is read as fast
    as it writes: the terminal driver's escape codes and writes are counted too."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLORTERM": "truecolor"}
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [
            sys.executable,
            __file__,
            "--tui-child",
            out.name,
            "--tui-nodes",
            str(n),
            "--seconds",
            str(seconds),
            *([] if changing else ["--unchanged"]),
        ]
        proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env)
        os.close(slave)
        while True:  # drain until the child closes the terminal (EIO)
            try:
                if not os.read(master, 1 << 16):
                    break
            except OSError:
                break
        os.close(master)
        assert proc.wait(30) == 0, f"the pty child failed: {proc.returncode}"
        share, ms, frames = json.loads(Path(out.name).read_text())
    return share, ms, frames


CASES = {True: "all change every poll", False: "unchanged"}


def run_tui(script: Path, nodes: int, seconds: float, pty: bool) -> dict[str, list[float]]:
    """One `--tui-only --json` run of `script` in its own process: case → [share, ms, refreshes]."""
    cmd = [
        sys.executable,
        str(script),
        "--tui-only",
        "--json",
        "--tui-nodes",
        str(nodes),
        "--seconds",
        str(seconds),
        *(["--pty"] if pty else []),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    result: dict[str, list[float]] = json.loads(out.strip().splitlines()[-1])
    return result


def compare(rev: str, nodes: int, seconds: float, rounds: int, pty: bool) -> list[str]:
    """Before (git `rev`) and after (this tree), alternated per round; markdown lines."""
    label = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", rev],
        text=True,
        capture_output=True,
        check=True,
    ).stdout.strip()
    runs: dict[str, list[dict[str, list[float]]]] = {"before": [], "after": []}
    loads: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", rev, "edgebox", "benchmarks", "tests"],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        old = Path(tmp) / "benchmarks" / "bench_top.py"
        old.write_text(Path(__file__).read_text())  # the same measurement, the old edgebox/
        for r in range(rounds):
            order = [("before", old), ("after", Path(__file__))]
            for name, script in order if r % 2 == 0 else order[::-1]:
                loads.append(os.getloadavg()[0])
                runs[name].append(run_tui(script, nodes, seconds, pty))
                print(name, runs[name][-1], f"load {loads[-1]:.1f}", file=sys.stderr)
    loads.append(os.getloadavg()[0])

    def med(name: str, case: str, i: int) -> float:
        return statistics.median(run[case][i] for run in runs[name])

    lines = [
        f"Run on {time.strftime('%Y-%m-%d')}. Machine: {machine()}. Command: "
        f"`python benchmarks/bench_top.py --compare {rev} --tui-rounds {rounds} "
        f"--tui-nodes {nodes} --seconds {seconds:g}{' --pty' if pty else ''}`: `FleetApp` "
        + (
            "on its terminal driver, drawing to a 160x50 pty that is read as fast as it is written"
            if pty
            else "headless (160x50)"
        )
        + f", {nodes} "
        f"simulated nodes refreshed at 2 Hz for {seconds:g} s per case; before = `{label}`'s "
        f"`edgebox/`, after = this tree; {rounds} rounds, before and after alternated, each in "
        "its own process. CPU share = process CPU time / wall time (the simulated source's "
        "snapshot building included); medians over the rounds. 1-minute load average during "
        f"the run: {min(loads):.1f} to {max(loads):.1f}.",
        "",
        "| figures | before: CPU share | after: CPU share | after / before | before: median "
        "refresh (ms) | after: median refresh (ms) | per-round CPU shares, before → after |",
        "|---|---|---|---|---|---|---|",
    ]
    for case in CASES.values():
        b, a = med("before", case, 0), med("after", case, 0)
        pairs = ", ".join(
            f"{x[case][0] * 100:.1f} → {y[case][0] * 100:.1f}"
            for x, y in zip(runs["before"], runs["after"], strict=True)
        )
        lines.append(
            f"| {case} | {b * 100:.1f}% | {a * 100:.1f}% | {a / b:.2f} "
            f"| {med('before', case, 1):.1f} | {med('after', case, 1):.1f} | {pairs} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 50, 200])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tui-nodes", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--write", action="store_true", help="append to docs/benchmarks.md")
    parser.add_argument("--tui-only", action="store_true", help="skip polling; TUI part only")
    parser.add_argument("--json", action="store_true", help="with --tui-only: one JSON line")
    parser.add_argument("--compare", metavar="REV", help="TUI part before (git REV) and after")
    parser.add_argument("--tui-rounds", type=int, default=3, help="rounds for --compare")
    parser.add_argument("--pty", action="store_true", help="TUI on a pty, not headless")
    parser.add_argument("--tui-child", metavar="OUT", help=argparse.SUPPRESS)  # pty_cpu_share's
    parser.add_argument("--unchanged", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tui_child:
        result = asyncio.run(tui_child(args.tui_nodes, args.seconds, not args.unchanged))
        Path(args.tui_child).write_text(json.dumps(result))
        return
    if args.compare:
        lines = compare(args.compare, args.tui_nodes, args.seconds, args.tui_rounds, args.pty)
        title = "on a pty" if args.pty else "headless"
        emit([f"### TUI before and after, {title} (`--compare`)", "", *lines], args.write)
        return
    if args.tui_only:
        results = {
            case: pty_cpu_share(args.tui_nodes, args.seconds, changing=changing)
            if args.pty
            else asyncio.run(tui_cpu_share(args.tui_nodes, 2.0, args.seconds, changing=changing))
            for changing, case in CASES.items()
        }
        if args.json:
            print(json.dumps(results))
            return
        for case, (share, ms, n) in results.items():
            print(f"| {case} | {share * 100:.1f}% | {ms:.1f} | {n} |")
        return

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "edgebox", "serve", "--port", str(port), "--threads", "1"]
    proc = start(cmd, url + "/health")
    try:
        polls = [(n, *asyncio.run(poll_times(url, n, args.rounds))) for n in args.sizes]
    finally:
        proc.terminate()
        proc.wait(30)
    tui = {
        changing: asyncio.run(tui_cpu_share(args.tui_nodes, 2.0, args.seconds, changing=changing))
        for changing in (True, False)
    }

    lines = [
        "## `edgebox top` (`benchmarks/bench_top.py`)",
        "",
        f"Run on {time.strftime('%Y-%m-%d')}. Machine: {machine()}. Command: "
        f"`python benchmarks/bench_top.py --sizes {' '.join(map(str, args.sizes))} "
        f"--rounds {args.rounds} --tui-nodes {args.tui_nodes} --seconds {args.seconds:g}`.",
        "",
        "Polling: one real `edgebox serve` node (SmolLM2-135M, idle) whose URL is repeated N "
        "times, /health and /metrics per copy, all concurrent; median of "
        f"{args.rounds} polls (node and poller share this machine's cores; at large N the one "
        "node answering every copy is the bottleneck, which a real fleet spreads out).",
        "",
        "| nodes polled | wall per poll (ms) | poller CPU per poll (ms) |",
        "|---|---|---|",
        *(f"| {n} | {wall:.1f} | {cpu:.1f} |" for n, wall, cpu in polls),
        "",
        f"TUI: headless `FleetApp` (160x50) over {args.tui_nodes} simulated nodes, refreshed "
        f"at 2 Hz for {args.seconds:g} s; CPU share = process CPU time / wall time (the "
        "simulated source's own snapshot building included), target at most 10% of one core.",
        "",
        "| figures | CPU share of one core | median refresh, snapshot → widgets (ms) | refreshes |",
        "|---|---|---|---|",
        *(
            f"| {'all change every poll' if changing else 'unchanged'} | {share * 100:.1f}% "
            f"| {frame_ms:.1f} | {frames} |"
            for changing, (share, frame_ms, frames) in tui.items()
        ),
    ]
    emit(lines, args.write)


if __name__ == "__main__":
    main()
