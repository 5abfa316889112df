"""What `--cpu-extra-buffers off` costs: prefill and decode tokens/s with llama.cpp's extra
CPU buffer types (repacked weights, AMX) on vs off, same model, threads and prompt.

Both loads of a model live in one process and are measured alternately (on, off, on, off, ...)
so machine noise hits both alike; each figure is the median of `--runs`. Prefill decodes a
`--prompt`-token prompt in one batch; decode then adds `--gen` tokens one at a time (greedy
token choice does not matter for speed, so a fixed token list is fed). Which buffers llama.cpp
actually used is read from its load log ("CPU_REPACK model buffer size", "AMX ...").

    python benchmarks/bench_extra_buffers.py --threads 2 --runs 5
"""

from __future__ import annotations

import argparse
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import llama_cpp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgebox.models import resolve_model  # noqa: E402
from edgebox.runtimes.llamacpp.model import LlamaCppModel, captured_log  # noqa: E402

TEXT = "The lighthouse keeper counted ships, logged the weather and wrote long letters. " * 80


class Loaded:
    """One model load with extra buffers on or off, and a context to time it with."""

    def __init__(self, path: Path, extra: bool, threads: int, n_ctx: int) -> None:
        with captured_log() as lines:
            self.model = LlamaCppModel(path, n_gpu_layers=0, extra_buffers=extra)
        self.buffers = sorted(
            {m.group(1) for m in re.finditer(r"(\S+) model buffer size", "".join(lines))}
        )
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = n_ctx
        params.n_threads = params.n_threads_batch = threads
        self.ctx = llama_cpp.llama_init_from_model(self.model.ptr, params)
        self.extra = extra

    def run(self, tokens: list[int], n_prompt: int, n_gen: int) -> tuple[float, float]:
        """(prefill tok/s, decode tok/s) from an empty cache."""
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        prompt = (llama_cpp.llama_token * n_prompt)(*tokens[:n_prompt])
        start = time.perf_counter()
        if llama_cpp.llama_decode(self.ctx, llama_cpp.llama_batch_get_one(prompt, n_prompt)):
            raise RuntimeError("prefill failed")
        prefill = n_prompt / (time.perf_counter() - start)
        start = time.perf_counter()
        for token in tokens[n_prompt : n_prompt + n_gen]:
            one = (llama_cpp.llama_token * 1)(token)
            if llama_cpp.llama_decode(self.ctx, llama_cpp.llama_batch_get_one(one, 1)):
                raise RuntimeError("decode failed")
        return prefill, n_gen / (time.perf_counter() - start)


def bench(name: str, args: argparse.Namespace) -> list[str]:
    path = resolve_model(name).path
    on = Loaded(path, True, args.threads, args.prompt + args.gen)
    off = Loaded(path, False, args.threads, args.prompt + args.gen)
    tokens = on.model.tokenize(TEXT)
    if len(tokens) < args.prompt + args.gen:
        raise SystemExit(f"the text gives only {len(tokens)} tokens")
    figures: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for loaded in (on, off):  # warm-up: first-touch of the weights, thread pool start
        loaded.run(tokens, args.prompt, 8)
    for _ in range(args.runs):
        for loaded in (on, off):
            figures[loaded.extra].append(loaded.run(tokens, args.prompt, args.gen))
    rows = []
    base = {k: [statistics.median(x[i] for x in v) for i in (0, 1)] for k, v in figures.items()}
    for loaded in (on, off):
        pre, dec = base[loaded.extra]
        rows.append(
            f"| {name} | {'on' if loaded.extra else 'off'} | {', '.join(loaded.buffers)} "
            f"| {pre:.1f} | {dec:.1f} | {pre / base[True][0]:.0%} | {dec / base[True][1]:.0%} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--prompt", type=int, default=512, help="prompt tokens (one batch)")
    parser.add_argument("--gen", type=int, default=64, help="tokens decoded one at a time")
    parser.add_argument("--model", action="append", help="bundled model names")
    args = parser.parse_args()
    print(f"{platform.machine()}, {args.threads} threads, llama-cpp-python {llama_cpp.__version__}")
    print(llama_cpp.llama_print_system_info().decode().strip())
    print()
    print(
        f"| model | extra buffers | weight buffers | prefill {args.prompt} (tok/s) "
        f"| decode {args.gen} (tok/s) | prefill vs on | decode vs on |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in args.model or ["smollm2-135m", "gemma3-270m"]:
        print("\n".join(bench(name, args)), flush=True)


if __name__ == "__main__":
    main()
