"""Engine speed: edgebox vs llama.cpp's C++ llama-server vs in-process llama-cpp-python.

One run, same GGUF, threads, slot count and weight-repacking mode on every side:
  - 1, 4 and 8 concurrent /v1/completions streams, streamed and not (greedy, `ignore_eos` so
    every request runs to its length on both servers, unique prompts so no prefix is reused):
    whole-request tok/s (tokens ÷ wall time of the round) and, streamed,
    the post-first-token decode rate per request;
  - time to first token of a ~500-token prompt (a one-token streamed completion);
  - in-process llama-cpp-python single stream (a child process taking one turn per round), the
    ceiling for one stream.
Both servers stay up side by side and take turns level by level, round by round, so load
drifting on a shared machine hits both alike. Every rate is printed beside its share of the
speed of light: measured memory bandwidth ÷ GGUF bytes (a dense model at batch 1 reads each
weight once per token; batched streams share the read, so aggregate shares can pass 100 %).
Repacking (llama.cpp's CPU_REPACK/AMX weight layouts) runs on and off where both work.

    python benchmarks/bench_engine.py --rounds 5 --write
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_concurrency import llama_server_binary  # noqa: E402
from bench_serve import emit, start  # noqa: E402
from engine_rounds import Figures, measure_level, measure_ttft, ttft_prompt  # noqa: E402

from edgebox.hardware.bandwidth import probe_cpu, speed_of_light  # noqa: E402
from edgebox.hardware.probe import cpuinfo_fields  # noqa: E402
from edgebox.models import resolve_model  # noqa: E402
from edgebox.runtimes.llamacpp.cpu_probe import ExtraBuffers, extra_buffers  # noqa: E402
from tests.conftest import free_port  # noqa: E402

LEVELS = (1, 4, 8)
SETTLE_S = 0.5  # quiet before each TTFT: the previous turn's threads have stopped spinning
SLOT_CTX = 2048
PARALLEL = 8
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def cpu_kind() -> str:
    """CPU model and the flags that pick llama.cpp's kernels."""
    model, flags = cpuinfo_fields(Path("/proc/cpuinfo").read_text(errors="replace"))
    present = [f for f in CPU_FLAGS if f in flags] or ["none of " + "/".join(CPU_FLAGS[:2])]
    return f"{model or 'unknown CPU'}; {os.cpu_count()} CPUs; flags: {', '.join(present)}"


def repack_works(model: Path) -> ExtraBuffers:
    """edgebox's own answer (a child process decodes once, cached per CPU and build)."""
    return extra_buffers("auto", model=model)


def edgebox_cmd(
    path: str,
    port: int,
    threads: int,
    repack: bool,
    parallel: int = PARALLEL,
    ctx: int = SLOT_CTX,
    stream_interval: float | None = None,
) -> list[str]:
    interval = [] if stream_interval is None else ["--stream-interval", str(stream_interval)]
    return [
        sys.executable,
        *("-m", "edgebox", "serve", "-m", path, "--alias", "m", "--port", str(port)),
        *("--threads", str(threads), "--parallel", str(parallel), "--ctx", str(ctx)),
        *("--cpu-extra-buffers", "on" if repack else "off", "--gpu-layers", "0"),
        *interval,
    ]


def llama_server_cmd(
    binary: str,
    path: str,
    port: int,
    threads: int,
    repack: bool,
    parallel: int = PARALLEL,
    ctx: int = SLOT_CTX,
) -> list[str]:
    """`ctx` per slot, as edgebox's `--ctx` (llama-server's `-c` is all slots together)."""
    return [
        binary,
        *("-m", path, "-a", "m", "--port", str(port), "-t", str(threads), "-tb", str(threads)),
        *("-np", str(parallel), "-c", str(ctx * parallel), "--no-webui", "-ngl", "0"),
        *(["--repack"] if repack else ["--no-repack"]),
    ]


class InProcess:
    """In-process llama-cpp-python in a child process (its threads and memory go when it
    ends), one single-stream round whenever asked: the ceiling, measured in turn with the
    servers rather than after them."""

    def __init__(self, path: Path, threads: int, repack: bool, tokens: int) -> None:
        code = (
            "import sys; sys.path.insert(0, sys.argv[1]); from engine_rounds import "
            "in_process_worker; in_process_worker(sys.argv[2], int(sys.argv[3]), "
            "sys.argv[4] == '1', int(sys.argv[5]))"
        )
        args = [str(ROOT / "benchmarks"), str(path), str(threads), "1" if repack else "0"]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, *args, str(tokens)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"
        self.runs: dict[str, list[float]] = {"tok_s": [], "decode": [], "ttft": []}

    def round(self, tag: str) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(tag + "\n")
        self.proc.stdin.flush()
        for key, value in json.loads(self.proc.stdout.readline()).items():
            self.runs[key].append(float(value))

    def medians(self) -> dict[str, float]:
        return {k: statistics.median(v) for k, v in self.runs.items() if v}

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(30)


async def compare(
    servers: dict[str, str], rounds: int, tokens: int, ceiling: InProcess
) -> dict[tuple[str, bool, int], Figures]:
    """Every (server, streamed, level) over `rounds` rounds, servers taking turns (who goes
    first alternates by round: a server's threads can still spin for a moment after its turn,
    and that must not always land on the same other one); in-process llama-cpp-python takes
    one single-stream turn per round. Each TTFT is timed after a short settle."""
    results: dict[tuple[str, bool, int], Figures] = {}
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    clients = {
        name: httpx.AsyncClient(base_url=url, timeout=600, limits=limits)
        for name, url in servers.items()
    }
    try:
        for client in clients.values():  # warm-up
            await measure_level(client, 1, True, tokens, "Warm-up", Figures())
        for r in range(rounds):
            ceiling.round(f"r{r}")
            order = list(clients.items())[:: -1 if r % 2 else 1]
            for c in LEVELS:
                for streamed in (True, False):
                    for name, client in order:
                        figures = results.setdefault((name, streamed, c), Figures())
                        tag = f"r{r}c{c}{'s' if streamed else 'n'}"
                        await measure_level(client, c, streamed, tokens, tag, figures)
            for name, client in order:
                figures = results.setdefault((name, True, 0), Figures())
                await asyncio.sleep(SETTLE_S)
                await measure_ttft(client, ttft_prompt(f"{name} round {r}"), figures)
    finally:
        for client in clients.values():
            await client.aclose()
    return results


def run_mode(args: argparse.Namespace, repack: bool) -> tuple[dict, dict[str, float]]:
    model = resolve_model(args.model)
    path = str(model.path)
    ports = {"edgebox": free_port(), "llama-server": free_port()}
    cmds = {
        "edgebox": edgebox_cmd(
            path, ports["edgebox"], args.threads, repack, stream_interval=args.stream_interval
        )
    }
    binary = None if args.skip_llama_server else llama_server_binary()
    if binary:
        cmds["llama-server"] = llama_server_cmd(
            binary, path, ports["llama-server"], args.threads, repack
        )
    procs = [start(cmd, f"http://127.0.0.1:{ports[name]}/v1/models") for name, cmd in cmds.items()]
    ceiling = InProcess(model.path, args.threads, repack, args.tokens)
    try:
        servers = {name: f"http://127.0.0.1:{ports[name]}/v1" for name in cmds}
        results = asyncio.run(compare(servers, args.rounds, args.tokens, ceiling))
    finally:
        ceiling.close()
        for proc in procs:
            proc.terminate()
            proc.wait(30)
    return results, ceiling.medians()


def pct(rate: float, sol: float | None) -> str:
    return f"{100 * rate / sol:.0f} %" if sol else "n/a"


def med(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def mode_lines(
    repack: bool, results: dict, ceiling: dict[str, float], sol: float | None
) -> list[str]:
    names = sorted({name for name, _, _ in results}, key=lambda n: n != "edgebox")
    lines = [
        f"Repacking **{'on' if repack else 'off'}**. In-process llama-cpp-python, one stream: "
        f"{ceiling.get('tok_s', 0):.1f} tok/s whole request, {ceiling.get('decode', 0):.1f} "
        f"tok/s after the first token ({pct(ceiling.get('decode', 0), sol)} of speed of light), "
        f"500-token TTFT {ceiling.get('ttft', 0) * 1000:.0f} ms.",
        "",
        "| streams | mode | "
        + " | ".join(f"{n} tok/s (SoL %)" for n in names)
        + " | ratio | "
        + " | ".join(f"{n} decode/stream" for n in names)
        + " |",
        "|---|---|" + "---:|" * (2 * len(names) + 1),
    ]
    for c in LEVELS:
        for streamed in (True, False):
            figs = [results[(n, streamed, c)] for n in names]
            rates = [med(f.aggregate) for f in figs]
            ratio = f"{rates[0] / rates[1]:.2f}x" if len(rates) > 1 and rates[1] else "n/a"
            decode = [f"{med(f.decode):.1f}" if streamed else "-" for f in figs]
            lines.append(
                f"| {c} | {'stream' if streamed else 'whole'} | "
                + " | ".join(f"{r:.1f} ({pct(r, sol)})" for r in rates)
                + f" | {ratio} | "
                + " | ".join(decode)
                + " |"
            )
    ttft = {n: med(results[(n, True, 0)].ttft) for n in names}
    lines += [
        "",
        "TTFT of a ~500-token prompt (median): "
        + ", ".join(f"{n} {t * 1000:.0f} ms" for n, t in ttft.items())
        + f", in-process {ceiling.get('ttft', 0) * 1000:.0f} ms.",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64, help="tokens per request")
    parser.add_argument("--repack", choices=("both", "on", "off"), default="both")
    parser.add_argument("--skip-llama-server", action="store_true")
    parser.add_argument(
        "--stream-interval",
        type=float,
        metavar="MS",
        help="edgebox's `serve --stream-interval` (default: the node's own, 16 ms)",
    )
    parser.add_argument("--write", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    model = resolve_model(args.model)
    size = model.path.stat().st_size
    gbps = probe_cpu()
    sol = speed_of_light(gbps, size)
    load_before = os.getloadavg()
    modes = {"both": (True, False), "on": (True,), "off": (False,)}[args.repack]
    works = repack_works(model.path)
    if True in modes and not works.enabled and args.repack == "both":
        modes = (False,)  # forcing it on would crash every side alike
    sections: list[str] = [
        "",
        f"Repacking here: {works.status}{' (' + works.detail + ')' if works.detail else ''}.",
    ]
    for repack in modes:
        results, ceiling = run_mode(args, repack)
        sections += ["", *mode_lines(repack, results, ceiling, sol)]
    load_after = os.getloadavg()
    interval = (
        "" if args.stream_interval is None else f" --stream-interval {args.stream_interval:g}"
    )
    model_flag = "" if args.model == "smollm2-135m" else f" --model {args.model}"
    lines = [
        f"### Engine speed ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"`python benchmarks/bench_engine.py{model_flag} --rounds {args.rounds} --threads {args.threads} "
        f"--tokens {args.tokens} --repack {args.repack}{interval}` on {cpu_kind()}. "
        f"Model {model.alias} "
        f"({model.path.name}, {size / 1e6:.0f} MB); memory bandwidth {gbps:.1f} GB/s "
        f"(copy probe), so speed of light {sol or 0:.0f} tok/s at batch 1. "
        f"{args.tokens} tokens per request, {args.rounds} rounds, medians; --parallel "
        f"{PARALLEL} on both servers. Load average before {load_before[0]:.2f}, "
        f"after {load_after[0]:.2f} (1 min). Ratio: edgebox ÷ llama-server.",
        *sections,
    ]
    emit(lines, args.write)


if __name__ == "__main__":
    main()
