"""The cost of one sampled draw: llama.cpp's own samplers vs edgebox's (`softmax_draw.SoftmaxDraw`),
on real logits rows, side by side in one run; and how often a grammar's mask is paid.

Rows: SmolLM2 (by default) generates from a few prompts at temperature 0.8 through edgebox's
engine and each logits row handed to the sampler is kept (`--rows`). Each sampling setting then
draws from every row, in turn:
- llama.cpp: the whole vocabulary copied into a candidate array and the llama.cpp chain applied
  (top-k, top-p, min-p, temperature, a seeded draw), as edgebox sampled before this benchmark;
- edgebox: `Sampler.draw` for the same setting.
Reported: the median over `--repeats` passes of the mean time per draw. These rows are warm in
the cache (a loop over kept rows); in a serving engine every row is fresh from `llama_decode`
and both sides cost more.

Masks: a JSON-schema reply sampled at temperature 0.7 (`--json-requests` seeds, 128 tokens each),
counting the draws the grammar refused and the masks of the vocabulary paid for them, with
`SoftmaxDraw.draw_allowed` (a refused draw settled from the best tokens where that is exact) and
without it (every refusal masked), and each mask along the token tree (`grammar_mask`) or
checking every token, the four ways taking turns.

    python benchmarks/bench_sampling.py --write
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_engine import cpu_kind  # noqa: E402
from bench_serve import emit  # noqa: E402
from bench_tool_calls import WEEK  # noqa: E402

from edgebox.models import resolve_model  # noqa: E402
from edgebox.runtimes.base import FinishEvent, GenerationRequest, SamplingParams  # noqa: E402
from edgebox.runtimes.llamacpp import (  # noqa: E402
    EngineConfig,
    LlamaCppRuntime,
    grammar_mask,
    sampling,
)

PROMPTS = (
    "Write the weather forecast for Paris for each day of next week.",
    "Tell me a story about a dragon who learns to bake bread.",
    "Explain how a CPU cache works to a new programmer.",
)
SETTINGS: dict[str, dict[str, Any]] = {
    "temperature alone (OpenAI clients)": {},
    "top_p 0.9": {"top_p": 0.9},
    "top_p 0.95, min_p 0.05": {"top_p": 0.95, "min_p": 0.05},
    "min_p 0.05": {"min_p": 0.05},
    "top_k 40": {"top_k": 40},
    "top_k 40, top_p 0.95, min_p 0.05 (llama-server's defaults)": {
        "top_k": 40,
        "top_p": 0.95,
        "min_p": 0.05,
    },
    "top_k 20, top_p 0.8 (Qwen's card)": {"top_k": 20, "top_p": 0.8},
}


def collect_rows(runtime: LlamaCppRuntime, count: int) -> np.ndarray:
    """Logits rows the engine samples from, kept as it hands them to the sampler."""
    rows: list[np.ndarray] = []
    draw = sampling.Sampler.draw

    def keep(self: sampling.Sampler, row: np.ndarray) -> int:
        rows.append(row.copy())
        return draw(self, row)

    sampling.Sampler.draw = keep  # type: ignore[method-assign]
    try:
        for seed, ask in enumerate(PROMPTS * 4):
            if len(rows) >= count:
                break
            prompt = runtime.tokenize(runtime.render_chat([{"role": "user", "content": ask}]))
            params = SamplingParams(temperature=0.8, seed=seed)
            generate(runtime, GenerationRequest(prompt, params, max_tokens=count - len(rows)))
    finally:
        sampling.Sampler.draw = draw  # type: ignore[method-assign]
    return np.stack(rows[:count])


def generate(runtime: LlamaCppRuntime, request: GenerationRequest) -> None:
    done = threading.Event()

    def sink(event: object) -> None:
        if isinstance(event, FinishEvent):
            done.set()

    runtime.prepare_sampling(request.sampling)  # as the node does, off its event loop
    runtime.submit(request, sink)
    if not done.wait(300):
        raise RuntimeError("generation did not finish")


class LlamaCppChain:
    """llama.cpp's samplers for one setting, applied to the whole vocabulary."""

    def __init__(self, n_vocab: int, params: SamplingParams) -> None:
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        add = llama_cpp.llama_sampler_chain_add
        if params.top_k > 0:
            add(chain, llama_cpp.llama_sampler_init_top_k(params.top_k))
        if params.top_p < 1.0:
            add(chain, llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
        if params.min_p > 0.0:
            add(chain, llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
        add(chain, llama_cpp.llama_sampler_init_temp(params.temperature))
        add(chain, llama_cpp.llama_sampler_init_dist(params.seed or 0))
        self.chain = chain
        self.candidates = np.empty(n_vocab, grammar_mask.CANDIDATE)
        self.ids = np.arange(n_vocab, dtype=np.int32)

    def draw(self, row: np.ndarray) -> int:
        self.candidates["id"] = self.ids
        self.candidates["logit"] = row
        data = self.candidates.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data))
        array = llama_cpp.llama_token_data_array(data, len(row), -1, False)
        llama_cpp.llama_sampler_apply(self.chain, ctypes.byref(array))
        return int(array.data[array.selected].id)

    def free(self) -> None:
        llama_cpp.llama_sampler_free(self.chain)


def per_draw_ms(draw: Any, rows: np.ndarray) -> float:
    for row in rows[:10]:
        draw(row)
    start = time.perf_counter()
    for row in rows:
        draw(row)
    return (time.perf_counter() - start) / len(rows) * 1e3


def draw_costs(runtime: LlamaCppRuntime, rows: np.ndarray, repeats: int) -> list[str]:
    model = runtime.engine.model
    lines = [
        "| setting | llama.cpp chain (ms/draw) | edgebox (ms/draw) | llama.cpp ÷ edgebox |",
        "|---|---:|---:|---:|",
    ]
    for name, extra in SETTINGS.items():
        params = SamplingParams(temperature=0.8, seed=1, **extra)
        chain, ours = LlamaCppChain(model.n_vocab, params), sampling.build_sampler(model, params)
        times: dict[str, list[float]] = {"chain": [], "edgebox": []}
        try:
            for _ in range(repeats):  # the two take turns
                times["chain"].append(per_draw_ms(chain.draw, rows))
                times["edgebox"].append(per_draw_ms(ours.draw, rows))
        finally:
            chain.free()
            ours.free()
        a, b = statistics.median(times["chain"]), statistics.median(times["edgebox"])
        lines.append(f"| {name} | {a:.3f} | {b:.3f} | {a / b:.1f}x |")
    return lines


def mask_counts(runtime: LlamaCppRuntime, requests: int) -> list[str]:
    """Refused draws and masks paid on sampled JSON-schema replies: with and without settling
    a refused draw from the best tokens, and masks along the token tree or over every token."""
    counts: dict[str, float] = {"refused": 0, "masked": 0, "mask_s": 0.0}
    mode = {"settle": True, "tree": True}
    draw_from, draw_allowed = sampling.Sampler._draw_from, sampling.SoftmaxDraw.draw_allowed
    tree_of = sampling.token_tree

    def counted_from(self: sampling.Sampler, row: np.ndarray, masked: bool) -> int:
        start = time.perf_counter()
        token = draw_from(self, row, masked)
        if masked:
            counts["masked"] += 1
            counts["mask_s"] += time.perf_counter() - start
        return token

    def counted_allowed(self: sampling.SoftmaxDraw, row: np.ndarray, check: Any) -> int | None:
        counts["refused"] += 1
        return draw_allowed(self, row, check) if mode["settle"] else None

    def tree_or_not(model: Any, build: bool = False) -> Any:
        return tree_of(model, build) if mode["tree"] or build else None

    sampling.Sampler._draw_from = counted_from  # type: ignore[method-assign]
    sampling.SoftmaxDraw.draw_allowed = counted_allowed  # type: ignore[method-assign,assignment]
    sampling.token_tree = tree_or_not
    prompt = runtime.tokenize(runtime.render_chat([{"role": "user", "content": PROMPTS[0]}]))
    modes = [(True, True), (True, False), (False, True), (False, False)]
    results: dict[tuple[bool, bool], list[tuple[float, float, float]]] = {m: [] for m in modes}
    try:
        for seed in range(requests):
            for settle, tree in modes:
                mode.update(settle=settle, tree=tree)
                counts.update(refused=0, masked=0, mask_s=0.0)
                params = SamplingParams(temperature=0.7, seed=seed, json_schema=WEEK)
                generate(runtime, GenerationRequest(prompt, params, max_tokens=128))
                results[settle, tree].append(
                    (counts["refused"], counts["masked"], counts["mask_s"])
                )
    finally:
        sampling.Sampler._draw_from = draw_from  # type: ignore[method-assign]
        sampling.SoftmaxDraw.draw_allowed = draw_allowed  # type: ignore[method-assign]
        sampling.token_tree = tree_of
    lines = [
        "| settled from the best tokens | mask | refused / masks / ms masking per reply |",
        "|---|---|---:|",
    ]
    for (settle, tree), runs in results.items():
        refused, masked, ms = (statistics.mean(r[i] for r in runs) for i in range(3))
        lines.append(
            f"| {'yes' if settle else 'no (every refusal masked)'} "
            f"| {'along the token tree' if tree else 'every token checked'} "
            f"| {refused:.1f} / {masked:.1f} / {ms * 1e3:.0f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=200, help="logits rows to draw from")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json-requests", type=int, default=4)
    parser.add_argument("--write", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    model = resolve_model(args.model)
    config = EngineConfig(n_ctx=2048, parallel=1, n_threads=args.threads)
    runtime = LlamaCppRuntime(model.path, name=model.alias, config=config)
    try:
        rows = collect_rows(runtime, args.rows)
        costs = draw_costs(runtime, rows, args.repeats)
        masks = mask_counts(runtime, args.json_requests) if args.json_requests > 0 else []
    finally:
        runtime.close()
    model_flag = "" if args.model == "smollm2-135m" else f" --model {args.model}"
    lines = [
        f"### Sampling: llama.cpp's samplers vs edgebox's ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"`python benchmarks/bench_sampling.py{model_flag} --rows {args.rows} --repeats {args.repeats} "
        f"--json-requests {args.json_requests}` on {cpu_kind()}. Model {model.alias} "
        f"({model.path.name}); "
        f"{len(rows)} real logits rows ({rows.shape[1]} tokens each), temperature 0.8, "
        f"median of {args.repeats} passes (the two take turns):",
        "",
        *costs,
        "",
    ]
    if masks:
        lines += [
            "",
            f"Masks of the vocabulary on sampled JSON-schema replies (128 tokens, "
            f"{args.json_requests} seeds, the four ways taking turns):",
            "",
            *masks,
        ]
    emit(lines, args.write)


if __name__ == "__main__":
    main()
