"""Single-stream serving overhead: edgebox vs in-process llama-cpp-python vs llama_cpp.server.

Same GGUF, threads and prompts for all three, run one after another on this machine.
Each run uses a fresh prompt (a unique first line) so no prefix cache hides prefill.
Prints a markdown table; `--write` appends it to docs/benchmarks.md.

    python benchmarks/bench_serve.py --runs 5 --write
"""

from __future__ import annotations

import argparse
import atexit
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgebox.models import resolve_model  # noqa: E402
from tests.conftest import free_port  # noqa: E402

TOKENS = 64
SHORT = "Write a short story about a robot who learns to paint."
LONG = " ".join(
    f"Paragraph {i}: the lighthouse keeper counted ships, logged the weather and wrote letters."
    for i in range(55)
)  # ~1,000 tokens with SmolLM2's tokenizer


def prompt_for(base: str, run: int) -> str:
    return f"Run {run} at {time.time_ns()}.\n{base}\nStory:"


def time_stream(chunks: Iterator[str]) -> tuple[float, float, int]:
    """(ttft seconds, decode tokens/s, chunks) for one streamed completion started just before."""
    start = time.perf_counter()
    stamps = [time.perf_counter() for _ in chunks]
    n = len(stamps)
    ttft = stamps[0] - start
    decode = (n - 1) / (stamps[-1] - stamps[0]) if n > 1 else 0.0
    return ttft, decode, n


def in_process(
    model: Path, threads: int, flash_attn: bool = False, gpu_layers: int = -1
) -> Callable[[str], tuple[float, float, int]]:
    from llama_cpp import Llama

    llm = Llama(
        str(model),
        n_ctx=4096,
        n_gpu_layers=gpu_layers,  # ignored by a CPU-only build
        n_threads=threads,
        n_threads_batch=threads,
        flash_attn=flash_attn,
        verbose=False,
    )

    def run(prompt: str) -> tuple[float, float, int]:
        stream = llm.create_completion(prompt, max_tokens=TOKENS, temperature=0, stream=True)
        return time_stream(c["choices"][0]["text"] for c in stream)  # type: ignore[index]

    return run


def over_http(
    base_url: str, model: str, api_key: str = "x"
) -> Callable[[str], tuple[float, float, int]]:
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=300)

    def run(prompt: str) -> tuple[float, float, int]:
        stream = client.completions.create(
            model=model, prompt=prompt, max_tokens=TOKENS, temperature=0, stream=True
        )
        return time_stream(c.choices[0].text for c in stream if c.choices)

    return run


def bench_home() -> dict[str, str]:
    """The environment for a process a benchmark starts: an EDGEBOX_HOME of its own (removed at
    exit) unless one is set, so nodes register their aliases ("m") in a throwaway store, not
    the user's."""
    if "EDGEBOX_HOME" in os.environ:
        return dict(os.environ)
    home = tempfile.mkdtemp(prefix="edgebox-bench-")
    atexit.register(shutil.rmtree, home, True)
    return {**os.environ, "EDGEBOX_HOME": home}


def wait_healthy(url: str, timeout: float = 120) -> bool:
    """Whether the node at `url` answers /health with 200 within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    return False


def start(cmd: list[str], url: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=bench_home()
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{cmd[:4]} did not start")


def machine() -> str:
    """This machine in one line, with its accelerators and the probe's bandwidth limit."""
    from edgebox.hardware import probe

    hw = probe(measure=True)
    gpus = ", ".join(a.name for a in hw.accelerators)
    return (
        f"{platform.machine()}, {os.cpu_count()} CPUs ({hw.cpu_model}), "
        f"{gpus + ', ' if gpus else ''}Python {platform.python_version()}; bandwidth limit "
        f"{hw.bandwidth_gbps} GB/s ({hw.bandwidth_source})"
    )


def bandwidth_gbps() -> float:
    from edgebox.hardware import probe

    return probe(measure=True).bandwidth_gbps


def emit(lines: list[str], write: bool) -> None:
    """Print a result section; with `write`, append it to docs/benchmarks.md."""
    table = "\n".join(lines) + "\n"
    print(table)
    if write:
        with (ROOT / "docs" / "benchmarks.md").open("a") as f:
            f.write("\n" + table)


def measure(
    name: str, run: Callable[[str], tuple[float, float, int]], runs: int
) -> dict[str, object]:
    run(prompt_for(SHORT, -1))  # warm-up
    row: dict[str, object] = {"name": name}
    for label, base in (("short", SHORT), ("long", LONG)):
        results = [run(prompt_for(base, i)) for i in range(runs)]
        row[f"{label}_ttft_ms"] = statistics.median(r[0] for r in results) * 1000
        row[f"{label}_tok_s"] = statistics.median(r[1] for r in results)
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--gpu-layers", type=int, default=-1, help="layers to offload where the build has a GPU"
    )
    parser.add_argument("--write", action="store_true", help="append results to docs/benchmarks.md")
    args = parser.parse_args()
    model = resolve_model("smollm2-135m").path
    gpu = str(args.gpu_layers)
    rows = [
        measure(
            "in-process llama-cpp-python",
            in_process(model, args.threads, gpu_layers=args.gpu_layers),
            args.runs,
        )
    ]

    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "edgebox",
        "serve",
        "--port",
        str(port),
        "--threads",
        str(args.threads),
        "--gpu-layers",
        gpu,
    ]
    proc = start(cmd, f"http://127.0.0.1:{port}/health")
    try:
        rows.append(
            measure(
                "edgebox (HTTP, openai SDK)",
                over_http(f"http://127.0.0.1:{port}/v1", "smollm2-135m"),
                args.runs,
            )
        )
    finally:
        proc.terminate()
        proc.wait()

    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--port",
        str(port),
        "--n_threads",
        str(args.threads),
        "--n_threads_batch",
        str(args.threads),
        "--n_ctx",
        "4096",
        "--n_gpu_layers",
        gpu,
    ]
    proc = start(cmd, f"http://127.0.0.1:{port}/v1/models")
    try:
        rows.append(
            measure(
                "llama_cpp.server (HTTP, openai SDK)",
                over_http(f"http://127.0.0.1:{port}/v1", str(model)),
                args.runs,
            )
        )
    finally:
        proc.terminate()
        proc.wait()

    base = rows[0]
    # decode reads every weight once per token: bandwidth / model bytes is its speed of light
    limit = bandwidth_gbps() * 1e9 / model.stat().st_size
    lines = [
        f"### Single stream, SmolLM2-135M Q4_1, {args.threads} threads, {TOKENS} tokens, median of {args.runs}",
        "",
        f"Machine: {machine()}; command: `python benchmarks/bench_serve.py --runs {args.runs} "
        f"--threads {args.threads} --gpu-layers {args.gpu_layers}`. Bandwidth limit for this "
        f"{model.stat().st_size / 1e6:.0f} MB model: {limit:.0f} tok/s.",
        "",
        "| path | TTFT short (ms) | decode short (tok/s) | TTFT ~1k prompt (ms) | decode ~1k (tok/s) | decode vs in-process | decode vs bandwidth limit |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        rate = float(row["short_tok_s"])  # type: ignore[arg-type]
        ratio = rate / float(base["short_tok_s"])  # type: ignore[arg-type]
        lines.append(
            f"| {row['name']} | {row['short_ttft_ms']:.1f} | {rate:.1f} | "
            f"{row['long_ttft_ms']:.1f} | {row['long_tok_s']:.1f} | {ratio:.1%} | "
            f"{rate / limit:.1%} |"
        )
    emit(lines, args.write)


if __name__ == "__main__":
    main()
