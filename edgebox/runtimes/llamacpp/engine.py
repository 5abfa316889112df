"""Continuous-batching engine: one llama.cpp context, N sequence slots, one scheduler thread.

Each step packs the next token of every decoding sequence plus a bounded chunk of
pending prompt tokens into one `llama_decode`, so a long prompt delays running
streams by at most one chunk. Free slots keep their KV cells, and a new request
goes to the slot whose cached tokens share the longest prefix with its prompt.
"""

from __future__ import annotations

import bisect
import collections
import ctypes
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import llama_cpp

from edgebox.models.digest import file_sha256
from edgebox.runtimes.base import (
    BATCH_BUCKETS,
    BackendError,
    ContextLengthError,
    EventSink,
    FinishEvent,
    FinishReason,
    GenerationRequest,
    KVMismatchError,
    KVSnapshot,
    QueueFullError,
    RuntimeStats,
    TokenEvent,
    fingerprint_mismatch,
)
from edgebox.runtimes.llamacpp.kv_state import (
    kv_layout,
    load_sequence,
    resolved_flash_attn,
    save_sequence,
)
from edgebox.runtimes.llamacpp.model import LlamaCppModel, captured_log
from edgebox.runtimes.llamacpp.sampling import build_sampler, free_sampler, token_logprobs
from edgebox.runtimes.prefix_blocks import BLOCK_TOKENS, BlockChain
from edgebox.runtimes.text import StopMatcher, TokenTextDecoder

FLASH_ATTN = {
    "auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}


@dataclass(frozen=True)
class EngineConfig:
    n_ctx: int = 4096  # tokens per sequence
    parallel: int = 4  # sequence slots decoded together (0: sized by the runtime from memory)
    n_threads: int = 0  # 0: all physical cores llama.cpp sees
    prefill_chunk: int = 256  # prompt tokens per step while other streams decode
    max_queue: int = 64  # requests waiting for a slot before 429
    flash_attn: str = "auto"
    request_timeout: float | None = 600.0  # seconds from submission, queue wait included


_RATE_WINDOW_S = 5.0
MAX_REPORTED_BLOCKS = 1024  # per model in /health: 16 hex chars each
# A step measures the prefill rate when it carries at least this many prompt tokens and they
# outnumber its decode tokens this many times (the decode tokens' share of the time is then
# small); the rate is an exponential average over such steps.
_PREFILL_SAMPLE_TOKENS = 64
_PREFILL_DOMINANCE = 8
_PREFILL_EWMA = 0.3


@dataclass(eq=False)
class _Job:
    request: GenerationRequest
    sink: EventSink
    sampler: ctypes.c_void_p
    matcher: StopMatcher
    timeout: float | None
    submitted: float = field(default_factory=time.monotonic)
    admitted: float | None = None
    pending: list[int] = field(default_factory=list)  # prompt tokens still to prefill
    cached_tokens: int = 0
    generated: int = 0
    next_token: int | None = None  # to decode next: the prompt's last token, then each sampled one
    cancelled: bool = False
    decoder: TokenTextDecoder = field(default_factory=TokenTextDecoder)

    @property
    def deadline(self) -> float | None:
        return None if self.timeout is None else self.submitted + self.timeout

    def cancel(self) -> None:
        self.cancelled = True


@dataclass(eq=False)
class _Slot:
    seq_id: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV cells this seq holds
    job: _Job | None = None
    last_used: float = 0.0
    # Holds cells loaded from a client's snapshot: labelled by that client's token list,
    # so they are never offered to another request's prefix match.
    imported: bool = False
    blocks: BlockChain = field(default_factory=BlockChain)  # chained hashes of `cached`

    def clear(self) -> None:
        self.cached = []
        self.imported = False
        self.blocks.truncate(0)


def _prefill_dominated(n_tokens: int, n_prompt: int) -> bool:
    """Whether a step measures the prefill rate (see _PREFILL_SAMPLE_TOKENS)."""
    return n_prompt >= _PREFILL_SAMPLE_TOKENS and n_prompt >= _PREFILL_DOMINANCE * (
        n_tokens - n_prompt
    )


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
        with captured_log() as log:
            ctx = llama_cpp.llama_init_from_model(model.ptr, params)
        if not ctx:
            raise BackendError(
                f"could not create a context of {params.n_ctx} tokens; lower --ctx or --parallel"
            )
        self.ctx = ctx
        self.n_ctx_seq = llama_cpp.llama_n_ctx_seq(ctx)
        self.n_batch = params.n_batch
        self.memory = llama_cpp.llama_get_memory(ctx)
        flash_attn = resolved_flash_attn(config.flash_attn, log)
        self._kv_layout = kv_layout(params, flash_attn, self.n_ctx_seq, config.parallel)
        # The model's digest is read once in the background; only KV export/import waits.
        self._hasher = ThreadPoolExecutor(1, thread_name_prefix="gguf-sha256")
        self._model_sha: Future[str] = self._hasher.submit(file_sha256, model.path)
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._slots = [_Slot(i) for i in range(config.parallel)]
        self._queue: collections.deque[_Job] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._counters = {"prompt": 0, "cached": 0, "generated": 0, "steps": 0, "batch": 0}
        self._step_seconds = 0.0
        self._batch_hist = [0] * len(BATCH_BUCKETS)
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._prefill_rate = 0.0  # prompt tokens/s, measured (see _PREFILL_SAMPLE_TOKENS)
        self._avg_job_s = 1.0
        self._thread = threading.Thread(target=self._run, name="llamacpp-engine", daemon=True)
        self._thread.start()

    # -- public, any thread ---------------------------------------------------------------

    def fingerprint(self) -> Mapping[str, str]:
        """Everything a sequence's KV bytes depend on; equal fingerprints can swap KV."""
        return {
            "model_sha256": self._model_sha.result(),
            "llama_cpp_python": llama_cpp.__version__,
            **self._kv_layout,
        }

    def prefix_cache(self) -> dict[str, object]:
        """What /health tells routers about the prefixes the slots hold: chained block hashes
        (see `prefix_blocks`), shallow blocks of every slot before deeper ones, and the model
        digest that says whose tokens they are. Hashes are kept as tokens enter the cache."""
        chains = [list(s.blocks.hashes) for s in self._slots if not s.imported]
        seen: dict[str, None] = {}
        for depth in range(max((len(c) for c in chains), default=0)):
            for c in chains:
                if depth < len(c):
                    seen.setdefault(c[depth])
            if len(seen) >= MAX_REPORTED_BLOCKS:
                break
        out: dict[str, object] = {
            "block_tokens": BLOCK_TOKENS,
            "prefix_blocks": list(seen)[:MAX_REPORTED_BLOCKS],
        }
        if self._model_sha.done() and not self._model_sha.exception():
            out["model_sha256"] = self._model_sha.result()
        return out

    def submit(self, request: GenerationRequest, sink: EventSink) -> _Job:
        prompt = request.prompt_tokens
        if not prompt:
            raise BackendError("the prompt is empty")
        if len(prompt) >= self.n_ctx_seq:
            raise ContextLengthError(
                f"the prompt is {len(prompt)} tokens; this model's context is "
                f"{self.n_ctx_seq} tokens per request"
            )
        if request.kv is not None:
            self._check_snapshot(request.kv, prompt)
        timeout = request.timeout if request.timeout is not None else self.config.request_timeout
        job = _Job(
            request,
            sink,
            build_sampler(self.model, request.sampling),
            StopMatcher(request.stop),
            timeout=timeout,
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

    def _check_snapshot(self, kv: KVSnapshot, prompt: Sequence[int]) -> None:
        problem = fingerprint_mismatch(self.fingerprint(), kv.fingerprint)
        if problem:
            raise KVMismatchError(problem)
        n = len(kv.tokens)
        if not n or n >= len(prompt) or list(prompt[:n]) != list(kv.tokens):
            raise KVMismatchError(
                f"the KV snapshot's {n} tokens are not a proper prefix of this "
                f"{len(prompt)}-token prompt"
            )

    def stats(self) -> RuntimeStats:
        with self._cond:
            self._trim_recent(time.monotonic())
            rate = sum(n for _, n in self._recent) / _RATE_WINDOW_S
            return RuntimeStats(
                slots=len(self._slots),
                running=sum(1 for s in self._slots if s.job),
                queued=len(self._queue),
                prompt_tokens_total=self._counters["prompt"],
                cached_tokens_total=self._counters["cached"],
                generated_tokens_total=self._counters["generated"],
                steps_total=self._counters["steps"],
                step_seconds_total=self._step_seconds,
                batch_tokens_total=self._counters["batch"],
                batch_size_buckets=tuple(self._cumulative_batch_hist()),
                decode_tokens_per_s=rate,
                prefill_tokens_per_s=self._prefill_rate,
            )

    def _cumulative_batch_hist(self) -> list[int]:
        out, total = [], 0
        for count in self._batch_hist:
            total += count
            out.append(total)
        return out

    def _trim_recent(self, t: float) -> None:
        while self._recent and self._recent[0][0] < t - _RATE_WINDOW_S:
            self._recent.popleft()

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout=30)
        self._hasher.shutdown(wait=False, cancel_futures=True)
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
                self._expire_queued(time.monotonic())
                self._admit()
            try:
                self._step()
            except Exception as exc:  # a failed step must not kill the engine thread
                for slot in self._slots:
                    if slot.job:
                        self._release(slot, "error", error=f"generation failed: {exc}")
                        llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, -1, -1)
                        slot.clear()

    def _busy(self) -> bool:
        return any(s.job for s in self._slots)

    def _expire_queued(self, t: float) -> None:
        expired = [j for j in self._queue if j.deadline is not None and t > j.deadline]
        for job in expired:
            self._queue.remove(job)
            self._finish_job(job, "timeout", error=_timeout_message(job, "waiting for a slot"))

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
            kv = job.request.kv
            if kv is not None and common_prefix_len(slot.cached, prompt) < len(kv.tokens):
                slot = min(free, key=lambda s: s.last_used)  # keep the best cached prefixes
                self._import(slot, kv)
            keep = min(common_prefix_len(slot.cached, prompt), len(prompt) - 1)
            if not llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, keep, -1):
                llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, -1, -1)
                keep = 0
            slot.cached = prompt[:keep]
            slot.blocks.truncate(keep)  # an imported slot has none: not shared
            if job.request.export_kv:
                job.pending = prompt[keep:]
            else:
                # The last prompt token always goes through a decode step of its own, so the
                # first sampled token is computed the same way whether the prefix was just
                # prefilled, reused from a slot, or imported from another node's KV.
                job.pending, job.next_token = prompt[keep:-1], prompt[-1]
            job.cached_tokens = keep
            job.admitted = time.monotonic()
            self._counters["prompt"] += len(prompt)
            self._counters["cached"] += keep
            slot.job = job

    def _import(self, slot: _Slot, kv: KVSnapshot) -> None:
        """Load a snapshot into the slot's sequence; on failure the slot is left empty and
        the prompt is simply prefilled (the fingerprint was checked, so this is rare)."""
        slot.clear()
        if load_sequence(self.ctx, self.memory, slot.seq_id, kv.data, len(kv.tokens)):
            slot.cached = list(kv.tokens)
            slot.imported = True

    def _export(self, slot: _Slot) -> KVSnapshot:
        data = save_sequence(self.ctx, slot.seq_id)
        return KVSnapshot(self.fingerprint(), tuple(slot.cached), data)

    def _step(self) -> None:
        t = time.monotonic()
        for slot in self._slots:
            job = slot.job
            if job and job.cancelled:
                self._release(slot, "cancelled")
            elif job and job.deadline is not None and t > job.deadline:
                self._release(slot, "timeout", error=_timeout_message(job, "generating"))
        batch = self._batch
        n = 0
        outputs: list[tuple[_Slot, int]] = []  # slot, index of its logits row in the batch
        exports: list[_Slot] = []

        def add(slot: _Slot, token: int, logits: bool) -> None:
            nonlocal n
            batch.token[n] = token
            batch.pos[n] = len(slot.cached)
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = slot.seq_id
            batch.logits[n] = logits
            slot.cached.append(token)
            slot.blocks.extended(slot.cached)
            if logits:
                outputs.append((slot, n))
            n += 1

        decoding = [
            s for s in self._slots if s.job and not s.job.pending and s.job.next_token is not None
        ]
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
            for token in chunk:
                add(slot, token, logits=False)
            if job.request.export_kv and not job.pending:
                exports.append(slot)
        if n == 0:
            return
        batch.n_tokens = n
        n_prompt = n - len(decoding)
        decode_started = time.monotonic()
        rc = llama_cpp.llama_decode(self.ctx, batch)
        if rc != 0:
            raise BackendError(f"llama_decode returned {rc}")
        prefill_s = None
        if _prefill_dominated(n, n_prompt):
            llama_cpp.llama_synchronize(self.ctx)  # GPU backends return before the work ends
            prefill_s = time.monotonic() - decode_started  # the decode alone: no sampling/export
        for slot, index in outputs:
            self._sample(slot, index)
        for slot in exports:
            try:
                snapshot = self._export(slot)
            except Exception as exc:  # only this request fails, not the whole batch
                self._release(slot, "error", error=f"KV export failed: {exc}")
            else:
                self._release(slot, "stop", kv=snapshot)
        self._account_step(n, len(outputs), time.monotonic() - t, n_prompt, prefill_s)

    def _account_step(
        self,
        n_tokens: int,
        n_sampled: int,
        seconds: float,
        n_prompt: int = 0,
        prefill_s: float | None = None,
    ) -> None:
        with self._cond:
            if prefill_s:
                sample = n_prompt / prefill_s
                old = self._prefill_rate
                self._prefill_rate = sample if not old else old + _PREFILL_EWMA * (sample - old)
            self._counters["steps"] += 1
            self._counters["batch"] += n_tokens
            self._step_seconds += seconds
            bucket = bisect.bisect_left(BATCH_BUCKETS, n_tokens)
            if bucket < len(BATCH_BUCKETS):  # larger steps count only in +Inf (steps_total)
                self._batch_hist[bucket] += 1
            t = time.monotonic()
            self._recent.append((t, n_sampled))
            self._trim_recent(t)

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

    def _release(
        self,
        slot: _Slot,
        reason: FinishReason,
        error: str | None = None,
        kv: KVSnapshot | None = None,
    ) -> None:
        job = slot.job
        slot.job = None
        slot.last_used = time.monotonic()
        if job is None:
            return
        if job.pending or slot.imported:  # partly prefilled, or not ours to share
            llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, -1, -1)
            slot.clear()
        self._finish_job(job, reason, error, kv)

    def _finish_job(
        self,
        job: _Job,
        reason: FinishReason,
        error: str | None = None,
        kv: KVSnapshot | None = None,
    ) -> None:
        tail = ""
        if reason in ("stop", "length") and not job.matcher.stopped:
            tail = job.matcher.feed(job.decoder.flush()) + job.matcher.flush()
        free_sampler(job.sampler)
        job.sampler = ctypes.c_void_p(0)
        finished = time.monotonic()
        self._avg_job_s = 0.8 * self._avg_job_s + 0.2 * (finished - job.submitted)
        job.sink(
            FinishEvent(
                reason=reason,
                prompt_tokens=len(job.request.prompt_tokens),
                completion_tokens=job.generated,
                cached_tokens=job.cached_tokens,
                text=tail,
                error=error,
                queue_wait_s=(job.admitted or finished) - job.submitted,
                kv=kv,
            )
        )


def _timeout_message(job: _Job, doing: str) -> str:
    return f"the request timed out after {job.timeout:g} s ({doing})"
