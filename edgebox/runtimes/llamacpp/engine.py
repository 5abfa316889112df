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
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

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
    KVSnapshot,
    QueueFullError,
    RuntimeStats,
    TokenEvent,
)
from edgebox.runtimes.llamacpp.jobs import Job, Part, Slot, common_prefix_len, timeout_message
from edgebox.runtimes.llamacpp.kv_format import StateLayout
from edgebox.runtimes.llamacpp.kv_import import KVTransfer
from edgebox.runtimes.llamacpp.kv_state import (
    kv_layout,
    logits_finite,
    resolved_flash_attn,
)
from edgebox.runtimes.llamacpp.model import LlamaCppModel, captured_log
from edgebox.runtimes.llamacpp.recovery import KV_INVALID, EngineHealth, Healing
from edgebox.runtimes.llamacpp.sampling import build_sampler, free_sampler, token_logprobs
from edgebox.runtimes.prefix_blocks import BLOCK_TOKENS
from edgebox.runtimes.text import StopMatcher

# Test hook, never for serving: uploaded KV is neither validated nor checked after loading
# (the behaviour before validation existed), so tests can reach the decode-failure path.
UNCHECKED_KV_ENV = "EDGEBOX_TEST_UNCHECKED_KV"

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


def _submitted(slot: Slot) -> float:
    assert slot.job is not None
    return slot.job.submitted


def _prefill_dominated(n_tokens: int, n_prompt: int) -> bool:
    """Whether a step measures the prefill rate (see _PREFILL_SAMPLE_TOKENS)."""
    return n_prompt >= _PREFILL_SAMPLE_TOKENS and n_prompt >= _PREFILL_DOMINANCE * (
        n_tokens - n_prompt
    )


class LlamaCppEngine(Healing, KVTransfer):
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
        self._params = params  # to build the context again (recovery.Healing._rebuild)
        self.n_ctx_seq = llama_cpp.llama_n_ctx_seq(ctx)
        self.n_batch = params.n_batch
        self.memory = llama_cpp.llama_get_memory(ctx)
        flash_attn = resolved_flash_attn(config.flash_attn, log)
        self._kv_layout = kv_layout(params, flash_attn, self.n_ctx_seq, config.parallel)
        # The model's digest is read once in the background; only KV export/import waits.
        self._hasher = ThreadPoolExecutor(1, thread_name_prefix="gguf-sha256")
        self._model_sha: Future[str] = self._hasher.submit(file_sha256, model.path)
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._slots = [Slot(i) for i in range(config.parallel)]
        self._queue: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._counters = {"prompt": 0, "cached": 0, "generated": 0, "steps": 0, "batch": 0}
        self._step_seconds = 0.0
        self._batch_hist = [0] * len(BATCH_BUCKETS)
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._prefill_rate = 0.0  # prompt tokens/s, measured (see _PREFILL_SAMPLE_TOKENS)
        self._avg_job_s = 1.0
        self.health = EngineHealth()
        # This engine's own KV layout, from a one-token state it exports on its thread when
        # the first upload is checked: what a snapshot's every layer must match (kv_format).
        self._kv_reference: Future[StateLayout] = Future()
        self._reference_wanted = False
        self.unchecked_kv = os.environ.get(UNCHECKED_KV_ENV) == "1"
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

    def submit(self, request: GenerationRequest, sink: EventSink, *, probe: bool = False) -> Job:
        """Queue a request; `probe` marks a trial of an uploaded snapshot (kv_import)."""
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
        job = Job(
            request,
            sink,
            build_sampler(self.model, request.sampling),
            StopMatcher(request.stop),
            timeout=timeout,
            probe=probe,
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
                decode_failures_total=self.health.decode_failures,
                engine_rebuilds_total=self.health.rebuilds,
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
                while (
                    not self._closing
                    and not self._queue
                    and not self._busy()
                    and not self._reference_due()
                ):
                    self._cond.wait()
                if self._reference_due():
                    self._take_kv_reference()
                if self._closing:
                    for job in [*self._queue, *(s.job for s in self._slots if s.job)]:
                        self._finish_job(job, "cancelled", error="the node is shutting down")
                    self._queue.clear()
                    return
                self._expire_queued(time.monotonic())
                self._admit()
            try:
                if self.ctx is None:
                    raise BackendError("the llama.cpp context could not be rebuilt")
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
            self._finish_job(job, "timeout", error=timeout_message(job, "waiting for a slot"))

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
            self._place(job, free)

    def _place(self, job: Job, free: list[Slot]) -> None:
        prompt = list(job.request.prompt_tokens)
        slot = max(free, key=lambda s: (common_prefix_len(s.cached, prompt), -s.last_used))
        kv = job.request.kv
        if kv is not None and common_prefix_len(slot.cached, prompt) < len(kv.tokens):
            slot = min(free, key=lambda s: s.last_used)  # keep the best cached prefixes
            if not self._import(slot, kv) and job.probe:
                self._finish_job(job, "error", "llama.cpp refused the KV state", code=KV_INVALID)
                return
        keep = min(common_prefix_len(slot.cached, prompt), len(prompt) - 1)
        if not llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, keep, -1):
            llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, -1, -1)
            keep = 0
        slot.cached = prompt[:keep]
        slot.blocks.truncate(keep)  # an imported slot has none: not shared
        job.cached_tokens = keep
        if job.request.export_kv:
            job.pending = prompt[keep:]
        else:
            # The last prompt token always goes through a decode step of its own, so the
            # first sampled token is computed the same way whether the prefix was just
            # prefilled, reused from a slot, or imported from another node's KV.
            job.pending, job.next_token = prompt[keep:-1], prompt[-1]
        job.admitted = time.monotonic()
        if not job.probe:
            self._counters["prompt"] += len(prompt)
            self._counters["cached"] += keep
        slot.job = job

    def _step(self) -> None:
        t = time.monotonic()
        for slot in self._slots:
            job = slot.job
            if job and job.cancelled:
                self._release(slot, "cancelled")
            elif job and job.deadline is not None and t > job.deadline:
                self._release(slot, "timeout", error=timeout_message(job, "generating"))
        parts = self._plan()
        if not parts:
            return
        decode_started = time.monotonic()
        rc, rows = self._decode(parts)
        if rc != 0:
            self._decode_failed(parts, rc)  # recovery.Healing
            return
        n = sum(len(p.tokens) for p in parts)
        n_sampled = sum(p.logits for p in parts)
        n_prompt = n - n_sampled
        prefill_s = None
        if _prefill_dominated(n, n_prompt):
            llama_cpp.llama_synchronize(self.ctx)  # GPU backends return before the work ends
            prefill_s = time.monotonic() - decode_started  # the decode alone: no sampling/export
        self._after_decode(rows)
        self._account_step(n, n_sampled, time.monotonic() - t, n_prompt, prefill_s)

    def _plan(self) -> list[Part]:
        """This step's parts: the next token of every decoding slot, then prompt chunks
        (oldest request first) within the batch budget. Tokens enter `slot.cached` here."""
        parts: list[Part] = []
        for slot in self._slots:
            job = slot.job
            if job and not job.pending and job.next_token is not None:
                parts.append(Part(slot, len(slot.cached), [job.next_token], logits=True))
                job.next_token = None
        room = self.n_batch - len(parts)
        budget = min(self.config.prefill_chunk, room) if parts else room
        waiting = sorted((s for s in self._slots if s.job and s.job.pending), key=_submitted)
        for slot in waiting:
            if budget <= 0:
                break
            job = slot.job
            assert job is not None
            chunk, job.pending = job.pending[:budget], job.pending[budget:]
            budget -= len(chunk)
            export = job.request.export_kv and not job.pending
            parts.append(Part(slot, len(slot.cached), chunk, logits=False, export=export))
        for part in parts:
            part.slot.cached.extend(part.tokens)
            part.slot.blocks.extended(part.slot.cached)
        return parts

    def _decode(self, parts: Sequence[Part]) -> tuple[int, list[tuple[Part, int]]]:
        """One llama_decode of `parts`; the code and each part's logits row in the batch."""
        batch = self._batch
        n = 0
        rows: list[tuple[Part, int]] = []
        for part in parts:
            for i, token in enumerate(part.tokens):
                batch.token[n] = token
                batch.pos[n] = part.start + i
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = part.slot.seq_id
                batch.logits[n] = part.logits
                n += 1
            rows.append((part, n - 1))
        batch.n_tokens = n
        return llama_cpp.llama_decode(self.ctx, batch), rows

    def _after_decode(self, rows: Sequence[tuple[Part, int]]) -> None:
        """Sample the decoding parts, then export the parts whose prompt is complete."""
        for part, index in rows:
            if part.logits and part.slot.job is not None:
                self._sample(part.slot, index)
        for part, _ in rows:
            if not part.export or part.slot.job is None:
                continue
            try:
                snapshot = self._export(part.slot)
            except Exception as exc:  # only this request fails, not the whole batch
                self._release(part.slot, "error", error=f"KV export failed: {exc}")
            else:
                self._release(part.slot, "stop", kv=snapshot)

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

    def _sample(self, slot: Slot, index: int) -> None:
        job = slot.job
        assert job is not None
        top_n = job.request.sampling.logprobs
        logprob = None
        top: tuple = ()
        if job.probe and not logits_finite(self.ctx, index, self.model.n_vocab):
            error = "the uploaded KV state makes the model compute non-finite logits"
            self._release(slot, "error", error=error, code=KV_INVALID)
            return
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
        slot: Slot,
        reason: FinishReason,
        error: str | None = None,
        kv: KVSnapshot | None = None,
        code: str | None = None,
    ) -> None:
        job = slot.job
        slot.job = None
        slot.last_used = time.monotonic()
        if job is None:
            return
        if job.pending or slot.imported:  # partly prefilled, or not ours to share
            llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, -1, -1)
            slot.clear()
        self._finish_job(job, reason, error, kv, code)

    def _finish_job(
        self,
        job: Job,
        reason: FinishReason,
        error: str | None = None,
        kv: KVSnapshot | None = None,
        code: str | None = None,
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
                error_code=code,
                queue_wait_s=(job.admitted or finished) - job.submitted,
                kv=kv,
            )
        )
