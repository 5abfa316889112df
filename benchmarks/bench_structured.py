"""Structured output side by side: decode speed under a JSON-schema grammar, edgebox vs llama.cpp's
C++ llama-server, in one run.

Both servers serve the same GGUF with the same threads, one slot and the same weight-repacking
mode (`bench_engine.py`'s command helpers); the client is the `openai` SDK, streaming
`/v1/chat/completions` with `response_format: json_schema` (a week of forecasts, long enough
that every measured token is JSON) and, for scale, the same request without the schema. Rounds
take turns (edgebox, llama-server, next mode); per request the decode rate is (completion
tokens - 1) ÷ (time from the first streamed content to the end), the client's clock; medians
are reported with their ratio. Greedy, and sampled with a seed: a temperature alone (edgebox
draws from the whole vocabulary, llama-server truncates to its default top-k 40 first), top-p
alone, and llama-server's defaults sent to both (the same work on each side).

    python benchmarks/bench_structured.py --rounds 5 --tokens 128 --threads 2 --write
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import openai

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_concurrency import llama_server_binary  # noqa: E402
from bench_engine import cpu_kind, edgebox_cmd, llama_server_cmd, repack_works  # noqa: E402
from bench_serve import emit, start  # noqa: E402
from bench_tool_calls import WEEK  # noqa: E402

from edgebox.models import resolve_model  # noqa: E402
from tests.conftest import free_port  # noqa: E402

ASK = "Write the weather forecast for Paris for each day of next week."
MODES: dict[str, dict[str, Any]] = {
    "free text, greedy": {"temperature": 0},
    "free text, temperature 0.7, seed 1": {"temperature": 0.7, "seed": 1},
    # top-p alone, as many clients send it (llama-server truncates to its top-k 40 first)
    "free text, temperature 0.8, top_p 0.95, seed 1": {
        "temperature": 0.8,
        "top_p": 0.95,
        "seed": 1,
    },
    # llama-server's own defaults, sent to both: the same work on each side
    "free text, temperature 0.7, seed 1, top_k 40, top_p 0.95, min_p 0.05": {
        "temperature": 0.7,
        "seed": 1,
        "top_p": 0.95,
        "extra_body": {"top_k": 40, "min_p": 0.05},
    },
    "json_schema, greedy": {
        "temperature": 0,
        "response_format": {"type": "json_schema", "json_schema": {"name": "week", "schema": WEEK}},
    },
    "json_schema, temperature 0.7, seed 1": {
        "temperature": 0.7,
        "seed": 1,
        "response_format": {"type": "json_schema", "json_schema": {"name": "week", "schema": WEEK}},
    },
    # llama-server's own defaults, sent to both (edgebox, as OpenAI, truncates nothing unasked)
    "json_schema, temperature 0.7, seed 1, top_k 40, top_p 0.95, min_p 0.05": {
        "temperature": 0.7,
        "seed": 1,
        "top_p": 0.95,
        "extra_body": {"top_k": 40, "min_p": 0.05},
        "response_format": {"type": "json_schema", "json_schema": {"name": "week", "schema": WEEK}},
    },
}


def decode_rate(client: openai.OpenAI, body: dict[str, Any]) -> tuple[float, float, int]:
    """Tokens per second after the first streamed content, over the whole request, and the
    completion tokens."""
    started = time.perf_counter()
    first = 0.0
    usage: Any = None
    for chunk in client.chat.completions.create(
        stream=True, stream_options={"include_usage": True}, **body
    ):
        usage = chunk.usage or usage
        if not first and any(c.delta.content for c in chunk.choices):
            first = time.perf_counter()
    end = time.perf_counter()
    tokens = usage.completion_tokens if usage else 0
    if not first or tokens < 2:
        raise RuntimeError(f"no decode to time ({tokens} tokens in {end - started:.2f} s)")
    return (tokens - 1) / (end - first), tokens / (end - started), tokens


Results = dict[tuple[str, str], list[tuple[float, float, int]]]  # (mode, server) -> rounds


def run_rounds(ports: dict[str, int], rounds: int, tokens: int) -> Results:
    """Every mode on both servers, taking turns, `rounds` times after one warm-up round."""
    clients = {
        name: openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", timeout=600)
        for name, port in ports.items()
    }
    body = {"model": "m", "messages": [{"role": "user", "content": ASK}], "max_tokens": tokens}
    results: Results = {}
    for n in range(rounds + 1):  # round 0 warms both up and is not counted
        for mode, extra in MODES.items():
            for name, client in clients.items():
                measured = decode_rate(client, body | extra)
                if n:
                    results.setdefault((mode, name), []).append(measured)
    return results


def table(results: Results) -> list[str]:
    lines = [
        "| mode | edgebox after first / whole | llama-server after first / whole |"
        " edgebox ÷ llama-server after first / whole |",
        "|---|---:|---:|---:|",
    ]
    for mode in MODES:
        cells, ratios = [], []
        for name in ("edgebox", "llama-server"):
            runs = results[(mode, name)]
            first = statistics.median(r[0] for r in runs)
            whole = statistics.median(r[1] for r in runs)
            cells.append(f"{first:.1f} / {whole:.1f} ({runs[-1][2]})")
            ratios.append((first, whole))
        (a, b), (c, d) = ratios
        lines.append(f"| {mode} | {cells[0]} | {cells[1]} | {a / c:.2f}x / {b / d:.2f}x |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128, help="max_tokens per request")
    parser.add_argument("--write", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    model = resolve_model(args.model)
    path = str(model.path)
    repack = repack_works(model.path)
    binary = llama_server_binary()
    if not binary:
        raise SystemExit("llama-server is not built: bash benchmarks/build_llama_server.sh")
    ports = {"edgebox": free_port(), "llama-server": free_port()}
    cmds = {
        "edgebox": edgebox_cmd(path, ports["edgebox"], args.threads, repack.enabled, 1),
        "llama-server": llama_server_cmd(
            binary, path, ports["llama-server"], args.threads, repack.enabled, 1
        ),
    }
    procs = [start(cmd, f"http://127.0.0.1:{ports[n]}/v1/models") for n, cmd in cmds.items()]
    load_before = os.getloadavg()
    try:
        results = run_rounds(ports, args.rounds, args.tokens)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
    load_after = os.getloadavg()
    model_flag = "" if args.model == "smollm2-135m" else f" --model {args.model}"
    lines = [
        f"### Structured output vs llama-server ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"`python benchmarks/bench_structured.py{model_flag} --rounds {args.rounds} --tokens {args.tokens} "
        f"--threads {args.threads}` on {cpu_kind()}. Model {model.alias} ({model.path.name}); "
        f"{args.threads} threads, one slot, repacking {'on' if repack.enabled else 'off'} "
        f"({repack.status}) on both servers. Load average (1 min) {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after. Tokens/s after the first streamed content and over the "
        f"whole request (prompt included), median of {args.rounds} rounds (the completion "
        "tokens of the last round in brackets):",
        "",
        *table(results),
    ]
    emit(lines, args.write)


if __name__ == "__main__":
    main()
