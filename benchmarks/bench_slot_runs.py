"""Concurrent streams on consecutive slots vs scattered ones: what a decode step costs.

With the KV cache split per sequence (edgebox's `kv_unified = false`), llama.cpp decodes
sequences in one ubatch only where their ids come consecutively in batch order; every other run
of ids is another ubatch, the whole model's compute again. Here an in-process engine (SmolLM2 by
default, 8 slots) runs `--streams` greedy streams at once with the slots forced to each layout in
turn (the engine's own choice, `slots.choose_slot`, is replaced and its moves between slots are
off, for the benchmark only), round by round, and reports the median time per decode step (a
stream's tokens after its first).

    python benchmarks/bench_slot_runs.py --rounds 4 --write
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
from edgebox.runtimes.llamacpp import engine as engine_module  # noqa: E402
from edgebox.runtimes.llamacpp.slots import Slot, runs_with  # noqa: E402

LAYOUTS = {4: ((0, 1, 2, 3), (0, 1, 6, 7), (0, 2, 4, 6)), 2: ((0, 1), (0, 4))}


def step_ms(rt: LlamaCppRuntime, streams: int, tokens: int, tag: str) -> float:
    """Median over the streams of the time per token after each stream's first."""
    runs = StreamStamps(streams)
    greedy = SamplingParams(temperature=0.0, ignore_eos=True)
    for i in range(streams):
        prompt = rt.tokenize(story_prompt(tag, i))
        rt.submit(GenerationRequest(prompt, greedy, max_tokens=tokens), runs.sink(i))
    runs.wait()
    return 1000 * statistics.median((s[-1] - s[0]) / (len(s) - 1) for s in runs.stamps)


def run(args: argparse.Namespace) -> dict[tuple[int, ...], list[float]]:
    layouts = LAYOUTS[args.streams]
    allowed: list[int] = list(layouts[0])

    def forced(free: list[Slot], prompt: object, busy: object = ()) -> Slot:
        return min((s for s in free if s.seq_id in allowed), key=lambda s: s.seq_id)

    engine_module.choose_slot = forced  # type: ignore[assignment]
    rt = LlamaCppRuntime(
        resolve_model(args.model).path,
        name="m",
        config=EngineConfig(n_ctx=1024, parallel=8, n_threads=args.threads),
    )
    rt.engine._move_cells = 0  # the layouts stay as forced (the engine would join the runs)
    results: dict[tuple[int, ...], list[float]] = {layout: [] for layout in layouts}
    try:
        step_ms(rt, args.streams, 16, "warm-up")
        for r in range(args.rounds):
            for layout in layouts:
                allowed[:] = layout
                results[layout].append(step_ms(rt, args.streams, args.tokens, f"r{r}{layout}"))
    finally:
        rt.close()
    return results


def report(args: argparse.Namespace, results: dict[tuple[int, ...], list[float]]) -> list[str]:
    first = statistics.median(next(iter(results.values())))
    lines = [
        f"### Streams on consecutive slots vs scattered ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"`python benchmarks/bench_slot_runs.py --streams {args.streams} --rounds {args.rounds}"
        f" --tokens {args.tokens}` on {cpu_kind()}; model {args.model}, {args.threads} threads,"
        f" 8 slots, {args.streams} greedy streams at once, median of {args.rounds} rounds.",
        "",
        "| slots | runs of consecutive ids (ubatches a step) | ms a step | vs consecutive |",
        "|---|---:|---:|---:|",
    ]
    for layout, times in results.items():
        runs = runs_with(layout[1:], layout[0])
        ms = statistics.median(times)
        lines.append(f"| {', '.join(map(str, layout))} | {runs} | {ms:.1f} | {ms / first:.2f}x |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--streams", type=int, choices=sorted(LAYOUTS), default=4)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--write", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    emit(report(args, run(args)), args.write)


if __name__ == "__main__":
    main()
