"""Time to first token through the router for a model loaded nowhere: brought over from a peer
(`load:peer-transfer`) vs on the node's disk already (`load:on-disk`) vs loaded.

Two nodes on loopback serve SmolLM2-135M. Node a holds Gemma 3 270M (253 MB) in its store
under one name per round, with a 200 MB model budget, so it cannot load it; node b has room and
not the model. Each round, through `edgebox router`: a streamed greedy request for that round's
name (b pulls it from a, loads it, answers), the same request again (loaded), then, once b has
unloaded it and the router's poll has seen that, again (on b's disk: load only). The model is
then removed from b's store, so the next round's transfer copies every byte again. Reported:
median time to first token per tier, and the pull's own time and rate as b's job measured them.

    python benchmarks/bench_router_fetch.py --rounds 3 --write
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_serve import emit, machine  # noqa: E402

from edgebox.models import resolve_model  # noqa: E402
from edgebox.models.store import ModelStore  # noqa: E402
from tests.conftest import free_port  # noqa: E402

POLL_S = 2.0  # the router's default poll interval


def start(args: list[str], log: Path, env: dict[str, str], ready: str) -> tuple[Any, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "edgebox", *args, "--port", str(port)]
    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=full)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + ready, timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"{args[0]} did not start:\n{log.read_text()}")


def first_token(router: str, model: str) -> tuple[float, str]:
    body = {"model": model, "prompt": "The capital of France is", "max_tokens": 4}
    body |= {"temperature": 0, "stream": True}
    started = time.perf_counter()
    first = None
    with httpx.stream("POST", router + "/v1/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        route = r.headers["x-edgebox-route"]
        for line in r.iter_lines():
            if first is None and line.startswith("data: {"):
                first = time.perf_counter() - started
    if first is None:
        raise SystemExit("no token came back")
    return first, route


def unload(node: str, model: str) -> None:
    httpx.post(node + "/admin/models/unload", json={"model": model}, timeout=60)
    while model in httpx.get(node + "/health", timeout=10).json()["models"]:
        time.sleep(0.05)
    time.sleep(POLL_S + 0.5)  # the router's next poll sees it unloaded


def one_round(router: str, b: str, store_b: ModelStore, model: str) -> dict[str, float]:
    transfer, route = first_token(router, model)
    assert "load:peer-transfer" in route, route
    loaded, _ = first_token(router, model)
    job = next(
        j
        for j in httpx.get(b + "/admin/models/pull", timeout=10).json()["data"]
        if j["spec"] == model
    )
    unload(b, model)
    on_disk, route = first_token(router, model)
    assert "load:on-disk" in route, route
    unload(b, model)
    store_b.remove(model)  # the next round copies every byte again
    pull_s = job["finished"] - job["started"]
    return {
        "transfer": transfer,
        "loaded": loaded,
        "on_disk": on_disk,
        "pull_s": pull_s,
        "mb_s": job["bytes_done"] / pull_s / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    gemma = resolve_model("gemma3-270m").path
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        names = [f"gemma-round-{i}" for i in range(args.rounds)]
        for name in names:
            ModelStore(tmp / "a").add_local(gemma, name)
        node = ["serve", "--model", "smollm2-135m", "--threads", "2", "--parallel", "1"]
        node += ["--ctx", "512", "--no-mdns", "--no-tunnel"]
        procs = []
        try:
            env_a = {"EDGEBOX_MODELS_DIR": str(tmp / "a"), "EDGEBOX_HOME": str(tmp / "ha")}
            env_b = {"EDGEBOX_MODELS_DIR": str(tmp / "b"), "EDGEBOX_HOME": str(tmp / "hb")}
            pa, a = start([*node, "--memory-budget", "200MB"], tmp / "a.log", env_a, "/health")
            procs.append(pa)
            pb, b = start(node, tmp / "b.log", env_b, "/health")
            procs.append(pb)
            argv = ["router", "--node", a, "--node", b, "--no-mdns"]
            pr, router = start(argv, tmp / "r.log", {"EDGEBOX_HOME": str(tmp / "hr")}, "/health")
            procs.append(pr)
            time.sleep(POLL_S + 0.5)  # the router has polled both nodes' disks
            rounds = [one_round(router, b, ModelStore(tmp / "b"), n) for n in names]
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(30)
    report(rounds, args.rounds, gemma.stat().st_size, args.write)


def report(rounds: list[dict[str, float]], n: int, size: int, write: bool) -> None:
    def med(key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    lines = [
        "## Router: first token for a model loaded nowhere (`benchmarks/bench_router_fetch.py`)",
        "",
        f"Machine: {machine()}; load average {os.getloadavg()[0]:.1f} at the end of the run "
        f"(shared with other work). Date: {time.strftime('%Y-%m-%d')}. Command: `python "
        f"benchmarks/bench_router_fetch.py --rounds {n}`. Two nodes and `edgebox router` on "
        f"loopback; Gemma 3 270M ({size / 1e6:.0f} MB) on node a's disk, over its 200 MB "
        "budget; streamed greedy /v1/completions, 4 tokens.",
        "",
        "| route | median time to first token (ms) | rounds |",
        "|---|---|---|",
        f"| `load:peer-transfer` (copy from a, load on b) | {med('transfer') * 1000:.0f} | {n} |",
        f"| `load:on-disk` (load on b) | {med('on_disk') * 1000:.0f} | {n} |",
        f"| loaded on b | {med('loaded') * 1000:.0f} | {n} |",
        "",
        f"b's pull job: median {med('pull_s'):.2f} s, {med('mb_s'):.0f} MB/s over loopback "
        f"(chunks digest-checked); peer transfer / on disk = "
        f"{med('transfer') / med('on_disk'):.1f}x.",
    ]
    emit(lines, write)


if __name__ == "__main__":
    main()
