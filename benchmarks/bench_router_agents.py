"""A Responses conversation through `edgebox router` over two nodes, and what losing its node costs.

Two nodes (the bundled SmolLM2-135M, 1 thread each) behind one router. One conversation,
chained with `previous_response_id` (the router resolves it and sends the whole history): a
long `instructions` (~1,200 tokens) and a short user turn each time, 8 output tokens. Per turn:
the node that served it (route header), the latency seen by the client, the prompt tokens and
how many of them the node's prefix cache served (`usage.input_tokens_details.cached_tokens`).
After `--turns` turns the node holding the conversation is stopped; the next turns are
replayed on the other node from the router's store (the first one cold, then cached again).

    python benchmarks/bench_router_agents.py --turns 5 --after 3 --write
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_serve import emit, start  # noqa: E402

from tests.conftest import free_port  # noqa: E402

MODEL = "smollm2-135m"
INSTRUCTIONS = "You are a terse assistant for a hardware shop. " + " ".join(
    f"Rule {i}: answer in one short sentence and never mention rule {i + 1}." for i in range(90)
)


def node(threads: int) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    cmd = [sys.executable, "-m", "edgebox", "serve", "--port", str(port), "--threads"]
    cmd += [str(threads), "--ctx", "4096", "--parallel", "1", "--no-mdns"]
    url = f"http://127.0.0.1:{port}"
    return url, start(cmd, url + "/health")


def turn(router: str, text: str, previous: str | None) -> dict[str, object]:
    body = {"model": MODEL, "input": text, "instructions": INSTRUCTIONS, "max_output_tokens": 8}
    if previous:
        body["previous_response_id"] = previous
    started = time.perf_counter()
    answer = httpx.post(router + "/v1/responses", json=body, timeout=300)
    seconds = time.perf_counter() - started
    answer.raise_for_status()
    usage = answer.json()["usage"]
    target, reason = answer.headers["x-edgebox-route"].split(";")[:2]
    return {
        "id": answer.json()["id"],
        "s": seconds,
        "node": target,
        "reason": reason.removeprefix("reason="),
        "input": usage["input_tokens"],
        "cached": usage["input_tokens_details"]["cached_tokens"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=5, help="turns in all")
    parser.add_argument("--after", type=int, default=3, help="stop the holder after this turn")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", action="store_true", help="append results to docs/benchmarks.md")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-agents-"))
    nodes = dict(node(args.threads) for _ in range(2))
    port = free_port()
    router = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "edgebox", "router", "--port", str(port), "--no-mdns"]
    cmd += [a for url in nodes for a in ("--node", url)]
    env = {**os.environ, "EDGEBOX_HOME": str(tmp)}
    procs = list(nodes.values())
    try:
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
        wait_for_nodes(router)
        rows = run(router, nodes, args)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
    report(rows, args)


def wait_for_nodes(router: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            health = httpx.get(router + "/health", timeout=5).json()
            if sum(n["healthy"] for n in health["nodes"].values()) == 2:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError("the router did not see both nodes up")


def run(
    router: str, nodes: dict[str, subprocess.Popen[bytes]], args: argparse.Namespace
) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    previous = None
    for i in range(1, args.turns + 1):
        rows.append(turn(router, f"Turn {i}: what should I buy for a small home server?", previous))
        previous = str(rows[-1]["id"])
        if i == args.after:  # the node holding the conversation goes away
            holder = nodes.pop("http://" + str(rows[-1]["node"]))
            holder.send_signal(signal.SIGINT)
            holder.wait(30)
            rows[-1]["stopped"] = True
    return rows


def report(rows: list[dict[str, object]], args: argparse.Namespace) -> None:
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()[0]
    lines = [
        f"### Router: a Responses conversation across two nodes, and losing its node ({date})",
        "",
        f"`python benchmarks/bench_router_agents.py --turns {args.turns} --after {args.after}`; "
        f"2 nodes (SmolLM2-135M, {args.threads} thread each, --ctx 4096) behind `edgebox router` "
        f"on this {os.cpu_count()}-core machine (1-min load {load:.1f} at the end, shared with "
        "other work). The router resolves `previous_response_id` and sends the whole history.",
        "",
        "| turn | node | reason | prompt tokens | from prefix cache | latency s |",
        "|---:|---|---|---:|---:|---:|",
    ]
    for i, row in enumerate(rows, 1):
        note = " (its node is then stopped)" if row.get("stopped") else ""
        lines.append(
            f"| {i}{note} | {row['node']} | {row['reason']} | {row['input']} | "
            f"{row['cached']} | {float(row['s']):.2f} |"  # type: ignore[arg-type]
        )
    emit(lines, args.write)


if __name__ == "__main__":
    main()
