"""libgomp's wait policy for nodes with several models (`runtimes/llamacpp/openmp.py`).

Two engines are two OpenMP teams; past as many OpenMP threads as CPUs libgomp throttles its
barrier spin and the busy model decoded at half speed while the other sat idle (measured by
benchmarks/bench_two_models.py, not here). Importing edgebox's llama.cpp package must set
`OMP_WAIT_POLICY=ACTIVE` with libgomp's usual spin count before llama-cpp-python loads, where
the build links libgomp; keep the user's own setting; and do nothing once llama-cpp-python is
already loaded. Each case runs in a fresh interpreter, since libgomp reads them once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgebox.runtimes.base import FinishEvent, GenerationRequest, SamplingParams, TokenEvent
from edgebox.runtimes.llamacpp.engine import EngineConfig, LlamaCppEngine
from edgebox.runtimes.llamacpp.model import LlamaCppModel
from edgebox.runtimes.llamacpp.openmp import SPIN_COUNT, uses_libgomp

ROOT = Path(__file__).resolve().parents[2]
REPORT = (
    "import json, os; import edgebox.runtimes.llamacpp;"
    "print(json.dumps([os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT')]))"
)


def child(code: str, **env: str) -> list[str | None]:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: list[str | None] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_the_build_on_this_machine_is_read() -> None:
    # pip builds llama-cpp-python with GCC on Linux: GNU OpenMP. A build without it (macOS,
    # GGML_OPENMP=OFF) leaves the environment alone, which the next test checks either way.
    if sys.platform == "linux":
        assert uses_libgomp(), "llama-cpp-python here does not link libgomp: rebuilt without it?"


def test_importing_the_package_sets_the_wait_policy() -> None:
    expected = ["ACTIVE", SPIN_COUNT] if uses_libgomp() else [None, None]
    assert child(REPORT) == expected


def test_the_users_own_choice_is_kept() -> None:
    assert child(REPORT, OMP_WAIT_POLICY="PASSIVE") == ["PASSIVE", None]
    expected = ["ACTIVE", "5000"] if uses_libgomp() else [None, "5000"]
    assert child(REPORT, GOMP_SPINCOUNT="5000") == expected


def test_nothing_is_set_once_llama_cpp_is_loaded() -> None:
    assert child("import llama_cpp; " + REPORT) == [None, None]


@pytest.fixture(scope="module")
def model(smollm2_path: Path) -> Iterator[LlamaCppModel]:
    m = LlamaCppModel(smollm2_path, n_gpu_layers=0, extra_buffers=False)
    yield m
    m.close()


def generate(engine: LlamaCppEngine, model: LlamaCppModel) -> list[int]:
    done = threading.Event()
    tokens: list[int] = []

    def sink(event: object) -> None:
        if isinstance(event, TokenEvent):
            tokens.append(event.token_id)
        elif isinstance(event, FinishEvent):
            assert event.error is None, event.error
            done.set()

    request = GenerationRequest(
        prompt_tokens=model.tokenize("The robot walked into the kitchen and"),
        sampling=SamplingParams(temperature=0, ignore_eos=True),
        max_tokens=12,
    )
    engine.submit(request, sink)
    assert done.wait(120)
    return tokens


def test_two_engines_in_one_process_agree_alone_and_at_once(model: LlamaCppModel) -> None:
    config = EngineConfig(n_ctx=512, parallel=2, n_threads=1)
    first, second = LlamaCppEngine(model, config), LlamaCppEngine(model, config)
    try:
        alone = generate(first, model)
        assert len(alone) == 12
        assert generate(second, model) == alone
        results: dict[int, list[int]] = {}
        workers = [
            threading.Thread(target=lambda i=i, e=e: results.__setitem__(i, generate(e, model)))
            for i, e in enumerate((first, second))
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join(120)
        assert results == {0: alone, 1: alone}
    finally:
        first.close()
        second.close()
