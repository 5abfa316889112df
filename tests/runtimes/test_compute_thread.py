"""Every llama.cpp decode in the process runs on one thread, however many models are loaded.

libgomp gives each thread that opens an OpenMP region a team of its own; with two engines
decoding on their own threads a 2-core box held four OpenMP threads, libgomp throttled its
barrier spin, and the busy model decoded at half speed while the other sat idle (see
`runtimes/llamacpp/compute.py`; the speed itself is measured by benchmarks/bench_two_models.py).
Here: two engines (two contexts on the bundled SmolLM2), requests on each, one after the other
and at once; every `llama_decode` must have come from the same thread, and the answers must be
the greedy ones a lone engine gives."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp
import pytest

from edgebox.runtimes.base import FinishEvent, GenerationRequest, SamplingParams, TokenEvent
from edgebox.runtimes.llamacpp.engine import EngineConfig, LlamaCppEngine
from edgebox.runtimes.llamacpp.model import LlamaCppModel

CONFIG = EngineConfig(n_ctx=512, parallel=2, n_threads=1)


@pytest.fixture(scope="module")
def model(smollm2_path: Path) -> Iterator[LlamaCppModel]:
    m = LlamaCppModel(smollm2_path, n_gpu_layers=0, extra_buffers=False)
    yield m
    m.close()


def generate(engine: LlamaCppEngine, model: LlamaCppModel, prompt: str) -> list[int]:
    done = threading.Event()
    tokens: list[int] = []

    def sink(event: object) -> None:
        if isinstance(event, TokenEvent):
            tokens.append(event.token_id)
        elif isinstance(event, FinishEvent):
            assert event.error is None, event.error
            done.set()

    request = GenerationRequest(
        prompt_tokens=model.tokenize(prompt),
        sampling=SamplingParams(temperature=0, ignore_eos=True),
        max_tokens=12,
    )
    engine.submit(request, sink)
    assert done.wait(120)
    return tokens


def test_two_engines_decode_on_one_thread(
    model: LlamaCppModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    callers: set[int] = set()
    real = llama_cpp.llama_decode

    def watched(ctx: Any, batch: Any) -> int:
        callers.add(threading.get_ident())
        return int(real(ctx, batch))

    monkeypatch.setattr(llama_cpp, "llama_decode", watched)
    first, second = LlamaCppEngine(model, CONFIG), LlamaCppEngine(model, CONFIG)
    try:
        alone = generate(first, model, "The robot walked into the kitchen and")
        assert len(alone) == 12
        assert generate(second, model, "The robot walked into the kitchen and") == alone
        results: dict[int, list[int]] = {}
        workers = [
            threading.Thread(
                target=lambda i=i, e=e: results.__setitem__(
                    i, generate(e, model, "The robot walked into the kitchen and")
                )
            )
            for i, e in enumerate((first, second))
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join(120)
        assert results == {0: alone, 1: alone}  # taking turns changes no answer
    finally:
        first.close()
        second.close()
    engine_threads = {first._thread.ident, second._thread.ident}
    assert len(callers) == 1, f"llama_decode ran on {len(callers)} threads"
    assert not callers & engine_threads  # the compute thread, not either engine's own
