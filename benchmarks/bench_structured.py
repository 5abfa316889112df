"""Structured output side by side: decode speed under a JSON-schema grammar, edgebox vs llama.cpp's
C++ llama-server, in one run.

Both servers serve the same GGUF with the same threads, one slot and the same weight-repacking
mode (`bench_engine.py`'s command helpers); the client is the `openai` SDK, streaming
`/v1/chat/completions` with `response_format: json_schema` (a week of forecasts, long enough
that every measured token is JSON) and, for scale, the same request without the schema. Rounds
take turns (edgebox, llama-server, next mode); per request the decode rate is (completion
tokens - 1) ÷ (time from the first streamed content to the end), the client's clock; medians
are reported with their ratio. Greedy, and sampled at temperature 0.7 with a seed.

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
    rates: dict[tuple[str, str], list[float]] = {}
    whole: dict[tuple[str, str], list[float]] = {}
    written: dict[tuple[str, str], int] = {}
    try:
        clients = {
            name: openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", timeout=600)
            for name, port in ports.items()
        }
        messages = [{"role": "user", "content": ASK}]
        for n in range(args.rounds + 1):  # round 0 warms both up and is not counted
            for mode, extra in MODES.items():
                for name, client in clients.items():
                    body = {"model": "m", "messages": messages, "max_tokens": args.tokens}
                    rate, overall, tokens = decode_rate(client, body | extra)
                    if n:
                        rates.setdefault((mode, name), []).append(rate)
                        whole.setdefault((mode, name), []).append(overall)
                        written[(mode, name)] = tokens
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
    load_after = os.getloadavg()
    lines = [
        f"### Structured output vs llama-server ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"`python benchmarks/bench_structured.py --rounds {args.rounds} --tokens {args.tokens} "
        f"--threads {args.threads}` on {cpu_kind()}. Model {model.alias} ({model.path.name}); "
        f"{args.threads} threads, one slot, repacking {'on' if repack.enabled else 'off'} "
        f"({repack.status}) on both servers. Load average (1 min) {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after. Tokens/s after the first streamed content and over the "
        f"whole request (prompt included), median of {args.rounds} rounds (the completion "
        "tokens of the last round in brackets):",
        "",
        "| mode | edgebox after first / whole | llama-server after first / whole |"
        " edgebox ÷ llama-server after first / whole |",
        "|---|---:|---:|---:|",
    ]
    for mode in MODES:
        ours = statistics.median(rates[(mode, "edgebox")])
        theirs = statistics.median(rates[(mode, "llama-server")])
        ours_w = statistics.median(whole[(mode, "edgebox")])
        theirs_w = statistics.median(whole[(mode, "llama-server")])
        lines.append(
            f"| {mode} | {ours:.1f} / {ours_w:.1f} ({written[(mode, 'edgebox')]}) | "
            f"{theirs:.1f} / {theirs_w:.1f} ({written[(mode, 'llama-server')]}) | "
            f"{ours / theirs:.2f}x / {ours_w / theirs_w:.2f}x |"
        )
    emit(lines, args.write)


if __name__ == "__main__":
    main()
