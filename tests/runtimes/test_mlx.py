"""The MLX runtime on a tiny real MLX model (mlx[cpu] on Linux runs the same code as Metal)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgebox.runtimes.base import (
    ContextLengthError,
    Event,
    FinishEvent,
    GenerationRequest,
    GrammarError,
    SamplingParams,
    TokenEvent,
)
from edgebox.runtimes.mlx import MlxConfig, MlxRuntime
from tests.runtimes.tiny_mlx import write_tiny_mlx_model

CHAT = [{"role": "user", "content": "Hello there, how are you?"}]
GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture(scope="session")
def tiny_mlx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_mlx_model(tmp_path_factory.mktemp("tiny-mlx"))


@pytest.fixture(scope="module")
def runtime(tiny_mlx_path: Path) -> Iterator[MlxRuntime]:
    rt = MlxRuntime(tiny_mlx_path, name="tiny", config=MlxConfig(n_ctx=256))
    yield rt
    rt.close()


def run(rt: MlxRuntime, request: GenerationRequest) -> tuple[list[TokenEvent], FinishEvent]:
    events: queue.Queue[Event] = queue.Queue()
    rt.submit(request, events.put)
    tokens: list[TokenEvent] = []
    while True:
        event = events.get(timeout=60)
        if isinstance(event, FinishEvent):
            return tokens, event
        tokens.append(event)


def prompt(rt: MlxRuntime) -> list[int]:
    return rt.tokenize(rt.render_chat(CHAT))


def test_chat_template_comes_from_the_tokenizer(runtime: MlxRuntime) -> None:
    text = runtime.render_chat(CHAT)
    assert text == "<|im_start|>user\nHello there, how are you?<|im_end|>\n<|im_start|>assistant\n"
    assert runtime.info.has_chat_template and runtime.info.metadata["chat_template"] == "tokenizer"
    assert runtime.detokenize(runtime.tokenize("Hello world")) == "Hello world"
    assert runtime.info.n_ctx == 256 and runtime.info.n_ctx_train == 512


def test_tokens_stream_one_event_each_and_max_tokens_is_respected(runtime: MlxRuntime) -> None:
    tokens, finish = run(runtime, GenerationRequest(prompt(runtime), GREEDY, max_tokens=7))
    assert len(tokens) == 7
    assert finish.reason == "length" and finish.completion_tokens == 7
    assert finish.prompt_tokens == len(prompt(runtime))
    text = "".join(t.text for t in tokens) + finish.text
    assert text == runtime.detokenize([t.token_id for t in tokens])


def test_greedy_is_deterministic_and_equals_mlx_lm(runtime: MlxRuntime) -> None:
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    p = prompt(runtime)
    first, _ = run(runtime, GenerationRequest(p, GREEDY, max_tokens=12))
    second, _ = run(runtime, GenerationRequest(p, GREEDY, max_tokens=12))
    reference = [t for t, _ in generate_step(mx.array(p), runtime.model, max_tokens=12)]
    assert [t.token_id for t in first] == [t.token_id for t in second] == reference


def test_repetition_penalty_reaches_the_logits(runtime: MlxRuntime) -> None:
    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.sample_utils import make_logits_processors

    p = prompt(runtime)
    penalised = SamplingParams(temperature=0.0, repeat_penalty=1.5)
    tokens, _ = run(runtime, GenerationRequest(p, penalised, max_tokens=12))
    processors = make_logits_processors(repetition_penalty=1.5)
    steps = generate_step(mx.array(p), runtime.model, max_tokens=12, logits_processors=processors)
    reference = [t for t, _ in steps]
    plain = [t.token_id for t in run(runtime, GenerationRequest(p, GREEDY, max_tokens=12))[0]]
    assert [t.token_id for t in tokens] == reference != plain


@pytest.mark.slow
def test_sampling_follows_the_seed(runtime: MlxRuntime) -> None:
    p = prompt(runtime)

    def sample(seed: int) -> list[int]:
        request = GenerationRequest(p, SamplingParams(temperature=1.0, seed=seed), max_tokens=16)
        return [t.token_id for t in run(runtime, request)[0]]

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


def test_end_of_generation_token_stops(runtime: MlxRuntime) -> None:
    p = prompt(runtime)
    seeded = SamplingParams(temperature=1.0, seed=5)
    sampled = [t.token_id for t in run(runtime, GenerationRequest(p, seeded, max_tokens=16))[0]]
    # the first token that did not occur before it becomes the end-of-generation token
    cut = next(i for i in range(1, len(sampled)) if sampled[i] not in sampled[:i])
    saved = set(runtime.tokenizer.eos_token_ids)
    runtime.tokenizer.eos_token_ids = saved | {sampled[cut]}
    try:
        tokens, finish = run(runtime, GenerationRequest(p, seeded, max_tokens=16))
    finally:
        runtime.tokenizer.eos_token_ids = saved
    assert [t.token_id for t in tokens] == sampled[:cut]
    assert finish.reason == "stop" and finish.completion_tokens == cut


def test_stop_string_ends_generation_and_is_not_sent(runtime: MlxRuntime) -> None:
    p = prompt(runtime)
    seeded = SamplingParams(temperature=1.0, seed=7)
    tokens, _ = run(runtime, GenerationRequest(p, seeded, max_tokens=16))
    full = "".join(t.text for t in tokens)
    stop = full[len(full) // 2 :][:3]
    cut, finish = run(runtime, GenerationRequest(p, seeded, max_tokens=16, stop=(stop,)))
    assert finish.reason == "stop" and len(stop) == 3
    assert "".join(t.text for t in cut) + finish.text == full[: full.index(stop)]


def test_cancel_stops_a_long_generation(runtime: MlxRuntime) -> None:
    events: queue.Queue[Event] = queue.Queue()
    started = threading.Event()

    def sink(event: Event) -> None:
        events.put(event)
        started.set()

    handle = runtime.submit(GenerationRequest(prompt(runtime), GREEDY, max_tokens=200), sink)
    assert started.wait(60)
    handle.cancel()
    while not isinstance(event := events.get(timeout=60), FinishEvent):
        pass
    assert event.reason == "cancelled" and event.completion_tokens < 200


def test_requests_queue_behind_each_other(runtime: MlxRuntime) -> None:
    p = prompt(runtime)
    results: queue.Queue[Event] = queue.Queue()
    for _ in range(3):
        runtime.submit(GenerationRequest(p, GREEDY, max_tokens=5), results.put)
    finishes = []
    while len(finishes) < 3:
        event = results.get(timeout=60)
        if isinstance(event, FinishEvent):
            finishes.append(event)
    assert [f.completion_tokens for f in finishes] == [5, 5, 5]
    stats = runtime.stats()
    assert stats.slots == 1 and stats.queued == 0
    assert runtime.capabilities.batching is False


def test_unsupported_requests_are_refused_at_submit(runtime: MlxRuntime) -> None:
    with pytest.raises(GrammarError):
        runtime.submit(
            GenerationRequest(prompt(runtime), SamplingParams(json_mode=True)), lambda e: None
        )
    with pytest.raises(ContextLengthError, match="256 tokens"):
        runtime.submit(GenerationRequest([5] * 300, GREEDY), lambda e: None)


def test_logprobs_are_log_probabilities_of_the_chosen_token(runtime: MlxRuntime) -> None:
    request = GenerationRequest(
        prompt(runtime), SamplingParams(temperature=0.0, logprobs=3), max_tokens=3
    )
    tokens, _ = run(runtime, request)
    for t in tokens:
        assert t.logprob is not None and t.logprob.logprob <= 0.0
        assert len(t.top_logprobs) == 3
        # greedy picks the most likely token
        assert t.top_logprobs[0].logprob == pytest.approx(t.logprob.logprob)


def test_close_cancels_the_running_request_and_the_queue(tiny_mlx_path: Path) -> None:
    rt = MlxRuntime(tiny_mlx_path, name="tiny", config=MlxConfig(n_ctx=512))
    events: queue.Queue[Event] = queue.Queue()
    p = rt.tokenize(rt.render_chat(CHAT))
    started = threading.Event()

    def first(event: Event) -> None:
        events.put(event)
        started.set()

    rt.submit(GenerationRequest(p, GREEDY, max_tokens=480), first)
    rt.submit(GenerationRequest(p, GREEDY, max_tokens=480), events.put)
    assert started.wait(60)
    rt.close()
    finishes = []
    while len(finishes) < 2:
        event = events.get(timeout=30)
        if isinstance(event, FinishEvent):
            finishes.append(event)
    assert sorted(f.reason for f in finishes) == ["cancelled", "cancelled"]
    assert all(f.completion_tokens < 480 for f in finishes)
