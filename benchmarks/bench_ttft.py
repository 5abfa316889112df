"""Time to first token: edgebox vs llama-server vs in-process llama-cpp-python, TTFT alone.

`bench_engine.py` takes one TTFT per side per round between its throughput turns; this one does
nothing else, so many samples fit in a few minutes and the overhead over in-process
llama-cpp-python (the floor: the same prefill with no server around it) can be read to a few
milliseconds. Per round, sides take turns (who goes first alternates) after the same settle:
  - a fresh ~500-token prompt (a one-token streamed /v1/completions): the client's TTFT, and
    for edgebox also the node's own (its `edgebox_time_to_first_token_seconds` histogram:
    from the request's arrival to its first token), so HTTP and the client's share show apart;
  - the same prompt again: a regenerate. edgebox samples from the logits it kept after the
    prompt; llama-server decodes the prompt's last token again.

    python benchmarks/bench_ttft.py --rounds 12 --write
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_concurrency import llama_server_binary  # noqa: E402
from bench_engine import SETTLE_S, InProcess, cpu_kind, edgebox_cmd, llama_server_cmd  # noqa: E402
from bench_serve import emit, start  # noqa: E402
from engine_rounds import Figures, measure_ttft, ttft_prompt  # noqa: E402

from edgebox.models import resolve_model  # noqa: E402
from tests.conftest import free_port  # noqa: E402

_TTFT_SUM = re.compile(r"^edgebox_time_to_first_token_seconds_(sum|count)\{[^}]*\} (\S+)$", re.M)


def node_ttft_total(url: str) -> tuple[float, float]:
    """The node's TTFT histogram: (sum of seconds, count), over every model."""
    totals = {"sum": 0.0, "count": 0.0}
    for kind, value in _TTFT_SUM.findall(httpx.get(url + "/metrics", timeout=10).text):
        totals[kind] += float(value)
    return totals["sum"], totals["count"]


async def one_side(name: str, url: str, tag: str, out: dict[str, list[float]]) -> None:
    """A fresh prompt, then the same prompt again, on one server."""
    async with httpx.AsyncClient(base_url=url + "/v1", timeout=600) as client:
        prompt = ttft_prompt(tag)
        for key in ("fresh", "again"):
            before = node_ttft_total(url) if name == "edgebox" else (0.0, 0.0)
            await asyncio.sleep(SETTLE_S)  # after the scrape: its work must not overlap
            figures = Figures()
            await measure_ttft(client, prompt, figures)
            out.setdefault(f"{name} {key}", []).extend(figures.ttft)
            if name == "edgebox" and key == "fresh":
                after = node_ttft_total(url)
                if after[1] > before[1]:
                    out.setdefault("edgebox node", []).append(after[0] - before[0])


def run(args: argparse.Namespace) -> dict[str, list[float]]:
    model = resolve_model(args.model)
    path = str(model.path)
    ports = {"edgebox": free_port(), "llama-server": free_port()}
    repack = args.repack == "on"
    cmds = {"edgebox": edgebox_cmd(path, ports["edgebox"], args.threads, repack)}
    binary = None if args.skip_llama_server else llama_server_binary()
    if binary:
        cmds["llama-server"] = llama_server_cmd(
            binary, path, ports["llama-server"], args.threads, repack
        )
    urls = {name: f"http://127.0.0.1:{ports[name]}" for name in cmds}
    procs = [start(cmd, urls[name] + "/v1/models") for name, cmd in cmds.items()]
    ceiling = InProcess(model.path, args.threads, repack, 8)
    out: dict[str, list[float]] = {}
    try:
        for r in range(args.rounds + 1):  # round 0 warms every side up and is not counted
            sink: dict[str, list[float]] = {} if r == 0 else out
            sides = [*urls.items(), ("in-process", "")][:: -1 if r % 2 else 1]
            for name, url in sides:
                tag = f"{name[0]} {r:03d}"  # the same length, so the same token count, for all
                if url:
                    asyncio.run(one_side(name, url, tag, sink))
                else:
                    ceiling.round(f"ttft {tag}")
                    sink.setdefault("in-process fresh", []).append(ceiling.runs["ttft"].pop())
    finally:
        ceiling.close()
        for proc in procs:
            proc.terminate()
            proc.wait(30)
    return out


def report(args: argparse.Namespace, out: dict[str, list[float]], load: tuple) -> list[str]:
    ms = {k: 1000 * statistics.median(v) for k, v in out.items() if v}
    floor_runs = out.get("in-process fresh", [])
    lines = [
        f"### Time to first token ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"`python benchmarks/bench_ttft.py --rounds {args.rounds} --threads {args.threads} "
        f"--repack {args.repack}` on "
        f"{cpu_kind()}. Model {args.model}, ~500-token prompt, one-token streamed completion, "
        f"repacking {args.repack}, {args.rounds} rounds (sides alternate who goes first; {SETTLE_S} s "
        f"settle before each), medians. Load average before {load[0]:.2f}, after "
        f"{os.getloadavg()[0]:.2f} (1 min).",
        "",
        "Over in-process: the median of each round's difference to in-process's TTFT of the same "
        "round (runs next to each other in time, so drift on a shared machine cancels).",
        "",
        "| side | fresh prompt (ms) | range (ms) | over in-process (ms) | same prompt again (ms) "
        "| samples |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in ("edgebox", "edgebox node", "llama-server", "in-process"):
        fresh = ms.get(f"{name} fresh", ms.get(name))
        if fresh is None:
            continue
        again = ms.get(f"{name} again")
        samples = out.get(f"{name} fresh", out.get(name, []))
        n = len(samples)
        paired = [a - b for a, b in zip(samples, floor_runs, strict=False)]
        over = 1000 * statistics.median(paired) if paired else 0.0
        lines.append(
            f"| {name} | {fresh:.0f} | {1000 * min(samples):.0f} to {1000 * max(samples):.0f} "
            f"| {over:+.0f} | "
            f"{'-' if again is None else f'{again:.0f}'} | {n} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--skip-llama-server", action="store_true")
    parser.add_argument(
        "--repack", choices=("on", "off"), default="off", help="weight repacking, all sides"
    )
    parser.add_argument("--write", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    load = os.getloadavg()
    emit(report(args, run(args), load), args.write)


if __name__ == "__main__":
    main()
