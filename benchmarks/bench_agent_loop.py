"""An agent loop: a tool-calling conversation whose context grows turn by turn, and how much of it
each server recomputes.

One conversation shape, four ways, in one run, taking turns (turn 1 of every way, then turn 2, ...):
  (a) edgebox /v1/responses chained with `previous_response_id`;
  (b) edgebox /v1/responses resending the whole history, `store: false` and a
      `prompt_cache_key` (what the Codex CLI does);
  (c) edgebox /v1/chat/completions with the whole history;
  (d) llama.cpp's C++ llama-server (`--jinja`, its own tool-call support), chat completions with
      the whole history.
Same GGUF, threads, slots, slot context and weight-repacking mode on both servers (the helpers of
`bench_engine.py`). The conversation: a ~2,000-token system prompt (`instructions` on the
Responses API), one user request, one function tool (`read_file`); every turn the call is
forced (`tool_choice: required`), greedy, a few output tokens, and the tool's result (a few
hundred tokens of file text) goes into the next turn. Each way's system prompt starts with its own
tag, so no way finds another's prefix in a cache. Per turn: time to the first streamed output
event (TTFT, the client's clock), the prompt tokens and how many of them came from the prefix
cache: edgebox's `usage` cached tokens, llama-server's `timings.cache_n` (`prompt_n` computed).
The client is the `openai` SDK. Then (optional) `bench_tool_calls.py`, the decode cost of a
forced call's grammar vs free text, in a child process on the same machine.

    python benchmarks/bench_agent_loop.py --turns 10 --threads 1 --max-tokens 40 --write
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_concurrency import llama_server_binary  # noqa: E402
from bench_engine import cpu_kind, edgebox_cmd, llama_server_cmd, repack_works  # noqa: E402
from bench_serve import emit, start  # noqa: E402

from edgebox.models import resolve_model  # noqa: E402
from tests.conftest import free_port  # noqa: E402

SLOTS = 4  # three edgebox conversations, each keeps its own slot
SLOT_CTX = 8192
WAYS = {
    "a": "edgebox responses, previous_response_id",
    "b": "edgebox responses, full history, store:false + prompt_cache_key",
    "c": "edgebox chat/completions, full history",
    "d": "llama-server chat/completions (--jinja), full history",
}
FILES = [f"src/mod{i}.py" for i in range(12)]
TOOL_PARAMS = {
    "type": "object",
    "properties": {"path": {"type": "string", "enum": FILES}},
    "required": ["path"],
    "additionalProperties": False,
}
TOOL_DESC = "Read a file of the repository and return its text."
# More tools for `--tools N` (an agent offers several): read_file and the first N-1 of these.
OTHER_TOOLS = [
    ("list_dir", "List the entries of a directory of the repository.", "dir"),
    ("search_code", "Search the repository for a regular expression.", "pattern"),
    ("write_file", "Replace a file of the repository with new text.", "text"),
    ("run_tests", "Run the repository's tests under a path.", "target"),
    ("git_diff", "Show the working tree's changes to a file.", "file"),
]


def offered_tools(n: int) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, description, parameters) of the first n tools, read_file first."""
    tools = [("read_file", TOOL_DESC, TOOL_PARAMS)]
    for name, desc, param in OTHER_TOOLS[: n - 1]:
        params = {
            "type": "object",
            "properties": {param: {"type": "string", "maxLength": 80}},
            "required": [param],
            "additionalProperties": False,
        }
        tools.append((name, desc, params))
    return tools


ASK = "Review the repository: read its files one at a time, then say what each module does."


def system_prompt(tag: str) -> str:
    """~2,000 tokens with SmolLM2's tokenizer, opened by `tag` so no two ways share a prefix."""
    rules = " ".join(
        f"Rule {i}: read one file per step, quote at most one line of it, and never guess "
        f"the contents of a file you have not read yet."
        for i in range(60)
    )
    return f"Session {tag}. You are a careful coding agent working in a small repository. {rules}"


def tool_result(turn: int) -> str:
    """A few hundred tokens of file text, different every turn."""
    lines = [
        f"def step_{turn}_{i}(value: int) -> int:\n    return value * {i + 2} + {turn}"
        for i in range(14)
    ]
    return f"# {FILES[turn % len(FILES)]}\n" + "\n\n".join(lines)


@dataclass
class Turn:
    ttft: float  # seconds to the first streamed output event
    whole: float  # seconds to the end of the reply (the whole call, what an agent waits for)
    prompt: int  # prompt tokens of the turn
    cached: int  # of which served from the prefix cache
    output: int  # output tokens
    call: tuple[str, str, str] | None  # (call id, name, arguments) of the forced call
    forced: bool = True  # False: the server wrote no call; the client put one in the history


class Conversation:
    """One way's client side: what it sends each turn, what it keeps between turns."""

    def __init__(self, way: str, client: openai.OpenAI, max_tokens: int, tools: int) -> None:
        self.way, self.client, self.max_tokens = way, client, max_tokens
        self.tools = offered_tools(tools)
        self.system = system_prompt(f"{way}-{time.time_ns()}")
        self.items: list[dict[str, Any]] = [{"role": "user", "content": ASK}]  # Responses
        self.messages: list[dict[str, Any]] = [  # chat completions
            {"role": "system", "content": self.system},
            {"role": "user", "content": ASK},
        ]
        self.previous: str | None = None
        self.last_call: tuple[str, str, str] | None = None

    def turn(self, n: int) -> Turn:
        if n > 1:
            self._add_result(n - 1)
        done = self._responses() if self.way in "ab" else self._chat()
        if done.call is None and self.way == "d":  # llama-server did not force the call
            done.call = (f"call_{n}", "read_file", json.dumps({"path": FILES[n % len(FILES)]}))
            done.forced = False
        if done.call is None:
            raise RuntimeError(
                f"way {self.way} turn {n}: no tool call despite tool_choice required"
            )
        self._add_call(done.call)
        return done

    def _add_call(self, call: tuple[str, str, str]) -> None:
        call_id, name, arguments = call
        self.last_call = call
        self.items.append(
            {"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments}
        )
        function = {"name": name, "arguments": arguments}
        self.messages.append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": call_id, "type": "function", "function": function}],
            }
        )

    def _add_result(self, turn: int) -> None:
        assert self.last_call is not None
        text = tool_result(turn)
        call_id = self.last_call[0]
        self.items.append({"type": "function_call_output", "call_id": call_id, "output": text})
        self.messages.append({"role": "tool", "tool_call_id": call_id, "content": text})

    def _responses(self) -> Turn:
        body: dict[str, Any] = {
            "model": "m",
            "instructions": self.system,
            "tools": [
                {"type": "function", "name": name, "description": desc}
                | {"parameters": params, "strict": False}
                for name, desc, params in self.tools
            ],
            "tool_choice": "required",
            "temperature": 0,
            "max_output_tokens": self.max_tokens,
        }
        if self.way == "a":
            body["input"] = self.items[-1:] if self.previous else self.items
            if self.previous:
                body["previous_response_id"] = self.previous
        else:
            body |= {"input": self.items, "store": False, "prompt_cache_key": f"loop-{self.way}"}
        return streamed_response(self.client, body, self)

    def _chat(self) -> Turn:
        body: dict[str, Any] = {
            "model": "m",
            "messages": self.messages,
            "tools": [
                {
                    "type": "function",
                    "function": {"name": name, "description": desc, "parameters": params},
                }
                for name, desc, params in self.tools
            ],
            "tool_choice": "required",
            "temperature": 0,
            "max_tokens": self.max_tokens,
            "stream_options": {"include_usage": True},
        }
        return streamed_chat(self.client, body)


def streamed_response(client: openai.OpenAI, body: dict[str, Any], conv: Conversation) -> Turn:
    started = time.perf_counter()
    first = 0.0
    final = None
    for event in client.responses.create(stream=True, **body):
        if event.type.endswith(".delta") and not first:
            first = time.perf_counter() - started
        if event.type in ("response.completed", "response.incomplete"):
            final = event.response
    if final is None or final.usage is None:
        raise RuntimeError(f"way {conv.way}: the stream ended without a final response")
    conv.previous = final.id
    call = next(
        ((o.call_id, o.name, o.arguments) for o in final.output if o.type == "function_call"),
        None,
    )
    usage = final.usage
    cached = usage.input_tokens_details.cached_tokens if usage.input_tokens_details else 0
    whole = time.perf_counter() - started
    return Turn(first, whole, usage.input_tokens, cached, usage.output_tokens, call)


def streamed_chat(client: openai.OpenAI, body: dict[str, Any]) -> Turn:
    """One streamed chat completion; cached tokens from `usage` or llama-server's `timings`."""
    started = time.perf_counter()
    first = 0.0
    usage: Any = None
    timings: dict[str, Any] = {}
    calls: dict[int, list[str]] = {}
    for chunk in client.chat.completions.create(stream=True, **body):
        usage = chunk.usage or usage
        timings = (chunk.model_extra or {}).get("timings") or timings
        for choice in chunk.choices:
            delta = choice.delta
            if (delta.content or delta.tool_calls) and not first:
                first = time.perf_counter() - started
            for tc in delta.tool_calls or []:
                slot = calls.setdefault(tc.index, ["", "", ""])
                fn = tc.function
                slot[0] = tc.id or slot[0]
                slot[1] += (fn.name or "") if fn else ""
                slot[2] += (fn.arguments or "") if fn else ""
    whole = time.perf_counter() - started
    call = tuple(calls[min(calls)]) if calls else None
    if timings:  # llama-server: prompt_n computed, cache_n reused
        prompt, cached = int(timings["prompt_n"]) + int(timings["cache_n"]), int(timings["cache_n"])
    else:
        details = usage.prompt_tokens_details if usage else None
        prompt, cached = (
            (usage.prompt_tokens if usage else 0),
            (details.cached_tokens or 0) if details else 0,
        )
    output = usage.completion_tokens if usage else int(timings.get("predicted_n", 0))
    return Turn(first, whole, prompt, cached, output, call)  # type: ignore[arg-type]


def run_loop(
    servers: dict[str, str], turns: int, max_tokens: int, tools: int
) -> dict[str, list[Turn]]:
    """Every way's conversation, the ways taking turns so load drift hits all alike."""
    convs = {
        way: Conversation(
            way, openai.OpenAI(base_url=url, api_key="none", timeout=900), max_tokens, tools
        )
        for way, url in servers.items()
    }
    results: dict[str, list[Turn]] = {way: [] for way in convs}
    for n in range(1, turns + 1):
        for way, conv in convs.items():
            done = conv.turn(n)
            results[way].append(done)
            print(
                f"turn {n} way {way}: ttft {done.ttft:.2f} s, whole {done.whole:.2f} s, "
                f"prompt {done.prompt}, "
                f"cached {done.cached}, output {done.output}",
                file=sys.stderr,
                flush=True,
            )
    return results


def history_share(turns: list[Turn], n: int) -> float:
    """Share of turn n's history (turn n-1's whole prompt) served from the prefix cache."""
    history = turns[n - 2].prompt
    return min(turns[n - 1].cached, history) / history if history else 0.0


def turn_table(results: dict[str, list[Turn]]) -> list[str]:
    ways = list(results)
    lines = [
        "| turn | prompt tokens | "
        + " | ".join(f"({w}) TTFT / whole s" for w in ways)
        + " | "
        + " | ".join(f"({w}) computed / cached" for w in ways)
        + (" | (a) ÷ (d) TTFT / whole |" if "d" in ways else " |"),
        "|---:|---:|" + "---:|" * (2 * len(ways) + ("d" in ways)),
    ]
    for i in range(len(results[ways[0]])):
        row = [results[w][i] for w in ways]
        prompts = "/".join(sorted({str(t.prompt) for t in row}))
        ratio = ""
        if "d" in ways:
            d = results["d"][i]
            ratio = f" | {row[0].ttft / d.ttft:.2f}x / {row[0].whole / d.whole:.2f}x"
        lines.append(
            f"| {i + 1} | {prompts} | "
            + " | ".join(f"{t.ttft:.2f} / {t.whole:.2f}" for t in row)
            + " | "
            + " | ".join(f"{t.prompt - t.cached} / {t.cached}" for t in row)
            + ratio
            + " |"
        )
    return lines


def summary(results: dict[str, list[Turn]]) -> list[str]:
    last = len(next(iter(results.values())))
    lines = [
        "| way | history from cache, turn 2 / turn N (min of 2..N) | TTFT turn 1 | turn 2 |"
        " turn N | turn N ÷ turn 2 | turns where TTFT / whole reply ≤ llama-server's |"
        " median whole reply s | calls the server wrote |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for way, turns in results.items():
        shares = [history_share(turns, n) for n in range(2, last + 1)]
        beat = "-"
        if "d" in results and way != "d":
            pairs = list(zip(turns, results["d"], strict=True))
            first = sum(t.ttft <= d.ttft for t, d in pairs)
            whole = sum(t.whole <= d.whole for t, d in pairs)
            beat = f"{first} / {whole} of {last}"
        lines.append(
            f"| ({way}) {WAYS[way]} | {100 * shares[0]:.1f} % / {100 * shares[-1]:.1f} % "
            f"({100 * min(shares):.1f} %) | {turns[0].ttft:.2f} | {turns[1].ttft:.2f} | "
            f"{turns[-1].ttft:.2f} | {turns[-1].ttft / turns[1].ttft:.2f}x | {beat} | "
            f"{statistics.median(t.whole for t in turns):.2f} | "
            f"{sum(t.forced for t in turns)} / {last} |"
        )
    return lines


def tool_call_overhead(threads: int) -> list[str]:
    """`bench_tool_calls.py`'s table (free text vs forced-call grammar), in a child process."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_tool_calls.py")]
    cmd += ["--tokens", "48", "--rounds", "3", "--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
        return ["bench_tool_calls.py failed; see its section."]
    return [line for line in done.stdout.splitlines() if line.startswith("|")]


def tool_template(binary: str) -> list[str]:
    """SmolLM2's own template has no tools (llama-server then drops them from the prompt); the
    ChatML one of Qwen2.5 in the same llama.cpp tree renders tools, calls and results with the
    same special tokens. From the tree `build_llama_server.sh` built the binary from."""
    build = Path(binary).resolve().parents[1]
    tree = build.parent / build.name.replace("llama-server-", "llama_cpp_python-")
    template = tree / "vendor/llama.cpp/models/templates/Qwen-Qwen2.5-7B-Instruct.jinja"
    if not template.is_file():
        print(f"{template} missing: llama-server runs without tools in its prompt", file=sys.stderr)
        return []
    return ["--chat-template-file", str(template)]


def serve(args: argparse.Namespace, repack: bool) -> dict[str, list[Turn]]:
    path = str(resolve_model(args.model).path)
    ports = {"edgebox": free_port(), "llama-server": free_port()}
    cmds = {"edgebox": edgebox_cmd(path, ports["edgebox"], args.threads, repack, SLOTS, SLOT_CTX)}
    binary = None if args.skip_llama_server else llama_server_binary()
    if binary:
        port = ports["llama-server"]
        server = llama_server_cmd(binary, path, port, args.threads, repack, SLOTS, SLOT_CTX)
        cmds["llama-server"] = [*server, "--jinja", *tool_template(binary)]
    base = {n: f"http://127.0.0.1:{p}/v1" for n, p in ports.items()}
    servers = {w: base["edgebox"] for w in "abc"} | ({"d": base["llama-server"]} if binary else {})
    procs = [start(cmd, f"http://127.0.0.1:{ports[n]}/v1/models") for n, cmd in cmds.items()]
    try:
        return run_loop(servers, args.turns, args.max_tokens, args.tools)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=40, help="output tokens per turn")
    parser.add_argument(
        "--tools",
        type=int,
        default=1,
        choices=range(1, len(OTHER_TOOLS) + 2),
        metavar=f"1..{len(OTHER_TOOLS) + 1}",
        help="functions offered each turn (read_file first; the model picks under required)",
    )
    parser.add_argument("--skip-llama-server", action="store_true")
    parser.add_argument("--skip-tool-overhead", action="store_true")
    parser.add_argument("--write", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    model = resolve_model(args.model)
    works = repack_works(model.path)
    load_before = os.getloadavg()
    results = serve(args, works.enabled)
    load_mid = os.getloadavg()
    overhead = [] if args.skip_tool_overhead else tool_call_overhead(args.threads)
    load_after = os.getloadavg()
    ttfts = [t.ttft for turns in results.values() for t in turns]
    lines = [
        f"### Agent loop ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"`python benchmarks/bench_agent_loop.py --turns {args.turns} --threads {args.threads} "
        f"--max-tokens {args.max_tokens} --tools {args.tools}` on {cpu_kind()}. Model {model.alias} "
        f"({model.path.name}); {args.threads} thread(s), {SLOTS} slots of {SLOT_CTX} tokens and "
        f"repacking {'on' if works.enabled else 'off'} ({works.status}) on both servers. "
        f"Load average (1 min) {load_before[0]:.2f} before, {load_mid[0]:.2f} after the loop, "
        f"{load_after[0]:.2f} at the end. Median TTFT of all turns {statistics.median(ttfts):.2f} s.",
        "",
        *(f"- ({w}) {WAYS[w]}" for w in results),
        "",
        "Per turn (prompt tokens: the distinct counts of the ways; computed = prompt - cached):",
        "",
        *turn_table(results),
        "",
        *summary(results),
    ]
    if overhead:
        lines += [
            "",
            "Decode cost of the forced call (`bench_tool_calls.py`, same machine, after):",
        ]
        lines += ["", *overhead]
    emit(lines, args.write)


if __name__ == "__main__":
    main()
