"""Continuous-batching engine: one llama.cpp context, N sequence slots, one scheduler thread.

Each step packs the next token of every decoding sequence plus a bounded chunk of
pending prompt tokens into one `llama_decode`, so a long prompt delays running
streams by at most one chunk. Free slots keep their KV cells, and a new request
goes to the slot whose cached tokens share the longest prefix with its prompt.
"""

from __future__ import annotations

import collections
import ctypes
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import llama_cpp

from edgebox.runtimes.base import (
    BackendError,
    ContextLengthError,
    EventSink,
    FinishEvent,
    FinishReason,
    GenerationRequest,
    QueueFullError,
    RuntimeStats,
    TokenEvent,
)
from edgebox.runtimes.llamacpp.model import LlamaCppModel
from edgebox.runtimes.llamacpp.sampling import build_sampler, free_sampler, token_logprobs
from edgebox.runtimes.text import StopMatcher, TokenTextDecoder

FLASH_ATTN = {
    "auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}


@dataclass(frozen=True)
class EngineConfig:
    n_ctx: int = 4096  # tokens per sequence
    parallel: int = 4  # sequence slots decoded together
    n_threads: int = 0  # 0: all physical cores llama.cpp sees
    prefill_chunk: int = 256  # prompt tokens per step while other streams decode
    max_queue: int = 64  # requests waiting for a slot before 429
    flash_attn: str = "auto"


@dataclass(eq=False)
class _Job:
    request: GenerationRequest
    sink: EventSink
    sampler: ctypes.c_void_p
    matcher: StopMatcher
    submitted: float = field(default_factory=time.monotonic)
    pending: list[int] = field(default_factory=list)  # prompt tokens still to prefill
    cached_tokens: int = 0
    generated: int = 0
    next_token: int | None = None  # sampled, not yet in the KV cache
    cancelled: bool = False
    decoder: TokenTextDecoder = field(default_factory=TokenTextDecoder)

    def cancel(self) -> None:
        self.cancelled = True


@dataclass(eq=False)
class _Slot:
    seq_id: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV cells this seq holds
    job: _Job | None = None
    last_used: float = 0.0


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class LlamaCppEngine:
    def __init__(self, model: LlamaCppModel, config: EngineConfig) -> None:
        self.model = model
        self.config = config
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = config.n_ctx * config.parallel
        params.n_seq_max = config.parallel
        params.n_batch = params.n_ubatch = max(config.prefill_chunk, config.parallel)
        if config.n_threads > 0:
            params.n_threads = params.n_threads_batch = config.n_threads
        params.kv_unified = False  # each sequence attends over its own cells only
        params.swa_full = True  # keeps partial KV removal (prefix reuse) possible on SWA models
        params.flash_attn_type = FLASH_ATTN[config.flash_attn]
        params.no_perf = True
        ctx = llama_cpp.llama_init_from_model(model.ptr, params)
        if not ctx:
            raise BackendError(
                f"could not create a context of {params.n_ctx} tokens; lower --ctx or --parallel"
            )
        self.ctx = ctx
        self.n_ctx_seq = llama_cpp.llama_n_ctx_seq(ctx)
        self.n_batch = params.n_batch
        self.memory = llama_cpp.llama_get_memory(ctx)
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._slots = [_Slot(i) for i in range(config.parallel)]
        self._queue: collections.deque[_Job] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._counters = {"prompt": 0, "cached": 0, "generated": 0}
        self._avg_job_s = 1.0
        self._thread = threading.Thread(target=self._run, name="llamacpp-engine", daemon=True)
        self._thread.start()

    # -- public, any thread ---------------------------------------------------------------

    def submit(self, request: GenerationRequest, sink: EventSink) -> _Job:
        if not request.prompt_tokens:
            raise BackendError("the prompt is empty")
        if len(request.prompt_tokens) >= self.n_ctx_seq:
            raise ContextLengthError(
                f"the prompt is {len(request.prompt_tokens)} tokens; this model's context is "
                f"{self.n_ctx_seq} tokens per request"
            )
        job = _Job(
            request, sink, build_sampler(self.model, request.sampling), StopMatcher(request.stop)
        )
        with self._cond:
            if len(self._queue) >= self.config.max_queue:
                free_sampler(job.sampler)
                retry = max(1.0, self._avg_job_s * (len(self._queue) + 1) / len(self._slots))
                raise QueueFullError(
                    f"the node's queue is full ({self.config.max_queue} waiting)", retry
                )
            self._queue.append(job)
            self._cond.notify()
        return job

    def stats(self) -> RuntimeStats:
        with self._cond:
            return RuntimeStats(
                slots=len(self._slots),
                running=sum(1 for s in self._slots if s.job),
                queued=len(self._queue),
                prompt_tokens_total=self._counters["prompt"],
                cached_tokens_total=self._counters["cached"],
                generated_tokens_total=self._counters["generated"],
            )

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout=30)
        if self.ctx:
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self.ctx)
            self.ctx = None

    # -- scheduler thread -----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closing and not self._queue and not self._busy():
                    self._cond.wait()
                if self._closing:
                    for job in [*self._queue, *(s.job for s in self._slots if s.job)]:
                        self._finish_job(job, "cancelled", error="the node is shutting down")
                    self._queue.clear()
                    return
                self._admit()
            try:
                self._step()
            except Exception as exc:  # a failed step must not kill the engine thread
                for slot in self._slots:
                    if slot.job:
                        self._release(slot, "error", error=f"generation failed: {exc}")
                        llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, -1, -1)
                        slot.cached = []

    def _busy(self) -> bool:
        return any(s.job for s in self._slots)

    def _admit(self) -> None:
        """Move queued jobs into free slots, each to the slot sharing its longest prefix."""
        while self._queue:
            job = self._queue[0]
            if job.cancelled:
                self._queue.popleft()
                self._finish_job(job, "cancelled")
                continue
            free = [s for s in self._slots if s.job is None]
            if not free:
                return
            self._queue.popleft()
            prompt = list(job.request.prompt_tokens)
            slot = max(free, key=lambda s: (common_prefix_len(s.cached, prompt), -s.last_used))
            keep = min(common_prefix_len(slot.cached, prompt), len(prompt) - 1)
            if not llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, keep, -1):
                llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, -1, -1)
                keep = 0
            slot.cached = prompt[:keep]
            job.pending = prompt[keep:]
            job.cached_tokens = keep
            self._counters["prompt"] += len(prompt)
            self._counters["cached"] += keep
            slot.job = job

    def _step(self) -> None:
        for slot in self._slots:
            if slot.job and slot.job.cancelled:
                self._release(slot, "cancelled")
        batch = self._batch
        n = 0
        outputs: list[tuple[_Slot, int]] = []  # slot, index of its logits row in the batch

        def add(slot: _Slot, token: int, logits: bool) -> None:
            nonlocal n
            batch.token[n] = token
            batch.pos[n] = len(slot.cached)
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = slot.seq_id
            batch.logits[n] = logits
            slot.cached.append(token)
            if logits:
                outputs.append((slot, n))
            n += 1

        decoding = [s for s in self._slots if s.job and s.job.next_token is not None]
        for slot in decoding:
            assert slot.job and slot.job.next_token is not None
            add(slot, slot.job.next_token, True)
            slot.job.next_token = None
        budget = (
            self.n_batch - n if not decoding else min(self.config.prefill_chunk, self.n_batch - n)
        )
        for slot in sorted(
            (s for s in self._slots if s.job and s.job.pending),
            key=lambda s: s.job.submitted,  # type: ignore[union-attr]
        ):
            if budget <= 0:
                break
            job = slot.job
            assert job is not None
            chunk, job.pending = job.pending[:budget], job.pending[budget:]
            budget -= len(chunk)
            for i, token in enumerate(chunk):
                add(slot, token, logits=(not job.pending and i == len(chunk) - 1))
        if n == 0:
            return
        batch.n_tokens = n
        rc = llama_cpp.llama_decode(self.ctx, batch)
        if rc != 0:
            raise BackendError(f"llama_decode returned {rc}")
        for slot, index in outputs:
            self._sample(slot, index)

    def _sample(self, slot: _Slot, index: int) -> None:
        job = slot.job
        assert job is not None
        top_n = job.request.sampling.logprobs
        logprob = None
        top: tuple = ()
        token = llama_cpp.llama_sampler_sample(job.sampler, self.ctx, index)
        if top_n is not None:
            logits = llama_cpp.llama_get_logits_ith(self.ctx, index)
            logprob, top = token_logprobs(self.model, logits, token, top_n)
        if self.model.is_eog(token):
            self._release(slot, "stop")
            return
        job.generated += 1
        self._counters["generated"] += 1
        text = job.matcher.feed(job.decoder.feed(self.model.piece(token)))
        job.sink(TokenEvent(token_id=token, text=text, logprob=logprob, top_logprobs=top))
        limit = job.request.max_tokens
        if job.matcher.stopped:
            self._release(slot, "stop")
        elif (limit is not None and job.generated >= limit) or len(
            slot.cached
        ) + 1 >= self.n_ctx_seq:
            self._release(slot, "length")
        else:
            job.next_token = token

    def _release(self, slot: _Slot, reason: FinishReason, error: str | None = None) -> None:
        job = slot.job
        slot.job = None
        slot.last_used = time.monotonic()
        if job is None:
            return
        if job.pending:  # prompt only partly prefilled: those cells are useless
            llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, -1, -1)
            slot.cached = []
        self._finish_job(job, reason, error)

    def _finish_job(self, job: _Job, reason: FinishReason, error: str | None = None) -> None:
        tail = ""
        if reason in ("stop", "length") and not job.matcher.stopped:
            tail = job.matcher.feed(job.decoder.flush()) + job.matcher.flush()
        free_sampler(job.sampler)
        job.sampler = ctypes.c_void_p(0)
        elapsed = time.monotonic() - job.submitted
        self._avg_job_s = 0.8 * self._avg_job_s + 0.2 * elapsed
        job.sink(
            FinishEvent(
                reason=reason,
                prompt_tokens=len(job.request.prompt_tokens),
                completion_tokens=job.generated,
                cached_tokens=job.cached_tokens,
                text=tail,
                error=error,
            )
        )
