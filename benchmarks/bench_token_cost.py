"""The engine's time per generated token outside llama_decode (issue 20).

In process: a llama.cpp engine on a bundled GGUF (SmolLM2 by default) generates `--tokens`
greedy tokens per stream (ignore_eos), at 1 and at 8 streams at once, every token handed to the
node's `EventInbox` on a running event loop as a served request's are. `llama_decode` (with a
`llama_synchronize`, so the decode's tail is not charged to the first logits read) is timed on
its own; a step's outside time is the gap from the end of one decode to the start of the next
(sampling, detokenizing, stop matching, events, metrics, the next step's plan and batch, the
engine loop), counted only between two full decode steps (one token per stream, no prompt
tokens). Calls to `llama_sampler_sample` are timed too (native, but outside llama_decode).
Reported: the median gap per step and per generated token (gap / streams), medians over rounds.
Unlike tok/s this hardly moves with the machine's load: a preempted gap is an outlier the median
drops.

    python benchmarks/bench_token_cost.py --rounds 5
    python benchmarks/bench_token_cost.py --against main --rounds 5 --write   # before/after

`--against REV` checks REV out in a temporary worktree and alternates rounds between it and this
tree (each round a fresh process per tree), so both see the same load.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STREAMS = (1, 4, 8)
PROMPT = "The history of the printing press in Europe begins"


def _time_native(records: list[tuple[float, float, int]], sampled: list[float]) -> None:
    """Wrap `llama_cpp.llama_decode` and `llama_sampler_sample` (the engine calls both through
    the module): each decode's start, end and batch size; each sampler call's seconds."""
    import llama_cpp

    decode, sample = llama_cpp.llama_decode, llama_cpp.llama_sampler_sample
    sync = llama_cpp.llama_synchronize
    clock = time.perf_counter

    def timed_decode(ctx: Any, batch: Any) -> int:
        t0 = clock()
        rc = decode(ctx, batch)
        sync(ctx)  # the decode's tail (logits out), else paid at the first logits read
        records.append((t0, clock(), batch.n_tokens))
        return int(rc)

    def timed_sample(sampler: Any, ctx: Any, index: int) -> int:
        t0 = clock()
        token = sample(sampler, ctx, index)
        sampled.append(clock() - t0)
        return int(token)

    llama_cpp.llama_decode = timed_decode
    llama_cpp.llama_sampler_sample = timed_sample


def _gaps(records: list[tuple[float, float, int]], streams: int) -> tuple[list[float], list[float]]:
    """Python gaps and decode times (seconds) between consecutive full decode steps."""
    gaps, decodes = [], []
    for (_, end, n), (start, finish, n_next) in itertools.pairwise(records):
        if n == streams and n_next == streams:
            gaps.append(start - end)
            decodes.append(finish - start)
    return gaps, decodes


def _finish_only(inbox: Any) -> Any:
    """A sink that drops tokens and hands only the finish to `inbox` (the engine alone)."""
    from edgebox.runtimes.base import FinishEvent

    def sink(event: Any) -> None:
        if isinstance(event, FinishEvent):
            inbox.put(0, event)

    return sink


def _run_streams(engine: Any, loop: Any, streams: int, args: argparse.Namespace) -> None:
    """Generate `args.tokens` tokens on each of `streams` sequences at once; wait for all."""
    from edgebox.node.generation import EventInbox
    from edgebox.runtimes.base import FinishEvent, GenerationRequest, SamplingParams

    tokens, stop = args.tokens, args.stop

    params = SamplingParams(temperature=0, ignore_eos=True)

    async def one(i: int) -> int:
        inbox = EventInbox(asyncio.get_running_loop(), eager=True)
        prompt = engine.model.tokenize(f"{i} {time.time_ns()}. {PROMPT}")
        stops = (stop,) if stop else ()
        request = GenerationRequest(prompt, params, max_tokens=tokens, stop=stops)
        sink = _finish_only(inbox) if args.sink == "none" else (lambda e: inbox.put(0, e))
        engine.submit(request, sink)
        while True:
            for _, event, _ in await inbox.batch():
                if isinstance(event, FinishEvent):
                    return int(event.completion_tokens)

    async def all_streams() -> list[int]:
        return list(await asyncio.gather(*(one(i) for i in range(streams))))

    done = asyncio.run_coroutine_threadsafe(all_streams(), loop).result(timeout=600)
    assert done == [tokens] * streams, f"expected {tokens} tokens per stream, got {done}"


def one_round(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """This process's tree: per stream count, Python µs per step and per token (medians over
    the round's steps), and llama_decode ms per step."""
    from edgebox.models import resolve_model
    from edgebox.runtimes.llamacpp import EngineConfig, LlamaCppEngine, LlamaCppModel

    records: list[tuple[float, float, int]] = []
    sampled: list[float] = []
    _time_native(records, sampled)
    path = resolve_model(args.model).path
    model = LlamaCppModel(path, n_gpu_layers=0, extra_buffers=False)
    config = EngineConfig(n_ctx=args.tokens + 64, parallel=max(STREAMS), n_threads=args.threads)
    engine = LlamaCppEngine(model, config)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="bench-loop", daemon=True).start()
    out: dict[str, dict[str, float]] = {}
    try:
        # warm-up: first-call costs out of the figures
        _run_streams(engine, loop, 1, argparse.Namespace(**{**vars(args), "tokens": 8}))
        for streams in STREAMS:
            records.clear()
            sampled.clear()
            _run_streams(engine, loop, streams, args)
            gaps, decodes = _gaps(records, streams)
            step_us = statistics.median(gaps) * 1e6
            sample_us = statistics.median(sampled) * 1e6 if sampled else 0.0
            out[str(streams)] = {
                "python_us_per_step": step_us,
                "python_us_per_token": step_us / streams,
                "sampler_us_per_token": sample_us,
                "python_less_sampler_us_per_token": step_us / streams - sample_us,
                "decode_ms_per_step": statistics.median(decodes) * 1e3,
                "steps": len(gaps),
            }
    finally:
        loop.call_soon_threadsafe(loop.stop)
        engine.close()
        model.close()
    return out


def _child(tree: Path, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """One round in a fresh process that imports edgebox from `tree`."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(tree)]
    cmd += ["--tokens", str(args.tokens), "--threads", str(args.threads), "--sink", args.sink]
    cmd += ["--model", args.model]
    if args.stop:
        cmd += ["--stop", args.stop]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=900)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _table(
    results: dict[str, list[dict[str, dict[str, float]]]], args: argparse.Namespace
) -> list[str]:
    """Per stream count and tree: µs per token outside llama_decode (per step), and the part of
    it spent in llama_sampler_sample; medians over rounds."""
    names = list(results)
    cols = " | ".join(f"{n}: µs/token (µs/step) | {n}: in sampler chain" for n in names)
    lines = [f"| streams | {cols} | llama_decode ms/step |", "|---" * (2 * len(names) + 2) + "|"]

    def median(name: str, streams: str, key: str) -> float:
        return statistics.median(r[streams][key] for r in results[name])

    for streams in map(str, STREAMS):
        cells = [
            f"{median(n, streams, 'python_us_per_token'):.1f} "
            f"({median(n, streams, 'python_us_per_step'):.0f}) | "
            f"{median(n, streams, 'sampler_us_per_token'):.1f}"
            for n in names
        ]
        decode = median(names[-1], streams, "decode_ms_per_step")
        lines.append(f"| {streams} | " + " | ".join(cells) + f" | {decode:.2f} |")
    per_round = {
        n: [round(r["8"]["python_us_per_token"], 1) for r in rs] for n, rs in results.items()
    }
    stop = f", stop string {args.stop!r}" if args.stop else ""
    lines += [
        "",
        f"{args.model}, {args.rounds} rounds of {args.tokens} tokens per stream, --threads "
        f"{args.threads}, sink {args.sink}{stop}; 8-stream µs/token per round: "
        + "; ".join(f"{n} {v}" for n, v in per_round.items()),
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="a bundled GGUF")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128, help="generated per stream")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads")
    parser.add_argument("--stop", default=None, help="a stop string every request carries")
    parser.add_argument(
        "--sink",
        choices=("inbox", "none"),
        default="inbox",
        help="inbox: every token to an EventInbox on a running loop (as served); none: dropped",
    )
    parser.add_argument("--against", default=None, help="a git revision to compare with")
    parser.add_argument("--write", action="store_true", help="append to docs/benchmarks.md")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, args.child)
        print(json.dumps(one_round(args)))
        return
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_serve import emit, machine

    with tempfile.TemporaryDirectory() as tmp:
        trees = {"this tree": ROOT}
        if args.against:
            before = Path(tmp) / "before"
            subprocess.run(
                [
                    "git",
                    "-C",
                    str(ROOT),
                    "worktree",
                    "add",
                    "--detach",
                    "-q",
                    str(before),
                    args.against,
                ],
                check=True,
            )
            trees = {args.against: before, "this tree": ROOT}
        results: dict[str, list[dict[str, dict[str, float]]]] = {name: [] for name in trees}
        try:
            for i in range(args.rounds):
                for name, tree in trees.items():
                    results[name].append(_child(tree, args))
                    print(f"round {i + 1} {name}: {results[name][-1]}", flush=True)
        finally:
            if args.against:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)]
                )
    lines = [f"Machine: {machine()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", ""]
    emit(lines + _table(results, args), args.write)


if __name__ == "__main__":
    main()
