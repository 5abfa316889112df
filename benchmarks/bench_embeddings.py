"""Embedding throughput: `edgebox serve` /v1/embeddings over HTTP vs a bare onnxruntime session.

Same model file (the bundled all-MiniLM-L6-v2 int8), tokenizer, threads and sentences for both,
in one run. The bare path is what a program would do without edgebox: tokenize with
`tokenizers`, pad to the batch's longest, `session.run`, mean-pool, normalise. The edgebox path
is the openai SDK's `client.embeddings.create` against a real node on loopback (base64 on the
wire, the SDK's default). Rounds alternate the two paths; the median round is reported.
Prints a markdown table; `--write` appends it to docs/benchmarks.md.

    python benchmarks/bench_embeddings.py --seconds 3 --rounds 3 --threads 2 --write
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort
import openai
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_serve import emit, machine, start  # noqa: E402

from edgebox.models import resolve_model  # noqa: E402
from edgebox.runtimes.onnx.pooling import mean_pool, normalise, pad_batch  # noqa: E402
from tests.conftest import free_port  # noqa: E402

WORDS = (  # noqa: SIM905
    "the a river city model quiet engine bright cloud table under over quickly server memory "
    "token light green small large north south market music garden winter summer train road"
).split()


def sentences(n: int, seed: int = 7) -> list[str]:
    """Sentences of 6-30 words, fixed by the seed, so both paths embed the same text."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(6, 30))) + "." for _ in range(n)]


def bare(
    model_path: Path, tokenizer_path: Path, threads: int, *, spinning: bool
) -> Callable[[list[str]], int]:
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(256)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if not spinning:  # as edgebox sets it
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])

    def run(batch: list[str]) -> int:
        encs = tokenizer.encode_batch(batch)
        feed = pad_batch([e.ids for e in encs], [e.type_ids for e in encs])
        hidden = session.run(None, feed)[0]
        return len(normalise(mean_pool(hidden, feed["attention_mask"])))

    return run


def over_http(base_url: str, model: str) -> Callable[[list[str]], int]:
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)

    def run(batch: list[str]) -> int:
        reply = client.embeddings.create(model=model, input=batch)
        assert len(reply.data[0].embedding) == 384
        return len(reply.data)

    return run


def rate(run: Callable[[list[str]], int], texts: list[str], batch: int, seconds: float) -> float:
    """Sentences per second, cycling through `texts` in batches for about `seconds`."""
    run(texts[:batch])  # warm-up
    done, i = 0, 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        chunk = texts[i : i + batch]
        i = (i + batch) % (len(texts) - batch + 1)
        done += run(chunk)
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    model = resolve_model("all-minilm-l6-v2")
    assert model.tokenizer is not None
    texts = sentences(512)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "edgebox", "serve", "--model", "minilm", "--port", str(port)]
    node = start([*cmd, "--threads", str(args.threads)], url + "/health")
    results: dict[tuple[str, int], list[float]] = {}
    try:
        paths = {
            "bare onnxruntime, edgebox's session options": bare(
                model.path, model.tokenizer, args.threads, spinning=False
            ),
            "edgebox (HTTP, openai SDK)": over_http(url + "/v1", model.alias),
            "bare onnxruntime, default options (threads spin)": bare(
                model.path, model.tokenizer, args.threads, spinning=True
            ),
        }
        for _ in range(args.rounds):
            for batch in (1, 32):
                for name, run in paths.items():
                    results.setdefault((name, batch), []).append(
                        rate(run, texts, batch, args.seconds)
                    )
    finally:
        node.terminate()
        node.wait(timeout=30)

    median = {key: statistics.median(v) for key, v in results.items()}
    lines = [
        "### all-MiniLM-L6-v2 int8 (ONNX), CPU provider, "
        f"{args.threads} threads, median of {args.rounds} rounds of {args.seconds:g} s",
        "",
        f"Machine: {machine()}; onnxruntime {ort.__version__}; load average "
        f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after (other jobs share the cores).",
        f"Command: `python benchmarks/bench_embeddings.py --seconds {args.seconds:g} "
        f"--rounds {args.rounds} --threads {args.threads}`",
        "",
        "| path | batch 1 (sentences/s) | batch 32 (sentences/s) |",
        "|---|---|---|",
    ]
    for name in paths:
        lines.append(f"| {name} | {median[(name, 1)]:.1f} | {median[(name, 32)]:.1f} |")
    ratio = [median[(n, b)] for n in paths for b in (1, 32)]
    lines.append(
        f"| edgebox / bare (same options) | {ratio[2] / ratio[0]:.1%} | {ratio[3] / ratio[1]:.1%} |"
    )
    emit(lines, args.write)


if __name__ == "__main__":
    main()
