"""Streams that end at different times: the rest moved back into one run of slots, or left split.

Four greedy streams start together on slots 0-3; those named by `--ends` stop after `--short`
tokens, the others run to `--tokens`. With the KV cache split per sequence, llama.cpp decodes
sequences in one ubatch only where their ids run consecutively, so once slot 1 is free, 0 and
2-3 take two ubatches a step. The engine moves a busy sequence into a free slot that joins them
again (`SlotMoves._close_gaps`); here it does, and then does not (`_move_cells = 0`), round
by round with the order alternating, in one process. Reported: the median time per step of the
long streams after the short ones ended, and each round's wall time.

    python benchmarks/bench_ended_streams.py --rounds 6 --write
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_engine import cpu_kind  # noqa: E402
from bench_serve import emit  # noqa: E402
from engine_rounds import StreamStamps, story_prompt  # noqa: E402

from edgebox.models import resolve_model  # noqa: E402
from edgebox.runtimes.base import (  # noqa: E402
    GenerationRequest,
    SamplingParams,
)
from edgebox.runtimes.llamacpp import EngineConfig, LlamaCppRuntime  # noqa: E402

STREAMS = 4
MODES = ("moved", "left split")


def one_round(rt: LlamaCppRuntime, args: argparse.Namespace, tag: str) -> tuple[float, float]:
    """(median ms a step of the long streams after the short ones ended, round wall ms)."""
    runs = StreamStamps(STREAMS)
    stamps = runs.stamps
    greedy = SamplingParams(temperature=0.0, ignore_eos=True)
    started = time.perf_counter()
    with rt.engine._cond:  # one admission: slots 0-3 in submission order
        for i in range(STREAMS):
            prompt = rt.tokenize(story_prompt(tag, i))
            n = args.short if i in args.ends else args.tokens
            rt.submit(GenerationRequest(prompt, greedy, max_tokens=n), runs.sink(i))
    runs.wait()
    wall = 1000 * (time.perf_counter() - started)
    ended = max(stamps[i][-1] for i in args.ends)
    tails = []
    for i in range(STREAMS):
        if i in args.ends:
            continue
        after = [t for t in stamps[i] if t > ended]
        tails.append((after[-1] - after[0]) / (len(after) - 1))
    return 1000 * statistics.median(tails), wall


def run(args: argparse.Namespace) -> dict[str, list[tuple[float, float]]]:
    rt = LlamaCppRuntime(
        resolve_model(args.model).path,
        name="m",
        config=EngineConfig(n_ctx=1024, parallel=8, n_threads=args.threads),
    )
    moves = rt.engine._move_cells
    results: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
    try:
        one_round(rt, args, "warm-up")
        for r in range(args.rounds):
            order = MODES if r % 2 == 0 else MODES[::-1]
            for mode in order:
                rt.engine._move_cells = moves if mode == "moved" else 0
                results[mode].append(one_round(rt, args, f"r{r}{mode}"))
    finally:
        rt.close()
    return results


def report(args: argparse.Namespace, results: dict[str, list[tuple[float, float]]]) -> list[str]:
    ends = ", ".join(map(str, args.ends))
    lines = [
        f"### Streams that end at different times ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"`python benchmarks/bench_ended_streams.py --rounds {args.rounds} --tokens {args.tokens}"
        f" --short {args.short} --ends {' '.join(map(str, args.ends))}` on {cpu_kind()}; model"
        f" {args.model}, {args.threads} threads, 8 slots, {STREAMS} greedy streams on slots 0-3,"
        f" slot(s) {ends} ending after {args.short} tokens, the rest after {args.tokens}; medians"
        f" of {args.rounds} rounds, the two modes alternating first.",
        "",
        "| the rest of the streams | ms a step after the short ones ended | round wall ms |",
        "|---|---:|---:|",
    ]
    for mode, rounds in results.items():
        step = statistics.median(s for s, _ in rounds)
        wall = statistics.median(w for _, w in rounds)
        lines.append(f"| {mode} | {step:.1f} | {wall:.0f} |")
    moved, split = (statistics.median(s for s, _ in results[m]) for m in MODES)
    lines += ["", f"Left split, a step takes {split / moved:.2f}x as long."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=128, help="the long streams' tokens")
    parser.add_argument("--short", type=int, default=16, help="the short streams' tokens")
    parser.add_argument(
        "--ends", type=int, nargs="+", default=[1], choices=range(STREAMS), help="short slots"
    )
    parser.add_argument("--write", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    emit(report(args, run(args)), args.write)


if __name__ == "__main__":
    main()
