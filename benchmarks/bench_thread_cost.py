"""What serving one stream costs besides the model: CPU per token on each server's threads.

edgebox (at one or more `--stream-interval` settings) and llama-server run side by side, same
GGUF, threads and slots as bench_engine; each takes single-stream 128-token greedy
`/v1/completions` (`ignore_eos`) in turn, streamed and not. Around each server's requests the
benchmark reads every thread's CPU time and context switches from /proc (Linux only) and
splits them per generated token into:
  - the rest: every thread but the two busiest (edgebox's event loop and loop waker,
    llama-server's HTTP threads): CPU time and wake-ups (voluntary switches) per token;
  - compute: the two busiest threads (llama.cpp's: for edgebox the engine thread, which also
    runs the step's Python, and one OpenMP worker), how often they were preempted per token
    (involuntary switches): on a box whose cores all run the model, every other thread's
    wake-up lands on a compute thread and the whole step waits for it at the next barrier.
Their CPU time is not shown: with OpenMP's active wait it counts spinning as well as work.

    python benchmarks/bench_thread_cost.py --intervals 0,16 --rounds 5 --write
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_concurrency import llama_server_binary  # noqa: E402
from bench_engine import cpu_kind, edgebox_cmd, llama_server_cmd  # noqa: E402
from bench_serve import emit, start  # noqa: E402
from engine_rounds import Figures, measure_level  # noqa: E402

from edgebox.models import resolve_model  # noqa: E402
from tests.conftest import free_port  # noqa: E402

TOKENS = 128
HZ = os.sysconf("SC_CLK_TCK")


def threads(pid: int) -> dict[int, tuple[float, int, int]]:
    """Each thread's (CPU seconds, voluntary, involuntary context switches)."""
    out: dict[int, tuple[float, int, int]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        switches = {
            k: int(v)
            for k, v in (line.split(":") for line in status.splitlines() if "ctxt" in line)
        }
        cpu = (int(fields[11]) + int(fields[12])) / HZ
        out[int(tid)] = (
            cpu,
            switches["voluntary_ctxt_switches"],
            switches["nonvoluntary_ctxt_switches"],
        )
    return out


@dataclass
class Cost:
    """Per-token figures of one server and mode, one entry per round."""

    compute_preempted: list[float] = field(default_factory=list)
    rest_us: list[float] = field(default_factory=list)
    rest_wakeups: list[float] = field(default_factory=list)
    decode: list[float] = field(default_factory=list)

    def add(self, before: dict, after: dict, tokens: int, figures: Figures) -> None:
        deltas = sorted(
            (
                (a[0] - before[t][0], a[1] - before[t][1], a[2] - before[t][2])
                for t, a in after.items()
                if t in before
            ),
            reverse=True,
        )
        compute, rest = deltas[:2], deltas[2:]
        self.compute_preempted.append(sum(d[2] for d in compute) / tokens)
        self.rest_us.append(sum(d[0] for d in rest) / tokens * 1e6)
        self.rest_wakeups.append(sum(d[1] for d in rest) / tokens)
        self.decode.extend(figures.decode)


async def measure(
    servers: dict[str, tuple[int, str]], rounds: int, streams: int = 1
) -> dict[tuple[str, bool], Cost]:
    costs: dict[tuple[str, bool], Cost] = {}
    clients = {
        name: httpx.AsyncClient(base_url=url, timeout=600) for name, (_, url) in servers.items()
    }
    try:
        for client in clients.values():
            await measure_level(client, 1, True, TOKENS, "warm-up", Figures())
        for r in range(rounds):
            order = list(servers)[:: -1 if r % 2 else 1]
            for streamed in (True, False):
                for name in order:
                    pid = servers[name][0]
                    await asyncio.sleep(0.3)
                    figures = Figures()
                    before = threads(pid)
                    for i in range(3):
                        tag = f"r{r}{name}{streamed}{i}"
                        await measure_level(clients[name], streams, streamed, TOKENS, tag, figures)
                    after = threads(pid)
                    cost = costs.setdefault((name, streamed), Cost())
                    cost.add(before, after, 3 * TOKENS * streams, figures)
    finally:
        for client in clients.values():
            await client.aclose()
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--intervals", default="0,16", help="edgebox --stream-interval values (ms)")
    parser.add_argument("--streams", type=int, default=1, help="concurrent requests per turn")
    parser.add_argument("--write", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    path = str(resolve_model(args.model).path)
    commands: dict[str, list[str]] = {}
    for ms in args.intervals.split(","):
        commands[f"edgebox, --stream-interval {ms}"] = edgebox_cmd(
            path, 0, args.threads, False, stream_interval=float(ms)
        )
    binary = llama_server_binary()
    if binary:
        commands["llama-server"] = llama_server_cmd(binary, path, 0, args.threads, False)
    servers: dict[str, tuple[int, str]] = {}
    procs = []
    load_before = os.getloadavg()
    try:
        for name, cmd in commands.items():
            port = free_port()
            cmd[cmd.index("--port") + 1] = str(port)
            proc = start(cmd, f"http://127.0.0.1:{port}/v1/models")
            procs.append(proc)
            servers[name] = (proc.pid, f"http://127.0.0.1:{port}/v1")
        costs = asyncio.run(measure(servers, args.rounds, args.streams))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
    med = statistics.median
    lines = [
        f"### Thread cost per token ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"`python benchmarks/bench_thread_cost.py --intervals {args.intervals} --rounds "
        f"{args.rounds} --streams {args.streams}` on {cpu_kind()}; {args.threads} threads, "
        f"repacking off, {args.streams} concurrent stream(s) of "
        f"{TOKENS} tokens x 3 per server and round, medians of {args.rounds} rounds. Load average "
        f"before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}.",
        "",
        "| server | mode | decode tok/s | other threads µs/token | other threads' wake-ups "
        "/token | compute threads preempted /token |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for (name, streamed), c in costs.items():
        decode = f"{med(c.decode):.1f}" if c.decode else "-"
        lines.append(
            f"| {name} | {'stream' if streamed else 'whole'} | {decode} | {med(c.rest_us):,.0f} | "
            f"{med(c.rest_wakeups):.2f} | {med(c.compute_preempted):.2f} |"
        )
    emit(lines, args.write)


if __name__ == "__main__":
    main()
