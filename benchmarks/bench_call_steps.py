"""Decode steps per tool call: jump-forward (a call's head and tail written where the grammar
leaves no choice, `runtimes/llamacpp/jump_forward.py`) against decoding every token, per call
format, one call and a list of two.

Greedy, in-process through edgebox's engine (SmolLM2 by default): each request is made twice,
as served (jumps) and with logprobs (which never jump: every token is decoded), and the engine's
step counter read around each. Steps are what a jump saves (each one a `llama_decode`, ~13 ms for
SmolLM2 at two threads on the 2-vCPU Xeon); the replies are compared token for token.

    python benchmarks/bench_call_steps.py --write
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_engine import cpu_kind  # noqa: E402
from bench_serve import emit  # noqa: E402

from edgebox.models import resolve_model  # noqa: E402
from edgebox.runtimes.base import (  # noqa: E402
    FinishEvent,
    GenerationRequest,
    SamplingParams,
    TokenEvent,
)
from edgebox.runtimes.llamacpp import EngineConfig, LlamaCppRuntime  # noqa: E402
from edgebox.runtimes.tool_format import (  # noqa: E402
    GENERIC,
    HERMES,
    MISTRAL,
    ToolConstraint,
    calls_text,
    generic_instructions,
    generic_messages,
)

SCHEMA = '{"type":"object","properties":{"path":{"type":"string"}},"required":["path"]}'
FUNCTIONS = ("read_file", "read_dir")


def run(
    runtime: LlamaCppRuntime, prompt: list[int], sampling: SamplingParams
) -> tuple[int, list[int]]:
    """The request's decode steps and token ids."""
    ids: list[int] = []
    done = threading.Event()

    def sink(event: object) -> None:
        if isinstance(event, TokenEvent):
            ids.append(event.token_id)
        elif isinstance(event, FinishEvent):
            done.set()

    before = runtime.stats().steps_total
    runtime.submit(GenerationRequest(prompt, sampling, max_tokens=160), sink)
    if not done.wait(300):
        raise RuntimeError("the request did not finish")
    return runtime.stats().steps_total - before, ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    model = resolve_model(args.model)
    config = EngineConfig(n_ctx=4096, parallel=1, n_threads=args.threads)
    runtime = LlamaCppRuntime(model.path, name=model.alias, config=config)
    offered = [{"name": n, "parameters": json.loads(SCHEMA)} for n in FUNCTIONS]
    rows = []
    try:
        for fmt in (GENERIC, HERMES, MISTRAL):
            for parallel in (False, True):
                paths = ("src/main.py", "src/util.py")
                example = calls_text(
                    fmt,
                    [{"name": "read_file", "arguments": json.dumps({"path": p})} for p in paths],
                )
                ask = f"Read {paths[0]} and {paths[1]}. Reply with only: {example}"
                messages = generic_messages(
                    [{"role": "user", "content": ask}],
                    generic_instructions(offered, "required", parallel, None),
                )
                prompt = runtime.tokenize(runtime.render_chat(messages))
                tools = ToolConstraint(
                    fmt, tuple((n, SCHEMA) for n in FUNCTIONS), lazy=False, parallel=parallel
                )
                jumped, ids = run(runtime, prompt, SamplingParams(temperature=0.0, tools=tools))
                decoded, all_ids = run(
                    runtime, prompt, SamplingParams(temperature=0.0, tools=tools, logprobs=1)
                )
                n_calls = len(runtime.detokenize(ids).split('"name"')) - 1
                rows.append(
                    f"| {fmt.name} | {n_calls} | {len(ids)} | {jumped} | {len(all_ids)} "
                    f"| {decoded} | {'yes' if ids == all_ids else 'no'} |"
                )
    finally:
        runtime.close()
    model_flag = "" if args.model == "smollm2-135m" else f" --model {args.model}"
    lines = [
        f"### Decode steps per tool call ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"`python benchmarks/bench_call_steps.py{model_flag} --threads {args.threads}` on "
        f"{cpu_kind()}. Model {model.alias} ({model.path.name}); greedy, `required`, two "
        "functions; each request as served (jumps) and with logprobs (every token decoded):",
        "",
        "| format | calls | tokens | steps (jumps) | tokens | steps (every token decoded) "
        "| same tokens |",
        "|---|---:|---:|---:|---:|---:|---|",
        *rows,
    ]
    emit(lines, args.write)


if __name__ == "__main__":
    main()
