"""Engine scheduling on the real bundled model: chunked prefill fairness, timeouts,
batching figures, and KV snapshots within one process (across processes: tests/node)."""

from __future__ import annotations

import itertools
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from edgebox.runtimes.base import (
    Event,
    FinishEvent,
    GenerationRequest,
    KVMismatchError,
    KVSnapshot,
    QueueFullError,
    SamplingParams,
    TokenEvent,
)
from edgebox.runtimes.llamacpp import EngineConfig, LlamaCppRuntime
from edgebox.runtimes.llamacpp import moves as moves_module
from edgebox.runtimes.llamacpp.runtime import auto_parallel
from edgebox.runtimes.llamacpp.slots import (
    BatchArrays,
    Part,
    Slot,
    choose_slot,
    gap_move,
    runs_with,
    swap_contents,
    worth_moving,
)
from edgebox.runtimes.prefix_blocks import BLOCK_TOKENS, BlockChain

GREEDY = SamplingParams(temperature=0.0)
CHUNK = 256


class Timeline:
    """Events of one request with the time each arrived."""

    def __init__(self) -> None:
        self.tokens: list[float] = []
        self.ids: list[int] = []
        self.finish: FinishEvent | None = None
        self.done = threading.Event()

    def __call__(self, event: Event) -> None:
        if isinstance(event, TokenEvent):
            self.tokens.append(time.perf_counter())
            self.ids.append(event.token_id)
        elif isinstance(event, FinishEvent):
            self.finish = event
            self.done.set()

    def wait(self, timeout: float = 120) -> FinishEvent:
        assert self.done.wait(timeout), "the request did not finish"
        assert self.finish is not None
        return self.finish


@pytest.fixture(scope="module")
def runtime(smollm2_path: Path) -> Iterator[LlamaCppRuntime]:
    rt = LlamaCppRuntime(
        smollm2_path,
        name="smollm2",
        config=EngineConfig(n_ctx=2304, parallel=4, n_threads=2, prefill_chunk=CHUNK),
    )
    yield rt
    rt.close()


def prose_tokens(rt: LlamaCppRuntime, n: int, seed: str) -> list[int]:
    """n tokens of varied text, unique per seed so no slot holds a prefix of it."""
    sentences = [
        f"{seed}: note {i} says the {w} crossed the {p} at {i % 24} o'clock."
        for i, (w, p) in enumerate(
            zip(
                ["heron", "ferry", "cyclist", "comet"] * 200,
                ["river", "bay", "pass"] * 300,
                strict=False,
            )
        )
    ]
    tokens = rt.tokenize(" ".join(sentences))
    assert len(tokens) >= n
    return tokens[:n]


def counting(rt: LlamaCppRuntime) -> list[int]:
    """A prompt the model continues for hundreds of tokens without ending."""
    return rt.tokenize(", ".join(str(i) for i in range(1, 30)) + ",")


def submit(rt: LlamaCppRuntime, request: GenerationRequest) -> tuple[Timeline, object]:
    timeline = Timeline()
    handle = rt.submit(request, timeline)
    return timeline, handle


@pytest.mark.slow
def test_long_prompt_never_stalls_running_streams_longer_than_a_chunk(
    runtime: LlamaCppRuntime,
) -> None:
    # One chunk's cost, measured here and now: a lone prefill of exactly CHUNK tokens.
    chunk_times = []
    for i in range(2):
        alone, _ = submit(
            runtime, GenerationRequest(prose_tokens(runtime, CHUNK, f"chunk{i}"), GREEDY, 1)
        )
        started = time.perf_counter()
        alone.wait()
        chunk_times.append(alone.tokens[0] - started)
    chunk_s = min(chunk_times)

    count = counting(runtime)
    streams = [
        submit(runtime, GenerationRequest(count[: len(count) - i], GREEDY, max_tokens=2000))
        for i in range(3)
    ]
    deadline = time.monotonic() + 60
    while any(len(t.tokens) < 3 for t, _ in streams):
        assert time.monotonic() < deadline, "the decoding streams did not start"
        time.sleep(0.01)

    long_prompt = prose_tokens(runtime, 2000, "long")
    long_started = time.perf_counter()
    long_timeline, _ = submit(runtime, GenerationRequest(long_prompt, GREEDY, max_tokens=1))
    long_timeline.wait()
    long_first = long_timeline.tokens[0]
    for _, handle in streams:
        handle.cancel()  # type: ignore[attr-defined]
    for timeline, _ in streams:
        timeline.wait()

    gaps = []
    for timeline, _ in streams:
        during = [t for t in timeline.tokens if long_started <= t <= long_first]
        assert len(during) >= 4, "a stream stopped decoding while the long prompt was prefilled"
        gaps.extend(b - a for a, b in itertools.pairwise(during))
    prefill_s = long_first - long_started
    # Unchunked, the 2,000 tokens would be one ~8-chunk step and one gap of ~8 chunk times.
    assert prefill_s > 4 * chunk_s, (prefill_s, chunk_s)
    assert max(gaps) < 2.5 * chunk_s, (max(gaps), chunk_s)
    assert long_timeline.finish is not None and long_timeline.finish.cached_tokens == 0


@pytest.mark.slow
def test_request_timeout_ends_generation_and_queue_wait(smollm2_path: Path) -> None:
    rt = LlamaCppRuntime(
        smollm2_path,
        name="smollm2",
        config=EngineConfig(n_ctx=1024, parallel=1, n_threads=2, request_timeout=None),
    )
    try:
        prompt = counting(rt)
        running, _ = submit(rt, GenerationRequest(prompt, GREEDY, max_tokens=900, timeout=1.0))
        queued, _ = submit(rt, GenerationRequest(prompt, GREEDY, max_tokens=5, timeout=0.5))
        finish = queued.wait()
        assert finish.reason == "timeout" and "waiting for a slot" in (finish.error or "")
        assert finish.completion_tokens == 0
        finish = running.wait()
        assert finish.reason == "timeout" and "generating" in (finish.error or "")
        assert 0 < finish.completion_tokens < 900
        # The slot is free again and the engine keeps serving.
        after, _ = submit(rt, GenerationRequest(prompt, GREEDY, max_tokens=3))
        assert after.wait().reason == "length"
        stats = rt.stats()
        assert stats.running == 0 and stats.queued == 0
    finally:
        rt.close()


def test_requests_arriving_together_at_a_free_slot_are_not_counted_as_waiting(
    smollm2_path: Path,
) -> None:
    rt = LlamaCppRuntime(
        smollm2_path,
        name="smollm2",
        config=EngineConfig(n_ctx=512, parallel=1, n_threads=2, max_queue=1),
    )
    try:
        prompt = counting(rt)
        # Holding the engine's lock keeps its scheduler from taking the first job before the
        # second arrives: the first is about to run, only the second waits for the slot.
        with rt.engine._cond:
            first, _ = submit(rt, GenerationRequest(prompt, GREEDY, max_tokens=4))
            second, _ = submit(rt, GenerationRequest(prompt, GREEDY, max_tokens=4))
            with pytest.raises(QueueFullError):
                submit(rt, GenerationRequest(prompt, GREEDY, max_tokens=4))
        assert first.wait().reason == "length" and second.wait().reason == "length"
    finally:
        rt.close()


@pytest.mark.slow
def test_batching_figures_count_every_step(runtime: LlamaCppRuntime) -> None:
    before = runtime.stats()
    timelines = [
        submit(runtime, GenerationRequest(prose_tokens(runtime, 40, f"b{i}"), GREEDY, 8))[0]
        for i in range(3)
    ]
    produced = sum(t.wait().completion_tokens for t in timelines)
    after = runtime.stats()
    steps = after.steps_total - before.steps_total
    assert steps >= 8  # at least one step per generated position
    assert after.batch_tokens_total - before.batch_tokens_total >= 3 * 40 + produced - 3
    assert after.batch_size_buckets[-1] == after.steps_total  # cumulative buckets
    assert after.step_seconds_total > before.step_seconds_total
    assert after.decode_tokens_per_s > 0
    assert all(t.finish and t.finish.queue_wait_s >= 0 for t in timelines)


@pytest.mark.slow
def test_kv_snapshot_continues_exactly_in_another_engine(
    runtime: LlamaCppRuntime, smollm2_path: Path
) -> None:
    prompt = runtime.tokenize(
        runtime.render_chat([{"role": "user", "content": "Name three rivers in Europe."}])
    )
    whole, _ = submit(runtime, GenerationRequest(prompt, GREEDY, max_tokens=24))
    whole.wait()
    # The same prompt again starts from the logits kept after it: no token decoded twice,
    # and the same text however the first run's last token was batched.
    again, _ = submit(runtime, GenerationRequest(prompt, GREEDY, max_tokens=24))
    assert again.wait().cached_tokens == len(prompt)
    assert again.ids == whole.ids
    exported_all, _ = submit(runtime, GenerationRequest(prompt, export_kv=True))
    kv_all = exported_all.wait().kv
    assert kv_all is not None and list(kv_all.tokens) == prompt
    assert len(kv_all.logits) == 4 * runtime.engine.model.n_vocab
    exported, _ = submit(runtime, GenerationRequest(prompt[:-1], export_kv=True))
    finish = exported.wait()
    assert finish.reason == "stop" and finish.kv is not None and finish.completion_tokens == 0
    kv = finish.kv
    assert list(kv.tokens) == prompt[:-1] and len(kv.data) > 1000
    assert kv.fingerprint["n_ctx"] == "2304" and len(kv.fingerprint["model_sha256"]) == 64

    other = LlamaCppRuntime(
        smollm2_path, name="other", config=EngineConfig(n_ctx=2304, parallel=4, n_threads=2)
    )
    try:
        assert other.kv_fingerprint() == kv.fingerprint
        split, _ = submit(other, GenerationRequest(prompt, GREEDY, max_tokens=24, kv=kv))
        split_finish = split.wait()
        assert split_finish.cached_tokens == len(prompt) - 1  # only the last token prefilled
        assert split.ids == whole.ids

        # The whole prompt with the logits after it: the first token comes from those.
        whole_split, _ = submit(other, GenerationRequest(prompt, GREEDY, max_tokens=24, kv=kv_all))
        assert whole_split.wait().cached_tokens == len(prompt)
        assert whole_split.ids == whole.ids

        with pytest.raises(KVMismatchError, match="not a prefix"):
            other.submit(GenerationRequest([*prompt[:5], 1], GREEDY, kv=kv), Timeline())
        # Imported cells are never offered to another request's prefix match.
        reuse, _ = submit(other, GenerationRequest(prompt, GREEDY, max_tokens=4))
        assert reuse.wait().cached_tokens == 0
        # A snapshot whose token list claims more cells than its bytes hold is not trusted:
        # the prompt is prefilled instead, and the output is still right.
        longer = [*kv.tokens, 7777]
        mislabelled = KVSnapshot(kv.fingerprint, longer, kv.data)
        checked, _ = submit(
            other, GenerationRequest([*longer, 7778], GREEDY, max_tokens=4, kv=mislabelled)
        )
        assert checked.wait().cached_tokens == 0
        forged = KVSnapshot({**kv.fingerprint, "type_k": "q8_0"}, kv.tokens, kv.data)
        with pytest.raises(KVMismatchError, match="type_k 'q8_0' != 'f16'"):
            other.submit(GenerationRequest(prompt, GREEDY, kv=forged), Timeline())
    finally:
        other.close()


def test_a_forced_call_continues_the_same_after_a_kv_snapshot(
    runtime: LlamaCppRuntime, smollm2_path: Path
) -> None:
    """Tools under `required`, greedy and seeded: the reply another engine generates from a KV
    snapshot of the prompt (without its last token, or whole with the logits after it) is the
    local reply token for token — its forced opening prefilled after the imported cells as it
    is after a prompt prefilled here, never sampled in its place (the split reply then began
    `{\n  "tool_calls"` and went on to other calls)."""
    import json as _json

    from edgebox.runtimes.tool_format import GENERIC, ToolConstraint

    tools = ToolConstraint(
        GENERIC, (("get_weather", _json.dumps(SCHEMA)), ("get_time", "{}")), False, True
    )
    prompt = runtime.tokenize(
        runtime.render_chat(
            [{"role": "user", "content": "Weather in Oslo for 3 days, and the time?"}]
        )
    )
    snapshots = []
    for tokens in (prompt[:-1], prompt):
        exported, _ = submit(runtime, GenerationRequest(tokens, export_kv=True))
        snapshots.append(exported.wait().kv)
    other = LlamaCppRuntime(
        smollm2_path, name="other", config=EngineConfig(n_ctx=2304, parallel=4, n_threads=2)
    )
    try:
        for sampling in (
            SamplingParams(temperature=0.0, tools=tools),
            SamplingParams(temperature=0.8, seed=4, tools=tools),
        ):
            local, _ = submit(runtime, GenerationRequest(prompt, sampling, max_tokens=60))
            local.wait()
            assert runtime.detokenize(local.ids).startswith('{"tool_calls": [{"name": "')
            for kv in snapshots:
                split, _ = submit(other, GenerationRequest(prompt, sampling, max_tokens=60, kv=kv))
                assert split.wait().cached_tokens == len(kv.tokens)
                assert runtime.detokenize(split.ids) == runtime.detokenize(local.ids)
                assert split.ids == local.ids
    finally:
        other.close()


SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}, "days": {"type": "integer"}},
    "required": ["city", "days"],
}
AGAIN_CASES = {
    "greedy": SamplingParams(temperature=0.0),
    "logprobs": SamplingParams(temperature=0.0, logprobs=3),
    "ignore_eos": SamplingParams(temperature=0.0, ignore_eos=True),
    "seeded": SamplingParams(temperature=0.9, seed=7, top_k=40, top_p=0.9, min_p=0.05),
    "seeded_logprobs": SamplingParams(temperature=1.2, seed=5, logprobs=2),
    "schema": SamplingParams(temperature=0.0, json_schema=SCHEMA),
    "schema_seeded": SamplingParams(temperature=1.0, seed=3, json_schema=SCHEMA),
    "bias": SamplingParams(temperature=0.0, logit_bias=((28, 5.0),)),
    "penalties": SamplingParams(temperature=0.0, repeat_penalty=1.5, frequency_penalty=0.5),
    "penalties_seeded": SamplingParams(temperature=0.7, seed=9, presence_penalty=0.8),
}


@pytest.mark.parametrize("case", sorted(AGAIN_CASES))
def test_the_same_prompt_again_starts_from_the_kept_logits_and_matches(
    runtime: LlamaCppRuntime, case: str
) -> None:
    """The first run samples after decoding the prompt's last chunk; the same prompt again
    samples its first token from the logits the slot kept (greedy argmax, or the chain applied
    to them and told its choice): the same tokens, log-probabilities and stop, for every
    sampling option that reads the chain's state."""
    sampling = AGAIN_CASES[case]
    prompt = runtime.tokenize(
        runtime.render_chat([{"role": "user", "content": f"{case}: weather in Oslo for 3 days?"}])
    )
    runs = []
    for _ in range(2):
        timeline = Timeline()
        events: list[TokenEvent] = []

        def sink(event: Event, timeline: Timeline = timeline, events: list = events) -> None:
            if isinstance(event, TokenEvent):
                events.append(event)
            timeline(event)

        runtime.submit(GenerationRequest(prompt, sampling, max_tokens=16, stop=["\n\n"]), sink)
        runs.append((timeline.wait(), events))
    (first, first_events), (again, again_events) = runs
    assert first.cached_tokens < len(prompt) and again.cached_tokens == len(prompt)
    assert [e.token_id for e in again_events] == [e.token_id for e in first_events]
    assert [e.text for e in again_events] == [e.text for e in first_events]
    assert [e.logprob for e in again_events] == [e.logprob for e in first_events]
    assert [e.top_logprobs for e in again_events] == [e.top_logprobs for e in first_events]
    assert (again.reason, again.stop_sequence) == (first.reason, first.stop_sequence)


def test_kept_logits_go_with_the_cells_they_follow(runtime: LlamaCppRuntime) -> None:
    """A shorter prompt sharing the slot trims the cells after it, and the logits kept after
    the longer prompt go with them: that prompt again is decoded, never given stale logits."""
    prompt = runtime.tokenize(
        runtime.render_chat([{"role": "user", "content": "Kept logits: name a lake in Chile."}])
    )
    runs = {}
    for name, tokens in (("whole", prompt), ("again", prompt), ("short", prompt[:-3])):
        timeline, _ = submit(runtime, GenerationRequest(tokens, GREEDY, max_tokens=4))
        runs[name] = timeline.wait().cached_tokens
    timeline, _ = submit(runtime, GenerationRequest(prompt, GREEDY, max_tokens=4))
    after = timeline.wait().cached_tokens
    assert runs["again"] == len(prompt)  # the kept logits, with the cells they follow
    assert runs["short"] == len(prompt) - 4  # the shorter prompt's last token is decoded
    assert after < len(prompt)  # decoded on its cells, not given the longer prompt's logits


def test_auto_parallel_sizes_slots_from_kv_and_memory(smollm2_path: Path) -> None:
    gib = 1 << 30
    assert auto_parallel(23_040, 4096, 16 * gib) == 8  # small model: capped at 8
    assert auto_parallel(23_040, 4096, 1 * gib) == 2  # 94 MB per slot, 256 MiB budget
    assert auto_parallel(500_000, 8192, 1 * gib) == 1  # never below one slot
    rt = LlamaCppRuntime(
        smollm2_path, name="auto", config=EngineConfig(n_ctx=512, parallel=0, n_threads=2)
    )
    try:
        expected = auto_parallel(
            rt.model.kv_bytes_per_token(), 512, psutil.virtual_memory().available
        )
        assert rt.stats().slots == expected >= 1
    finally:
        rt.close()


def test_conversations_sharing_only_the_template_head_keep_their_own_slots(
    runtime: LlamaCppRuntime,
) -> None:
    """Three agent conversations take turns; they share only the chat template's first tokens.
    Each must come back to its own cached history, not to a slot another one took over."""
    head = runtime.tokenize("<|im_start|>system\n")
    prompts = {c: head + prose_tokens(runtime, 200, f"conversation {c}") for c in "abc"}
    for prompt in prompts.values():
        submit(runtime, GenerationRequest(prompt, GREEDY, 1))[0].wait()
    for c, prompt in prompts.items():
        longer = prompt + prose_tokens(runtime, 30, f"turn two of {c}")
        finish = submit(runtime, GenerationRequest(longer, GREEDY, 1))[0].wait()
        assert finish.cached_tokens == len(prompt), f"conversation {c} recomputed its history"


def test_a_slot_sharing_a_trivial_prefix_is_no_match() -> None:
    used = Slot(seq_id=0, cached=[1, 2, 3, 4, 50, 51], last_used=5.0)
    empty = Slot(seq_id=1)
    older = Slot(seq_id=2, cached=[9, 9], last_used=1.0)
    prompt = [1, 2, 3, 4, *range(100, 200)]
    assert choose_slot([used, older, empty], prompt) is empty
    assert choose_slot([used, older], prompt) is older
    assert choose_slot([used, empty], [1, 2, 3, 4, 50, 7]) is used  # most of it: a match


def test_a_new_sequence_takes_a_slot_next_to_the_busy_ones() -> None:
    """llama.cpp decodes sequences together only where their ids run consecutively, so a
    sequence no slot holds a prefix of goes next to the busy ones, even over an empty slot; it
    fills a gap between two runs first. A prefix a slot holds still wins."""
    cached = Slot(seq_id=1, cached=[9, 9, 9], last_used=9.0)
    empty = Slot(seq_id=5)
    prompt = list(range(100, 140))
    assert choose_slot([cached, empty], prompt, busy=[0]) is cached
    assert choose_slot([cached, empty], prompt) is empty  # nothing busy: the empty one
    gap, edge = Slot(seq_id=2), Slot(seq_id=5)
    assert choose_slot([edge, gap], prompt, busy=[0, 1, 3, 4]) is gap  # joins two runs
    holder = Slot(seq_id=6, cached=prompt[:30], last_used=1.0)
    assert choose_slot([cached, holder], prompt, busy=[0]) is holder
    assert runs_with([0, 1, 6], 7) == 2 and runs_with([0, 2], 1) == 1 and runs_with([], 3) == 1


def test_a_batch_lists_its_sequences_in_id_order() -> None:
    """A step's parts (decode tokens first, then prompt chunks) go into the batch by sequence
    id, so a prompt chunk between decoding sequences does not split their ubatch."""
    import llama_cpp

    batch = llama_cpp.llama_batch_init(16, 0, 1)
    try:
        arrays = BatchArrays(batch, 16)
        slots = [Slot(seq_id=i) for i in range(4)]
        parts = [
            Part(slots[0], 10, [7], logits=True),
            Part(slots[1], 12, [8], logits=True),
            Part(slots[3], 11, [9], logits=True),
            Part(slots[2], 0, [1, 2, 3], logits=True),
        ]
        rows = arrays.fill(parts)
        assert [batch.seq_id[i][0] for i in range(batch.n_tokens)] == [0, 1, 2, 2, 2, 3]
        assert [batch.token[i] for i in range(batch.n_tokens)] == [7, 8, 1, 2, 3, 9]
        assert {part.slot.seq_id: row for part, row in rows} == {0: 0, 1: 1, 2: 4, 3: 5}
    finally:
        llama_cpp.llama_batch_free(batch)


def test_concurrent_requests_run_on_consecutive_slots(smollm2_path: Path) -> None:
    """With the slots' caches aged out of id order (two conversations came back), four new
    requests at once take consecutive slots rather than the four least recently used."""
    rt = LlamaCppRuntime(
        smollm2_path,
        name="smollm2",
        config=EngineConfig(n_ctx=256, parallel=8, n_threads=2),
    )
    try:
        prompts = [prose_tokens(rt, 40, f"conversation {i}") for i in range(8)]
        for prompt in prompts:  # slots 0-7, in that order
            submit(rt, GenerationRequest(prompt, GREEDY, 1))[0].wait()
        for i in (1, 3):  # these two come back: the least recently used are now 0, 2, 4, 5
            again = prompts[i] + prose_tokens(rt, 8, f"turn two {i}")
            submit(rt, GenerationRequest(again, GREEDY, 1))[0].wait()
        fresh = [prose_tokens(rt, 40, f"new request {i}") for i in range(4)]
        with rt.engine._cond:  # all four are placed in one admission
            long = SamplingParams(temperature=0.0, ignore_eos=True)
            timelines = [submit(rt, GenerationRequest(p, long, 48))[0] for p in fresh]
        deadline = time.monotonic() + 30
        while True:
            with rt.engine._cond:
                busy = sorted(s.seq_id for s in rt.engine._slots if s.job is not None)
            if len(busy) == 4:
                break
            assert time.monotonic() < deadline, busy
            time.sleep(0.005)
        assert busy == list(range(busy[0], busy[0] + 4)), busy
        for timeline in timelines:
            assert timeline.wait().reason == "length"
    finally:
        rt.close()


def _busy(seq_id: int, cells: int, *, given: bool = False) -> Slot:
    """A slot decoding a request: only what `gap_move` reads of the job."""
    job = types.SimpleNamespace(given_logits=object() if given else None, probe=False)
    return Slot(seq_id=seq_id, cached=[7] * cells, job=job)  # type: ignore[arg-type]


def test_a_split_run_is_joined_by_the_cheapest_exchange() -> None:
    """Busy 0, 2, 3 with the ended request's cache in 1: of the exchanges that join them,
    the one moving the fewest cells (a free slot's cache moves too); a sequence awaiting its
    kept logits stays; one run is left as it is, and so are sequences too long to move."""
    slots = [_busy(0, 50), Slot(1, cached=[5] * 44), _busy(2, 80), _busy(3, 90)]
    slots += [Slot(i) for i in range(4, 8)]
    assert gap_move(slots, 4096) == (slots[0], slots[4])  # 50 cells; 0 to 1 moves 94, 3 to 1 134
    slots[0] = _busy(0, 500)
    assert gap_move(slots, 4096) == (slots[3], slots[1])  # now 134 against 500
    slots[3] = _busy(3, 90, given=True)
    assert gap_move(slots, 4096) == (slots[0], slots[4])  # 3 stays: 0 goes after it
    assert gap_move([_busy(0, 5, given=True), Slot(1), _busy(2, 5, given=True)], 4096) is None
    assert gap_move([_busy(0, 5), _busy(1, 5), Slot(2), Slot(3, cached=[1])], 4096) is None
    # a gap of two slots closes in two moves, each bringing the runs closer
    slots = [_busy(0, 5), _busy(1, 5), Slot(2), Slot(3), _busy(4, 5), _busy(5, 5)]
    slots += [Slot(6), Slot(7)]
    for _ in range(2):
        move = gap_move(slots, 4096)
        assert move is not None
        swap_contents(*move)
    busy = sorted(s.seq_id for s in slots if s.job is not None)
    assert busy == list(range(busy[0], busy[0] + 4)), busy
    assert gap_move(slots, 4096) is None
    # a sliding-window model's saved state holds only the window: longer sequences stay
    slots = [_busy(0, 600), Slot(1, cached=[5] * 44), _busy(2, 80), Slot(3, cached=[5] * 700)]
    assert gap_move(slots, 512) == (slots[2], slots[1])
    assert gap_move([*slots[:2], _busy(2, 513), slots[3]], 512) is None


def test_a_move_must_cost_less_than_the_split_steps_it_saves() -> None:
    """At 20 us a cell and 20 ms a step (a quarter of it saved a step): 8,000 cells move for
    a reply with 64 or more tokens to go, not for one with 10 left; 100 cells move either way;
    nothing moves before a decode step was timed."""

    def busy(cells: int, max_tokens: int | None, generated: int) -> Slot:
        request = types.SimpleNamespace(max_tokens=max_tokens)
        job = types.SimpleNamespace(request=request, generated=generated)
        return Slot(seq_id=0, cached=[7] * cells, job=job)  # type: ignore[arg-type]

    free = Slot(seq_id=1)
    assert worth_moving(busy(8000, None, 0), free, 20e-6, 0.02, 16384)
    assert worth_moving(busy(8000, 300, 236), free, 20e-6, 0.02, 16384)
    assert not worth_moving(busy(8000, 300, 290), free, 20e-6, 0.02, 16384)
    assert not worth_moving(busy(8000, None, 0), free, 20e-6, 0.02, 8010)  # the context ends
    assert worth_moving(busy(100, 300, 290), free, 20e-6, 0.02, 16384)
    assert not worth_moving(busy(100, 300, 290), Slot(1, cached=[1] * 3000), 20e-6, 0.02, 16384)
    assert not worth_moving(busy(100, None, 0), free, 20e-6, 0.0, 16384)


def test_a_run_split_by_an_ended_request_is_joined_again(smollm2_path: Path) -> None:
    """Three streams on slots 0-2; the middle one ends first. The other two move back into one
    run of consecutive slots (one ubatch a step, not two) and go on exactly as they run alone;
    the ended request's cache is kept, in whichever slot it went to."""
    long = SamplingParams(temperature=0.0, ignore_eos=True)
    config = EngineConfig(n_ctx=256, parallel=8, n_threads=2)
    rt = LlamaCppRuntime(smollm2_path, name="smollm2", config=config)
    solo = LlamaCppRuntime(smollm2_path, name="solo", config=EngineConfig(n_ctx=256, parallel=1))
    try:
        prompts = [prose_tokens(rt, 40, f"stream {i}") for i in range(3)]
        alone = {}
        for i in (0, 2):
            timeline, _ = submit(solo, GenerationRequest(prompts[i], long, 64))
            timeline.wait()
            alone[i] = timeline.ids
        with rt.engine._cond:  # placed in one admission: slots 0, 1, 2
            timelines = [
                submit(rt, GenerationRequest(p, long, n))[0]
                for p, n in zip(prompts, (64, 4, 64), strict=True)
            ]
        timelines[1].wait()
        deadline = time.monotonic() + 30
        while True:
            with rt.engine._cond:
                busy = sorted(s.seq_id for s in rt.engine._slots if s.job is not None)
                kept = [s.seq_id for s in rt.engine._slots if s.cached[:40] == prompts[1]]
            if len(busy) == 2 and busy[1] == busy[0] + 1:
                break
            assert len(busy) == 2 and time.monotonic() < deadline, busy  # still split
            time.sleep(0.002)
        assert len(kept) == 1 and kept[0] not in busy
        for i in (0, 2):
            assert timelines[i].wait().reason == "length"
            assert timelines[i].ids == alone[i]
    finally:
        rt.close()
        solo.close()


def test_a_request_taking_a_cached_slot_beside_the_busy_ones_evicts_the_oldest_cache(
    smollm2_path: Path,
) -> None:
    """Conversations A then D leave their caches in slots 0 and 1; two streams run on 2 and
    3. A new conversation takes slot 1, next to them, but the cache evicted is A's, the least
    recently used: D's moves to slot 0, and D's next turn finds it there."""
    long = SamplingParams(temperature=0.0, ignore_eos=True)
    rt = LlamaCppRuntime(
        smollm2_path, name="smollm2", config=EngineConfig(n_ctx=256, parallel=4, n_threads=2)
    )
    try:
        a, d, b, c, f = (prose_tokens(rt, 40, f"conversation {x}") for x in "adbcf")
        for prompt in (a, d):  # slots 0 and 1
            submit(rt, GenerationRequest(prompt, GREEDY, 1))[0].wait()
        with rt.engine._cond:  # slots 2 and 3
            running = [submit(rt, GenerationRequest(p, long, 64))[0] for p in (b, c)]
        new, _ = submit(rt, GenerationRequest(f, GREEDY, 1))
        new.wait()
        with rt.engine._cond:
            held = {s.seq_id: s.cached[:40] for s in rt.engine._slots}
        assert held[0] == d and held[1] == f, "D's cache was evicted, or F sat apart"
        again, _ = submit(rt, GenerationRequest(d + prose_tokens(rt, 8, "turn two"), GREEDY, 1))
        assert again.wait().cached_tokens >= 40
        for timeline in running:
            assert timeline.wait().reason == "length"
    finally:
        rt.close()


def test_a_sequence_released_at_the_next_step_is_not_moved(
    smollm2_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Streams on slots 0-2; as the middle one ends, the first is cancelled (its client gone
    in the same step). The next step releases the first: moving its cells into slot 3 next to
    the third would be a copy thrown away, and the third alone is one run already."""
    moves: list[tuple[object, ...]] = []
    real = moves_module.swap_sequences

    def counted(*args: object) -> tuple[bool, bool]:
        moves.append(args[2:])
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(moves_module, "swap_sequences", counted)
    long = SamplingParams(temperature=0.0, ignore_eos=True)
    config = EngineConfig(n_ctx=256, parallel=4, n_threads=2)
    rt = LlamaCppRuntime(smollm2_path, name="smollm2", config=config)
    try:
        prompts = [prose_tokens(rt, 40, f"stream {i}") for i in range(3)]
        timelines = [Timeline() for _ in prompts]
        handles: list[object] = []

        def middle(event: Event) -> None:  # on the engine thread, in the step it ends
            timelines[1](event)
            if isinstance(event, FinishEvent):
                handles[0].cancel()  # type: ignore[attr-defined]

        with rt.engine._cond:  # placed in one admission: slots 0, 1, 2
            for i, (p, n) in enumerate(zip(prompts, (64, 4, 64), strict=True)):
                sink = middle if i == 1 else timelines[i]
                handles.append(rt.submit(GenerationRequest(p, long, n), sink))
        assert timelines[0].wait().reason == "cancelled"
        assert timelines[2].wait().reason == "length"
        assert moves == []
    finally:
        rt.close()


def test_prefix_hashes_are_read_between_exchanges_not_during_one(
    runtime: LlamaCppRuntime,
) -> None:
    """/health reads the slots' block hashes from another thread while the engine thread may
    be exchanging two slots' contents a field at a time under its lock (`swap_contents`): an
    imported slot's flag already gone and its hashes not yet must not reach /health (a
    client's snapshot is never advertised), so it waits for the lock."""
    engine = runtime.engine
    secret = BlockChain()
    secret.reset(list(range(100, 100 + 2 * BLOCK_TOKENS)))
    slot = engine._slots[0]
    out: list[dict[str, object]] = []
    reader = threading.Thread(target=lambda: out.append(engine.prefix_cache()))
    with engine._cond:
        held = slot.imported, slot.blocks
        slot.imported, slot.blocks = False, secret  # mid-exchange: flag moved, hashes not yet
        reader.start()
        reader.join(0.3)
        waited = reader.is_alive()
        slot.imported, slot.blocks = True, secret  # the exchange done
    reader.join(10)
    with engine._cond:
        slot.imported, slot.blocks = held
    assert waited and out
    assert not set(secret.hashes) & set(out[0]["prefix_blocks"])  # type: ignore[arg-type]
    # a released imported slot is cleared outside the lock: its hashes go before its flag
    flags: list[bool] = []

    class Watched(BlockChain):
        def truncate(self, n_tokens: int) -> None:
            flags.append(cleared.imported)
            super().truncate(n_tokens)

    cleared = Slot(0, cached=list(range(64)), imported=True, blocks=Watched())
    cleared.clear()
    assert flags == [True] and not cleared.imported


def test_a_forced_call_header_is_prefilled_not_decoded(runtime: LlamaCppRuntime) -> None:
    """`required` with one function: the call's header, which the grammar allows only one way,
    goes into the prompt's step and comes out with the first sampled token (one decode step for
    all of it), then the call goes on to the same valid JSON; with logprobs (no jump) every
    token is decoded. Fewer steps, the same call's shape."""
    import json as _json

    from edgebox.runtimes.llamacpp.tool_grammar import call_heads, forced_after
    from edgebox.runtimes.tool_format import GENERIC, ToolConstraint

    schema = '{"type":"object","properties":{"path":{"type":"string","enum":["a.py","b.py"]}},"required":["path"]}'
    tools = ToolConstraint(GENERIC, (("read_file", schema),), lazy=False, parallel=False)
    header = forced_after(tools, call_heads(tools) or (), "")
    assert header == '{"tool_calls": [{"name": "read_file", "arguments": {"path":'
    prompt = runtime.tokenize(
        runtime.render_chat([{"role": "user", "content": "Read a file of the repository."}])
    )
    replies = {}
    for mode, logprobs in (("jump", None), ("decoded", 1)):
        sampling = SamplingParams(temperature=0.0, tools=tools, logprobs=logprobs)
        before = runtime.stats().steps_total
        timeline, _ = submit(runtime, GenerationRequest(prompt, sampling, max_tokens=60))
        finish = timeline.wait()
        steps = runtime.stats().steps_total - before
        text = runtime.detokenize(timeline.ids)
        replies[mode] = (text, steps, finish.completion_tokens, timeline.tokens)
    text, steps, completion, stamps = replies["jump"]
    assert text.startswith(header)
    call = _json.loads(text)["tool_calls"][0]
    assert call["name"] == "read_file" and call["arguments"]["path"] in ("a.py", "b.py")
    n_header = len(runtime.engine.model.tokenize(header, add_special=False, parse_special=False))
    assert completion == len(stamps) >= n_header + 2
    # The header's tokens all arrive with the first sampled one (same step), not one a step.
    assert stamps[n_header] - stamps[0] < 0.005
    assert steps <= completion - n_header + 1
    decoded_text, decoded_steps, decoded_completion, _ = replies["decoded"]
    assert _json.loads(decoded_text)["tool_calls"][0]["name"] == "read_file"
    assert decoded_steps >= decoded_completion


@pytest.mark.parametrize("choice", ["required", "auto"])
def test_call_heads_are_jumped_over_where_the_model_has_no_choice(
    runtime: LlamaCppRuntime, choice: str
) -> None:
    """Several functions: under `required` the opening up to the name is prefilled, and once
    the model's name is told apart from the others the rest of it and `", "arguments":` come
    in one step; under `auto` (a lazy grammar) the head after the model's own marker does. The
    reply is the one decoding every token gives (with logprobs, which never jump), in fewer
    steps, and its head tokenizes as the next turn's prompt will (the prefix cache matches);
    where the model would have spaced it otherwise, the same call in the spacing past calls
    are rendered with."""
    import json as _json

    from edgebox.runtimes.tool_format import (
        GENERIC,
        ToolConstraint,
        generic_instructions,
        generic_messages,
    )

    schema = '{"type":"object","properties":{"path":{"type":"string"}},"required":["path"]}'
    names = ("read_file", "read_dir", "write_file")
    offered = [{"name": n, "parameters": _json.loads(schema)} for n in names]
    ask = "Read src/main.py. Reply with only this JSON: " + _json.dumps(
        {"tool_calls": [{"name": "read_file", "arguments": {"path": "src/main.py"}}]}
    )
    messages = generic_messages(
        [{"role": "user", "content": ask}], generic_instructions(offered, choice, False, None)
    )
    prompt = runtime.tokenize(runtime.render_chat(messages))
    tools = ToolConstraint(GENERIC, tuple((n, schema) for n in names), choice == "auto", False)
    model = runtime.engine.model
    # the model this small does not start a call by itself under auto: its marker is favoured
    marker = model.tokenize('{"tool_calls":', add_special=False, parse_special=False)
    bias = tuple((t, 30.0) for t in marker) if choice == "auto" else ()
    replies = {}
    for mode, logprobs in (("jump", None), ("decoded", 1)):
        sampling = SamplingParams(temperature=0.0, tools=tools, logprobs=logprobs, logit_bias=bias)
        before = runtime.stats().steps_total
        timeline, _ = submit(runtime, GenerationRequest(prompt, sampling, max_tokens=40))
        finish = timeline.wait()
        steps = runtime.stats().steps_total - before
        replies[mode] = (timeline.ids, steps, finish.completion_tokens)
    ids, steps, completion = replies["jump"]
    decoded_ids, decoded_steps, decoded_completion = replies["decoded"]
    text = runtime.detokenize(ids)
    if choice == "required":
        assert ids == decoded_ids and completion == decoded_completion == len(ids)
    else:  # the model favoured `{"` over ` {"`: the jump writes the spacing past calls have
        decoded = runtime.detokenize(decoded_ids)
        assert _json.loads(text) == _json.loads(decoded) and text != decoded
    assert completion == len(ids)
    assert text.startswith('{"tool_calls": [{"name": "read_file", "arguments": {"path":')
    head = text[: text.index('{"path":') + len('{"path":')]
    head_ids = model.tokenize(head, add_special=False, parse_special=False)
    assert ids[: len(head_ids)] == head_ids
    assert decoded_steps >= decoded_completion
    # the opening's 10 tokens (required) or the 5 after the marker (auto), and the 4 after
    # the name, are not decoded one a step
    assert steps <= completion - (13 if choice == "required" else 8)


def test_jumped_tokens_and_a_full_prefill_chunk_share_one_batch(smollm2_path: Path) -> None:
    """A prefill chunk as large as the batch while a tool call jumps forward: the decoding
    slot's several tokens count against the batch, so a step never lays out more tokens than
    the batch holds (which wrote past llama.cpp's batch arrays and failed every request)."""
    from edgebox.runtimes.tool_format import GENERIC, ToolConstraint

    rt = LlamaCppRuntime(
        smollm2_path,
        name="smollm2-full-chunk",
        config=EngineConfig(n_ctx=4096, parallel=2, n_threads=2, prefill_chunk=512),
    )
    try:
        schema = '{"type":"object","properties":{"path":{"type":"string"}},"required":["path"]}'
        names = ("read_file", "read_dir", "write_file")
        tools = ToolConstraint(GENERIC, tuple((n, schema) for n in names), False, False)
        prompt = rt.tokenize(rt.render_chat([{"role": "user", "content": "Read src/main.py."}]))
        sampling = SamplingParams(temperature=0.0, tools=tools)
        call, _ = submit(rt, GenerationRequest(prompt, sampling, max_tokens=24))
        long, _ = submit(rt, GenerationRequest(prose_tokens(rt, 3000, "full"), GREEDY, 2))
        assert long.wait().reason == "length", long.finish
        assert call.wait().reason == "length", call.finish
        assert rt.detokenize(call.ids).startswith('{"tool_calls": [{"name": "')
    finally:
        rt.close()


def test_a_reply_ends_with_its_last_call_without_a_step_for_the_end_token(
    runtime: LlamaCppRuntime,
) -> None:
    """Once a forced call's grammar is complete nothing but the end of the reply may follow:
    the request stops there, without decoding the call's last token (nor the tail jumped after
    its arguments, `]}`) to sample the end (one step a call). Under `auto` (a lazy grammar allows anything before its trigger) it does
    not, and the model's own end-of-generation token ends the reply."""
    import json as _json

    from edgebox.runtimes.tool_format import (
        GENERIC,
        ToolConstraint,
        generic_instructions,
        generic_messages,
    )

    schema = '{"type":"object","properties":{"path":{"type":"string","enum":["a.py"]}},"required":["path"]}'
    offered = [{"name": "read_file", "parameters": _json.loads(schema)}]
    ask = "Read a.py. Reply with only this JSON: " + _json.dumps(
        {"tool_calls": [{"name": "read_file", "arguments": {"path": "a.py"}}]}
    )
    messages = generic_messages(
        [{"role": "user", "content": ask}], generic_instructions(offered, "auto", False, None)
    )
    prompt = runtime.tokenize(runtime.render_chat(messages))
    # the model this small does not start a call by itself under auto: its marker is favoured
    marker = runtime.engine.model.tokenize('{"tool_calls":', add_special=False, parse_special=False)
    for lazy in (False, True):
        tools = ToolConstraint(GENERIC, (("read_file", schema),), lazy=lazy, parallel=False)
        bias = tuple((t, 30.0) for t in marker) if lazy else ()
        sampling = SamplingParams(temperature=0.0, tools=tools, logit_bias=bias)
        timeline, _ = submit(runtime, GenerationRequest(prompt, sampling, max_tokens=60))
        finish = timeline.wait()
        text = runtime.detokenize(timeline.ids)
        assert finish.reason == "stop", text
        assert _json.loads(text)["tool_calls"][0]["arguments"] == {"path": "a.py"}
        held = max(
            (s.cached for s in runtime.engine._slots if s.cached[: len(prompt)] == prompt),
            key=len,
        )
        assert held == (prompt + timeline.ids)[: len(held)]
        if lazy:  # the model's end token was sampled after the whole reply was decoded
            assert len(held) == len(prompt) + len(timeline.ids)
        else:  # never decoded: the reply's last sampled token and the call's tail after it
            assert (
                len(prompt) + len(timeline.ids) - 4 <= len(held) < len(prompt) + len(timeline.ids)
            )


def _steps_and_ids(
    runtime: LlamaCppRuntime, prompt: list[int], sampling: SamplingParams, max_tokens: int = 60
) -> tuple[list[int], int, FinishEvent]:
    before = runtime.stats().steps_total
    timeline, _ = submit(runtime, GenerationRequest(prompt, sampling, max_tokens=max_tokens))
    finish = timeline.wait()
    return timeline.ids, runtime.stats().steps_total - before, finish


@pytest.mark.parametrize("n_functions", [1, 3])
def test_a_tagged_call_is_jumped_over_from_its_opening_tag(
    runtime: LlamaCppRuntime, n_functions: int
) -> None:
    """The Hermes format (`<tool_call>` … `</tool_call>`, plain text in SmolLM2's vocabulary)
    under `required`: its opening tag and head are jumped over as the call renders — with one
    function through the first key, with three up to the name and then the rest of the head —
    and so is its tail once the arguments close; the reply is the one decoding every token
    gives (with logprobs, which never jump), in fewer steps."""
    import json as _json

    from edgebox.runtimes.tool_format import HERMES, ToolConstraint, calls_text

    schema = '{"type":"object","properties":{"path":{"type":"string"}},"required":["path"]}'
    names = ("read_file", "read_dir", "write_file")[:n_functions]
    tools = ToolConstraint(HERMES, tuple((n, schema) for n in names), lazy=False, parallel=False)

    def call(path: str) -> str:
        return calls_text(HERMES, [{"name": "read_file", "arguments": _json.dumps({"path": path})}])

    messages = [
        {"role": "user", "content": "Read a.py."},
        {"role": "assistant", "content": call("a.py")},
        {"role": "user", "content": "Read src/main.py."},
    ]
    prompt = runtime.tokenize(runtime.render_chat(messages))
    ids, steps, finish = _steps_and_ids(
        runtime, prompt, SamplingParams(temperature=0.0, tools=tools)
    )
    decoded, decoded_steps, _ = _steps_and_ids(
        runtime, prompt, SamplingParams(temperature=0.0, tools=tools, logprobs=1)
    )
    assert runtime.detokenize(ids) == call("src/main.py")
    assert ids == decoded and finish.completion_tokens == len(ids)
    assert decoded_steps >= len(decoded) - 1
    model = runtime.engine.model
    head = '<tool_call>\n{"name": "read_file", "arguments": {"path":'
    n_head = len(model.tokenize(head, add_special=False, parse_special=False))
    n_tail = len(model.tokenize("}\n</tool_call>", add_special=False, parse_special=False))
    # one function: the whole head is prefilled with the prompt; three: the opening up to the
    # name, then the rest of the name and `", "arguments": {"path":` with one sampled token;
    # and the call's tail after its arguments (`}\n</tool_call>`) with the token closing them
    assert steps <= len(ids) - n_head - n_tail + (1 if n_functions == 1 else 4)


def test_a_tag_the_vocabulary_holds_as_one_token_is_written_by_the_model(
    runtime: LlamaCppRuntime,
) -> None:
    """A format whose tag is one control token of the vocabulary (as Mistral's `[TOOL_CALLS]`
    is; here SmolLM2's `<filename>`): a jump never writes it as plain-text tokens. The
    model samples the tag (favoured here) as its one token, and the head after it is jumped
    over: the same reply as decoding every token, its first token the tag's, in fewer steps."""
    import dataclasses

    from edgebox.runtimes.tool_format import HERMES, ToolConstraint

    tagged = dataclasses.replace(
        HERMES,
        name="tagged",
        marker=("<filename>",),
        call_open=("<filename>",),
        call_close=("<file_sep>",),
    )
    model = runtime.engine.model
    (tag,) = model.tokenize("<filename>", add_special=False, parse_special=True)
    assert len(model.tokenize("<filename>", add_special=False, parse_special=False)) > 1
    schema = '{"type":"object","properties":{"path":{"enum":["src/main.py","a.py"]}},"required":["path"]}'
    tools = ToolConstraint(tagged, (("read_file", schema),), lazy=False, parallel=False)
    prompt = runtime.tokenize(
        runtime.render_chat([{"role": "user", "content": "Read src/main.py."}])
    )
    bias = ((tag, 30.0),)
    ids, steps, _ = _steps_and_ids(
        runtime, prompt, SamplingParams(temperature=0.0, tools=tools, logit_bias=bias)
    )
    decoded, decoded_steps, _ = _steps_and_ids(
        runtime, prompt, SamplingParams(temperature=0.0, tools=tools, logit_bias=bias, logprobs=1)
    )
    assert ids[0] == decoded[0] == tag
    head = model.tokenize('\n{"name": "read_file", "arguments": {"path":', add_special=False)
    assert ids[1 : 1 + len(head)] == head  # jumped over right after the tag, as it renders
    assert runtime.detokenize(ids).startswith('\n{"name": "read_file", "arguments": {"path": "')
    assert steps <= len(ids) - len(head) + 1 < decoded_steps


def _reply(
    runtime: LlamaCppRuntime, prompt: list[int], sampling: SamplingParams, max_tokens: int
) -> tuple[list[int], str]:
    """A request's token ids and its text as the events carry it."""
    ids: list[int] = []
    texts: list[str] = []
    done = threading.Event()

    def sink(event: Event) -> None:
        if isinstance(event, TokenEvent):
            ids.append(event.token_id)
        if isinstance(event, TokenEvent | FinishEvent):
            texts.append(event.text)
        if isinstance(event, FinishEvent):
            done.set()

    runtime.submit(GenerationRequest(prompt, sampling, max_tokens=max_tokens), sink)
    assert done.wait(60)
    return ids, "".join(texts)


def test_a_tag_that_is_a_control_token_is_shown_where_the_call_parser_reads_it(
    runtime: LlamaCppRuntime,
) -> None:
    """Control tokens render to nothing in output; a tool format's tag that is one (as
    Mistral's `[TOOL_CALLS]` is; here SmolLM2's control token `<filename>`) is shown as its
    text, so the call parser finds the call — with jumps and without (logprobs); the same
    token in a reply without tools still renders to nothing."""
    import dataclasses

    from edgebox.runtimes.tool_format import MISTRAL, ToolConstraint
    from edgebox.runtimes.tool_parse import CallStart, ToolCallParser

    tagged = dataclasses.replace(
        MISTRAL, name="tagged", marker=("<filename>",), list_open=("<filename>", "[")
    )
    model = runtime.engine.model
    (tag,) = model.tokenize("<filename>", add_special=False, parse_special=True)
    assert model.piece(tag) == b""  # a control token
    schema = '{"type":"object","properties":{"path":{"enum":["src/main.py","a.py"]}},"required":["path"]}'
    tools = ToolConstraint(tagged, (("read_file", schema),), lazy=False, parallel=False)
    prompt = runtime.tokenize(
        runtime.render_chat([{"role": "user", "content": "Read src/main.py."}])
    )
    bias = ((tag, 30.0),)
    for extra in ({}, {"logprobs": 1}):
        sampling = SamplingParams(temperature=0.0, tools=tools, logit_bias=bias, **extra)
        ids, reply = _reply(runtime, prompt, sampling, 40)
        assert ids[0] == tag and reply.startswith("<filename>"), reply
        parser = ToolCallParser(tagged)
        deltas = parser.feed(reply) + parser.finish()
        assert [d.name for d in deltas if isinstance(d, CallStart)] == ["read_file"], reply
    ids, reply = _reply(runtime, prompt, SamplingParams(temperature=0.0, logit_bias=bias), 3)
    assert ids[0] == tag and "<filename>" not in reply


def test_the_later_calls_of_a_parallel_list_are_jumped_over(runtime: LlamaCppRuntime) -> None:
    """Two calls of one function in the generic envelope: once the model writes the comma
    that starts a second call, its whole head (` {"name": "read_file", "arguments": {"path":`)
    is jumped over as the first call's was. The same reply as decoding every token, with the
    second head's tokens not decoded one a step."""
    import json as _json

    from edgebox.runtimes.tool_format import (
        GENERIC,
        ToolConstraint,
        generic_instructions,
        generic_messages,
    )

    schema = '{"type":"object","properties":{"path":{"type":"string"}},"required":["path"]}'
    tools = ToolConstraint(GENERIC, (("read_file", schema),), lazy=False, parallel=True)
    offered = [{"name": "read_file", "parameters": _json.loads(schema)}]
    calls = [{"name": "read_file", "arguments": {"path": p}} for p in ("a.py", "b.py")]
    ask = "Read a.py and b.py. Reply with only this JSON: " + _json.dumps({"tool_calls": calls})
    messages = generic_messages(
        [{"role": "user", "content": ask}], generic_instructions(offered, "required", True, None)
    )
    prompt = runtime.tokenize(runtime.render_chat(messages))
    ids, steps, finish = _steps_and_ids(
        runtime, prompt, SamplingParams(temperature=0.0, tools=tools), 80
    )
    decoded, _, _ = _steps_and_ids(
        runtime, prompt, SamplingParams(temperature=0.0, tools=tools, logprobs=1), 80
    )
    assert ids == decoded and finish.reason == "stop"
    assert _json.loads(runtime.detokenize(ids)) == {"tool_calls": calls}
    model = runtime.engine.model
    first = '{"tool_calls": [{"name": "read_file", "arguments": {"path":'
    later = ' {"name": "read_file", "arguments": {"path":'
    n_first = len(model.tokenize(first, add_special=False, parse_special=False))
    n_later = len(model.tokenize(later, add_special=False, parse_special=False))
    assert n_later >= 8
    assert steps <= len(ids) - n_first - n_later + 2
