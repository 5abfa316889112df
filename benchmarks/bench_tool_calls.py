"""Decode speed of constrained tool-call decoding vs free text, on the llama.cpp engine.

One runtime, one prompt (a user question with the generic tool offer in the system message),
greedy, a fixed number of tokens per sequence: free text (no grammar), `auto` (the lazy tool
grammar, which plain text never triggers, so its cost while waiting), `required` (the eager call
grammar with parallel calls, so the model writes calls for all its tokens; the call heads it
jumps over count as tokens), and a `response_format` JSON schema (a week of forecasts: JSON for
every token, no jumps), greedy and sampled. Rounds alternate the modes; the median tokens/s
from first to last token is reported, with the tokens each mode wrote.

    python benchmarks/bench_tool_calls.py --tokens 96 --rounds 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgebox.models import resolve_model  # noqa: E402
from edgebox.runtimes.base import (  # noqa: E402
    Event,
    FinishEvent,
    GenerationRequest,
    SamplingParams,
    TokenEvent,
)
from edgebox.runtimes.llamacpp import EngineConfig, LlamaCppRuntime  # noqa: E402
from edgebox.runtimes.tool_format import (  # noqa: E402
    GENERIC,
    ToolConstraint,
    generic_instructions,
    generic_messages,
)

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
}
FUNCTION = {"name": "get_weather", "description": "The forecast", "parameters": WEATHER}
# A response_format schema long enough that the model writes JSON for every measured token.
WEEK = {
    "type": "object",
    "properties": {
        "days": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"day": {"type": "string"}, "summary": {"type": "string"}},
                "required": ["day", "summary"],
            },
            "minItems": 7,
        }
    },
    "required": ["days"],
}


def rate(
    runtime: LlamaCppRuntime, prompt: list[int], params: SamplingParams, n: int
) -> tuple[float, int]:
    """Tokens per second from the first generated token to the last, and the tokens."""
    times: list[float] = []
    done = threading.Event()

    def sink(event: Event) -> None:
        if isinstance(event, TokenEvent):
            times.append(time.perf_counter())
        elif isinstance(event, FinishEvent):
            done.set()

    request = GenerationRequest(prompt_tokens=prompt, sampling=params, max_tokens=n)
    runtime.submit(request, sink)
    done.wait(600)
    per_s = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    return per_s, len(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    config = EngineConfig(n_ctx=2048, parallel=1, n_threads=args.threads)
    runtime = LlamaCppRuntime(resolve_model(args.model).path, name="bench", config=config)
    offer = generic_instructions([FUNCTION], "auto", True, None)
    ask = [{"role": "user", "content": "Tell me about the weather in Paris this week."}]
    prompt, _ = runtime.tokenize_chat(generic_messages(ask, offer))
    functions = (("get_weather", json.dumps(WEATHER)),)
    modes = {
        "free text": SamplingParams(temperature=0),
        "auto (lazy grammar, not triggered)": SamplingParams(
            temperature=0, tools=ToolConstraint(GENERIC, functions, lazy=True, parallel=True)
        ),
        "required (call grammar)": SamplingParams(
            temperature=0, tools=ToolConstraint(GENERIC, functions, lazy=False, parallel=True)
        ),
        "json_schema (grammar), greedy": SamplingParams(temperature=0, json_schema=WEEK),
        "json_schema (grammar), temperature 0.7, seed 1": SamplingParams(
            temperature=0.7, seed=1, json_schema=WEEK
        ),
    }
    for params in modes.values():
        runtime.prepare_sampling(params)
    rates: dict[str, list[float]] = {name: [] for name in modes}
    written: dict[str, int] = {}
    for _ in range(args.rounds):
        for name, params in modes.items():
            per_s, written[name] = rate(runtime, prompt, params, args.tokens)
            rates[name].append(per_s)
    runtime.close()
    print(
        f"| mode ({args.model}, {args.tokens} tokens, {args.threads} threads) | tokens/s | tokens |"
    )
    print("|---|---:|---:|")
    for name, values in rates.items():
        print(f"| {name} | {statistics.median(values):.1f} | {written[name]} |")


if __name__ == "__main__":
    main()
