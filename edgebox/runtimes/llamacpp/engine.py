"""Continuous-batching engine: one llama.cpp context, N sequence slots, one scheduler thread.

Each step packs the next token of every decoding sequence plus a bounded chunk of
pending prompt tokens into one `llama_decode` (`stepping`), so a long prompt delays running
streams by at most one chunk. Free slots keep their KV cells, and a new request
goes to the slot whose cached tokens share the longest prefix with its prompt (at least a tenth
of it; else the least recently used slot, so conversations keep their own slots). Admission,
deadlines, cancellation and the counters are the shared job core's (`runtimes.jobs`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import llama_cpp

from edgebox.models.digest import file_sha256
from edgebox.runtimes.base import (
    BackendError,
    ContextLengthError,
    EventSink,
    FinishReason,
    GenerationRequest,
    KVSnapshot,
    QueueFullError,
    RuntimeStats,
)
from edgebox.runtimes.jobs import JobMetrics, JobQueue, request_timeout
from edgebox.runtimes.llamacpp.jump_forward import CallHeads, jump, shown_tags, tag_tokens
from edgebox.runtimes.llamacpp.kv_format import StateLayout
from edgebox.runtimes.llamacpp.kv_import import KVTransfer
from edgebox.runtimes.llamacpp.kv_state import kv_layout, resolved_flash_attn
from edgebox.runtimes.llamacpp.model import LlamaCppModel, captured_log
from edgebox.runtimes.llamacpp.moves import SlotMoves
from edgebox.runtimes.llamacpp.recovery import KV_INVALID, EngineHealth, Healing
from edgebox.runtimes.llamacpp.sampling import build_sampler, plain_greedy
from edgebox.runtimes.llamacpp.slots import (
    MIN_SHARED,
    BatchArrays,
    Slot,
    SlotJob,
    choose_slot,
    common_prefix_len,
    unshared_slot,
)
from edgebox.runtimes.llamacpp.stepping import Stepping
from edgebox.runtimes.llamacpp.tool_grammar import ends_when_complete
from edgebox.runtimes.prefix_blocks import BLOCK_TOKENS
from edgebox.runtimes.text import StopMatcher

# Test hook, never for serving: uploaded KV is neither validated nor checked after loading
# (the behaviour before validation existed), so tests can reach the decode-failure path.
UNCHECKED_KV_ENV = "EDGEBOX_TEST_UNCHECKED_KV"
CLOSE_WAIT_S = 30.0  # for the scheduler to leave llama_decode when the engine closes

log = logging.getLogger(__name__)

FLASH_ATTN = {
    "auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}

MAX_REPORTED_BLOCKS = 1024  # per model in /health: 16 hex chars each
# Prompt tokens one step may carry when no other sequence is decoding (llama.cpp's own default
# batch): a 500-token prompt is one llama_decode, ~17 ms sooner than two of 256 on a 2-core
# Xeon. While others decode, `prefill_chunk` bounds it, so their next token is not held up.
PROMPT_BATCH = 512


@dataclass(frozen=True)
class EngineConfig:
    n_ctx: int = 4096  # tokens per sequence
    parallel: int = 4  # sequence slots decoded together (0: sized by the runtime from memory)
    n_threads: int = 0  # 0: all physical cores llama.cpp sees
    prefill_chunk: int = 256  # prompt tokens per step while other streams decode
    max_queue: int = 64  # requests waiting for a slot before 429
    flash_attn: str = "auto"
    request_timeout: float | None = 600.0  # seconds from submission, queue wait included


def create_context(
    model: LlamaCppModel, config: EngineConfig
) -> tuple[Any, llama_cpp.llama_context_params, list[str]]:
    """A llama.cpp context for `config.parallel` sequences of `config.n_ctx` tokens, its
    parameters (to build it again) and what llama.cpp logged while creating it."""
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = config.n_ctx * config.parallel
    params.n_seq_max = config.parallel
    params.n_batch = params.n_ubatch = max(PROMPT_BATCH, config.prefill_chunk, config.parallel)
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
    return ctx, params, log


class LlamaCppEngine(Stepping, Healing, KVTransfer, SlotMoves):
    def __init__(self, model: LlamaCppModel, config: EngineConfig) -> None:
        self.model = model
        self.config = config
        ctx, params, log = create_context(model, config)
        self.ctx = ctx
        self._params = params  # to build the context again (recovery.Healing._rebuild)
        self.n_ctx_seq = llama_cpp.llama_n_ctx_seq(ctx)
        self.n_batch = params.n_batch
        self.prefill_chunk = config.prefill_chunk
        self.memory = llama_cpp.llama_get_memory(ctx)
        flash_attn = resolved_flash_attn(config.flash_attn, log)
        self._kv_layout = kv_layout(params, flash_attn, self.n_ctx_seq, config.parallel)
        # The model's digest is read once in the background; only KV export/import waits.
        self._hasher = ThreadPoolExecutor(1, thread_name_prefix="gguf-sha256")
        self._model_sha: Future[str] = self._hasher.submit(file_sha256, model.path)
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._arrays = BatchArrays(self._batch, self.n_batch)
        self._slots = [Slot(i) for i in range(config.parallel)]
        self._queue: JobQueue[SlotJob] = JobQueue(config.max_queue, retry_after=self._retry_after)
        self._cond = self._queue.cond  # guards the slots too (kv_import takes it)
        self._queue.free = lambda: sum(1 for s in self._slots if s.job is None)
        self._metrics = JobMetrics(self._cond, steps=True)
        self._init_moves()
        self.health = EngineHealth()
        # This engine's own KV layout, from a one-token state it exports on its thread when
        # the first upload is checked: what a snapshot's every layer must match (kv_format).
        self._kv_reference: Future[StateLayout] = Future()
        self._reference_wanted = False
        self.unchecked_kv = os.environ.get(UNCHECKED_KV_ENV) == "1"
        self._thread = threading.Thread(target=self._run, name="llamacpp-engine", daemon=True)
        self._thread.start()

    def _retry_after(self, waiting: int) -> float:
        """Seconds until a slot is likely free for one more request (a 429's Retry-After)."""
        return max(1.0, self._metrics.avg_job_s * (waiting + 1) / len(self._slots))

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
        digest that says whose tokens they are. Hashes are kept as tokens enter the cache.
        Read under the engine's lock, which two slots exchange their contents under a field
        at a time (`swap_contents`): an imported slot's hashes must never show."""
        with self._cond:
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

    def submit(
        self, request: GenerationRequest, sink: EventSink, *, probe: bool = False
    ) -> SlotJob:
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
        job = SlotJob(
            request=request,
            sink=sink,
            sampler=build_sampler(self.model, request.sampling),
            greedy=plain_greedy(request.sampling),
            matcher=StopMatcher(request.stop),
            timeout=request_timeout(request, self.config.request_timeout),
            probe=probe,
        )
        self._force_start(job)
        try:
            self._queue.put(job)
        except (QueueFullError, BackendError):
            job.sampler.free()
            raise
        return job

    def _force_start(self, job: SlotJob) -> None:
        """Follow the reply for call heads to jump over (`jump_forward`); a forced call's
        opening (with one function, its whole head) is prefilled with the prompt in one step
        instead of decoded a token a step, and written out before the first sampled token.
        Not with logprobs (jumped-over text has none). After an imported snapshot too: the
        opening is decoded after its cells (its logits, which follow the prompt alone, then go
        unused), so the reply is the one this engine gives. Where a complete call grammar allows
        only the end of the reply, the reply ends with it (`SlotJob.end_token`); the format's
        tags that are control tokens are shown as text (`SlotJob.shown`)."""
        request = job.request
        tools = request.sampling.tools
        if tools is not None:
            job.shown = shown_tags(self.model, tools.format)
        if tools is not None and ends_when_complete(tools) and self.model.eog_tokens:
            job.end_token = self.model.eog_tokens[0]
        if tools is None or request.sampling.logprobs is not None:
            return
        job.heads = CallHeads.of(tools, tag_tokens(self.model, tools.format))
        room = self.n_ctx_seq - 1 - len(request.prompt_tokens)
        if request.max_tokens is not None:
            room = min(room, request.max_tokens)
        job.forced, job.sampler = jump(self.model, job.heads, job.sampler, room)

    def stats(self) -> RuntimeStats:
        with self._cond:
            return self._metrics.stats(
                slots=len(self._slots),
                running=sum(1 for s in self._slots if s.job),
                queued=len(self._queue),
                decode_failures_total=self.health.decode_failures,
                engine_rebuilds_total=self.health.rebuilds,
            )

    def close(self) -> bool:
        """Stop the scheduler and free the context; False, freeing nothing, when the scheduler
        is still inside llama.cpp after CLOSE_WAIT_S (a long prefill on a slow box): leaking
        the context beats freeing it under a running decode."""
        self._queue.close()
        self._thread.join(timeout=CLOSE_WAIT_S)
        self._hasher.shutdown(wait=False, cancel_futures=True)
        if self._thread.is_alive():
            log.warning("the engine is still decoding after %g s; its memory is left", CLOSE_WAIT_S)
            return False
        if self.ctx:
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self.ctx)
            self.ctx = None
        return True

    # -- scheduler thread -----------------------------------------------------------------

    def _run(self) -> None:
        queue = self._queue
        while True:
            with self._cond:
                while (
                    not queue.closing
                    and not queue.jobs
                    and not self._busy()
                    and not self._reference_due()
                ):
                    self._cond.wait()
                if self._reference_due():
                    self._take_kv_reference()
                if queue.closing:
                    for job in [*queue.drain(), *(s.job for s in self._slots if s.job)]:
                        self._finish_job(job, "cancelled", error="the node is shutting down")
                    return
                for job in queue.expired(time.monotonic()):
                    error = job.timeout_message("waiting for a slot")
                    self._finish_job(job, "timeout", error=error)
                self._admit()
            try:
                if self.ctx is None:
                    raise BackendError("the llama.cpp context could not be rebuilt")
                self._step()
            except Exception as exc:  # a failed step must not kill the engine thread
                self._fail_running(exc)

    def _fail_running(self, exc: Exception) -> None:
        for slot in self._slots:
            if slot.job:
                self._release(slot, "error", error=f"generation failed: {exc}")
                llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, -1, -1)
                slot.clear()

    def _busy(self) -> bool:
        return any(s.job for s in self._slots)

    def _admit(self) -> None:
        """Move queued jobs into free slots, each to the slot sharing its longest prefix."""
        jobs = self._queue.jobs
        while jobs:
            job = jobs[0]
            if job.cancelled:
                jobs.popleft()
                self._finish_job(job, "cancelled")
                continue
            free = [s for s in self._slots if s.job is None]
            if not free:
                return
            jobs.popleft()
            self._place(job, free)

    def _place(self, job: SlotJob, free: list[Slot]) -> None:
        prompt = [*job.request.prompt_tokens, *job.forced]
        busy = [s.seq_id for s in self._slots if s.job is not None]
        slot = choose_slot(free, prompt, busy)
        kv = job.request.kv
        if kv is not None and common_prefix_len(slot.cached, prompt) < len(kv.tokens):
            slot = unshared_slot(free, busy)  # keep the best cached prefixes
            self._spare_cache(slot, free)
            if not self._import(slot, kv) and job.probe:
                self._finish_job(job, "error", "llama.cpp refused the KV state", code=KV_INVALID)
                return
        elif common_prefix_len(slot.cached, prompt) < MIN_SHARED * len(prompt):
            self._spare_cache(slot, free)
        # At least the prompt's last token is decoded (`keep` < len), its logits giving the
        # first sampled token in the same step as the rest of the prompt's last chunk; unless
        # the slot holds the whole prompt with the logits after it (the same prompt again, or
        # a snapshot of it with its logits).
        given = slot.logits_after(prompt)
        keep = len(prompt) if given is not None else len(prompt) - 1
        keep = min(common_prefix_len(slot.cached, prompt), keep)
        if not llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, keep, -1):
            llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, -1, -1)
            keep, given = 0, None
        slot.keep(prompt, keep)
        job.cached_tokens = min(keep, len(job.request.prompt_tokens))  # forced text is output
        job.pending, job.given_logits = prompt[keep:], given
        job.admitted = time.monotonic()
        if not job.probe:
            self._metrics.totals(prompt=len(job.request.prompt_tokens), cached=job.cached_tokens)
        slot.job = job

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
        job: SlotJob,
        reason: FinishReason,
        error: str | None = None,
        kv: KVSnapshot | None = None,
        code: str | None = None,
    ) -> None:
        tail = ""
        if reason in ("stop", "length") and not job.matcher.stopped:
            tail = job.matcher.feed(job.decoder.flush()) + job.matcher.flush()
        job.sampler.free()
        self._metrics.job_done(job, time.monotonic())
        job.finish(
            reason,
            job.generated,
            cached_tokens=job.cached_tokens,
            text=tail,
            stop_sequence=job.matcher.matched,
            error=error,
            error_code=code,
            kv=kv,
        )
