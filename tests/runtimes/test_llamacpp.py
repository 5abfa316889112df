"""The llama.cpp runtime on the real bundled models, in process."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgebox.runtimes.base import (
    BackendError,
    ContextLengthError,
    Event,
    FinishEvent,
    GenerationRequest,
    GrammarError,
    SamplingParams,
    TokenEvent,
)
from edgebox.runtimes.llamacpp import EngineConfig, LlamaCppRuntime
from edgebox.runtimes.llamacpp import engine as engine_module
from edgebox.runtimes.llamacpp import runtime as runtime_module
from edgebox.runtimes.llamacpp.sampling import plain_greedy


class Collector:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.done = threading.Event()

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, FinishEvent):
            self.done.set()

    def wait(self) -> tuple[str, FinishEvent]:
        assert self.done.wait(60), "generation did not finish"
        finish = self.events[-1]
        assert isinstance(finish, FinishEvent)
        text = "".join(e.text for e in self.events if isinstance(e, TokenEvent)) + finish.text
        return text, finish


@pytest.fixture(scope="module")
def runtime(smollm2_path: Path) -> Iterator[LlamaCppRuntime]:
    rt = LlamaCppRuntime(
        smollm2_path, name="smollm2", config=EngineConfig(n_ctx=1024, parallel=8, n_threads=2)
    )
    yield rt
    rt.close()


def chat(
    rt: LlamaCppRuntime, content: str, max_tokens: int = 24, **sampling: object
) -> GenerationRequest:
    tokens = rt.tokenize(rt.render_chat([{"role": "user", "content": content}]))
    params = SamplingParams(**{"temperature": 0.0, **sampling})  # type: ignore[arg-type]
    return GenerationRequest(tokens, params, max_tokens=max_tokens)


def run(rt: LlamaCppRuntime, request: GenerationRequest) -> tuple[str, FinishEvent]:
    collector = Collector()
    rt.submit(request, collector)
    return collector.wait()


@pytest.mark.slow
def test_concurrent_greedy_requests_match_their_solo_runs(runtime: LlamaCppRuntime) -> None:
    prompts = [f"Write one sentence about the colour number {i}." for i in range(8)]
    solo = [run(runtime, chat(runtime, p))[0] for p in prompts]
    collectors = [Collector() for _ in prompts]
    for prompt, collector in zip(prompts, collectors, strict=True):
        runtime.submit(chat(runtime, prompt), collector)
    together = [c.wait()[0] for c in collectors]
    assert together == solo
    assert len(set(solo)) > 1  # the prompts really produce different text


def _reference_llama(path: Path, *, extra_buffers: bool) -> Any:
    """llama-cpp-python's own Llama with the runtime's extra-buffer decision: Llama() has no
    option for it, and its default (on) dies by SIGSEGV on CPUs that advertise AMX and fault
    on it (the Intel Xeon CI kind), taking the whole test process with it."""
    import llama_cpp.llama_cpp as native
    from llama_cpp import Llama

    default_params = native.llama_model_default_params

    def params() -> Any:
        chosen = default_params()
        chosen.use_extra_bufts = extra_buffers
        return chosen

    native.llama_model_default_params = params  # what Llama() reads its defaults from
    try:
        return Llama(str(path), n_ctx=512, n_threads=2, verbose=False, flash_attn=False)
    finally:
        native.llama_model_default_params = default_params


@pytest.mark.slow
def test_engine_matches_llama_cpp_python_reference(smollm2_path: Path) -> None:
    """Greedy output follows llama-cpp-python's own evaluation token by token (flash attention
    off on both sides). Batched kernels round differently from single-sequence ones on some
    CPUs, so a divergence is accepted only where the reference itself sees a near tie between
    its token and ours, and never in the first tokens."""
    import numpy as np

    rt = LlamaCppRuntime(
        smollm2_path,
        name="ref",
        config=EngineConfig(n_ctx=512, parallel=2, n_threads=2, flash_attn="off"),
    )
    reference = _reference_llama(smollm2_path, extra_buffers=rt.extra_buffers.enabled)
    try:
        for question in ("What is the capital of France?", "Name three colours."):
            tokens = rt.tokenize(rt.render_chat([{"role": "user", "content": question}]))
            collector = Collector()
            rt.submit(
                GenerationRequest(tokens, SamplingParams(temperature=0), max_tokens=32), collector
            )
            collector.wait()
            ours = [e.token_id for e in collector.events if isinstance(e, TokenEvent)]
            assert len(ours) >= 4

            reference.reset()
            reference.eval(tokens)
            for position, token in enumerate(ours):
                logits = np.ctypeslib.as_array(
                    reference._ctx.get_logits_ith(-1), shape=(reference.n_vocab(),)
                )
                best = int(logits.argmax())
                if best != token:
                    gap = float(logits[best] - logits[token])
                    assert position >= 3 and gap < 0.5, (
                        f"{question!r}: token {position} is {token}, reference {best} "
                        f"(logit gap {gap:.3f})"
                    )
                    break
                reference.eval([token])
    finally:
        rt.close()
        reference.close()


def test_shared_prefix_is_reused_from_a_free_slot(runtime: LlamaCppRuntime) -> None:
    system = "You are a meticulous assistant. " * 20
    first = [{"role": "system", "content": system}, {"role": "user", "content": "Name a fruit."}]
    second = [{"role": "system", "content": system}, {"role": "user", "content": "Name a tree."}]
    for messages, expect_cached in ((first, False), (second, True)):
        tokens = runtime.tokenize(runtime.render_chat(messages))
        _, finish = run(
            runtime, GenerationRequest(tokens, SamplingParams(temperature=0), max_tokens=4)
        )
        if expect_cached:
            assert finish.cached_tokens > 100
            assert finish.cached_tokens < finish.prompt_tokens


def test_max_tokens_and_usage(runtime: LlamaCppRuntime) -> None:
    request = chat(runtime, "Count from one to one hundred in words.", max_tokens=7)
    _, finish = run(runtime, request)
    assert finish.reason == "length"
    assert finish.completion_tokens == 7
    assert finish.prompt_tokens == len(request.prompt_tokens)


@pytest.mark.slow
def test_same_seed_same_text_and_seeds_differ(runtime: LlamaCppRuntime) -> None:
    def sample(seed: int) -> str:
        return run(runtime, chat(runtime, "Tell me a story.", temperature=1.0, seed=seed))[0]

    assert sample(7) == sample(7)
    assert len({sample(s) for s in range(4)}) > 1


@pytest.mark.slow
def test_seeded_sampling_is_the_same_alone_and_among_others(runtime: LlamaCppRuntime) -> None:
    requests = [
        chat(runtime, f"Tell me a story about island {i}.", temperature=0.9, top_p=0.95, seed=i)
        for i in range(6)
    ]
    solo = [run(runtime, r)[0] for r in requests]
    collectors = [Collector() for _ in requests]
    for request, collector in zip(requests, collectors, strict=True):
        runtime.submit(request, collector)
    assert [c.wait()[0] for c in collectors] == solo


def test_cancel_frees_the_slot_promptly(runtime: LlamaCppRuntime) -> None:
    collector = Collector()
    handle = runtime.submit(chat(runtime, "Write a very long essay.", max_tokens=800), collector)
    while sum(isinstance(e, TokenEvent) for e in collector.events) < 3:
        threading.Event().wait(0.01)
    handle.cancel()
    _, finish = collector.wait()
    assert finish.reason == "cancelled"
    assert finish.completion_tokens < 50
    assert runtime.stats().running == 0


@pytest.mark.parametrize(
    ("sampling", "plain"),
    [
        ({}, True),
        ({"ignore_eos": True, "logprobs": 3}, True),
        ({"temperature": 0.7}, False),
        ({"json_mode": True}, False),
        ({"grammar": 'root ::= "a"'}, False),
        ({"json_schema": {"type": "object"}}, False),
        ({"repeat_penalty": 1.1}, False),
        ({"presence_penalty": 0.5}, False),
        ({"logit_bias": ((1, 2.0),)}, False),
    ],
)
def test_only_unconstrained_greedy_skips_the_sampler_chain(
    sampling: dict[str, Any], plain: bool
) -> None:
    assert plain_greedy(SamplingParams(**{"temperature": 0.0, **sampling})) is plain


def test_plain_greedy_picks_what_the_sampler_chain_picks(runtime: LlamaCppRuntime) -> None:
    """Plain greedy requests take the argmax off the logits (`greedy_token`); a zero logit bias
    sends the same request through llama.cpp's sampler chain. Both must give the same tokens,
    with end-of-generation tokens banned (ignore_eos) and without."""

    def tokens(request: GenerationRequest) -> tuple[list[int], str]:
        collector = Collector()
        runtime.submit(request, collector)
        _, finish = collector.wait()
        return [e.token_id for e in collector.events if isinstance(e, TokenEvent)], finish.reason

    for ignore_eos in (False, True):
        fast = chat(runtime, "Say hi.", max_tokens=40, ignore_eos=ignore_eos)
        chain = chat(
            runtime, "Say hi.", max_tokens=40, ignore_eos=ignore_eos, logit_bias=((0, 0.0),)
        )
        fast_tokens, fast_reason = tokens(fast)
        assert fast_tokens and (fast_tokens, fast_reason) == tokens(chain)
        assert fast_reason == ("length" if ignore_eos else "stop")  # "Say hi." ends early


def test_logprobs_are_normalised_and_greedy_picks_the_top(runtime: LlamaCppRuntime) -> None:
    collector = Collector()
    runtime.submit(chat(runtime, "Say hi.", max_tokens=5, logprobs=3), collector)
    collector.wait()
    tokens = [e for e in collector.events if isinstance(e, TokenEvent)]
    assert tokens
    for event in tokens:
        assert event.logprob is not None and len(event.top_logprobs) == 3
        assert event.logprob.logprob <= 0
        assert math.isclose(event.logprob.logprob, event.top_logprobs[0].logprob)
        assert sum(math.exp(t.logprob) for t in event.top_logprobs) <= 1.0 + 1e-6


def test_json_schema_constrains_output(runtime: LlamaCppRuntime) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    import json

    text, _ = run(
        runtime, chat(runtime, "Describe a person as JSON.", max_tokens=80, json_schema=schema)
    )
    value = json.loads(text)
    assert isinstance(value["name"], str) and isinstance(value["age"], int)


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


@pytest.mark.parametrize(
    "sampling",
    [
        {"temperature": 0.7, "seed": 1, "top_k": 40},
        {"temperature": 0.7, "seed": 1, "top_k": 40, "top_p": 0.95, "min_p": 0.05},
        {"temperature": 1.2, "seed": 5},
        {"temperature": 0.8, "seed": 2, "top_p": 0.9},
    ],
    ids=["top_k", "llama-server-defaults", "hot", "top_p"],
)
def test_sampled_json_schema_replies_run_to_their_length(
    runtime: LlamaCppRuntime, sampling: dict[str, Any]
) -> None:
    """Sampled JSON under a schema, each refused draw redrawn among the grammar's allowed
    tokens only (rows of a few to thousands of entries, one after another): every reply runs
    to max_tokens or ends complete, each one a prefix of valid JSON text."""
    import json

    ask = "Write the weather forecast for Paris for each day of next week."
    for _ in range(2):
        text, finish = run(runtime, chat(runtime, ask, max_tokens=96, json_schema=WEEK, **sampling))
        assert finish.reason in ("length", "stop"), finish
        assert text.lstrip().startswith("{")
        if finish.reason == "stop":
            assert len(json.loads(text)["days"]) >= 7


def test_unloading_waits_for_a_preparation_thread_left_running(
    smollm2_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request whose preparation outlived its deadline leaves the thread running (threads
    cannot be stopped) and gives up its lease: unloading the model then must wait for that
    thread, not free the vocabulary under it."""
    rt = LlamaCppRuntime(
        smollm2_path, name="s", config=EngineConfig(n_ctx=256, parallel=1, n_threads=1)
    )
    entered, release = threading.Event(), threading.Event()
    real = runtime_module.prepare_grammar

    def slow(model: Any, params: SamplingParams) -> None:
        entered.set()
        if release.wait(10):  # never released when the test fails: the model is gone
            real(model, params)

    monkeypatch.setattr(runtime_module, "prepare_grammar", slow)
    outcome: list[str] = []

    def prepare() -> None:
        rt.prepare_sampling(SamplingParams(json_mode=True))
        outcome.append("compiled")

    worker = threading.Thread(target=prepare)
    worker.start()
    assert entered.wait(10)
    closer = threading.Thread(target=rt.close)
    closer.start()
    closer.join(0.5)
    assert closer.is_alive(), "the model was freed while a preparation thread held it"
    with pytest.raises(BackendError, match="unloaded"):  # no new work while it waits
        rt.tokenize("hello")
    release.set()
    worker.join(30)
    closer.join(30)
    assert outcome == ["compiled"] and not closer.is_alive() and rt.model.ptr is None
    with pytest.raises(BackendError, match="unloaded"):
        rt.tokenize("hello")


def test_closing_during_a_long_decode_leaves_the_memory_rather_than_freeing_it(
    smollm2_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past CLOSE_WAIT_S the scheduler may still be inside llama_decode: the context and the
    model must stay allocated (a leak at shutdown) instead of being freed under it."""
    rt = LlamaCppRuntime(
        smollm2_path, name="s", config=EngineConfig(n_ctx=2048, parallel=1, n_threads=1)
    )
    monkeypatch.setattr(engine_module, "CLOSE_WAIT_S", 0.01)
    prompt = rt.tokenize("word " * 1900)
    collector = Collector()
    rt.submit(GenerationRequest(prompt, SamplingParams(temperature=0.0), max_tokens=64), collector)
    time.sleep(0.3)  # inside the prompt's first 512-token chunk (~1 s on one thread)
    rt.close()
    assert rt.engine.ctx is not None and rt.model.ptr is not None
    _, finish = collector.wait()  # the scheduler ends the request and leaves
    assert finish.reason == "cancelled"


def test_bad_grammar_and_overlong_prompt_are_refused(runtime: LlamaCppRuntime) -> None:
    with pytest.raises(GrammarError):
        runtime.submit(chat(runtime, "x", grammar="root ::= [unterminated"), Collector())
    with pytest.raises(ContextLengthError):
        runtime.submit(GenerationRequest([1] * 2000), Collector())


@pytest.mark.slow
def test_gemma_base_model_uses_the_gemma_fallback_template(gemma_path: Path) -> None:
    rt = LlamaCppRuntime(
        gemma_path, name="gemma", config=EngineConfig(n_ctx=512, parallel=1, n_threads=2)
    )
    try:
        assert rt.info.architecture == "gemma3"
        assert rt.info.metadata["chat_template"] == "gemma"
        prompt = rt.render_chat([{"role": "user", "content": "What is 2 + 2?"}])
        tokens = rt.tokenize(prompt)
        assert tokens.count(rt.model.bos_id) == 1  # the template's BOS is not doubled
        text, finish = run(
            rt, GenerationRequest(tokens, SamplingParams(temperature=0), max_tokens=12)
        )
        assert finish.completion_tokens > 0 and text.strip()
    finally:
        rt.close()
