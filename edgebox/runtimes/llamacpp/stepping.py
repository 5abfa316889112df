"""One step of the batching engine (`Stepping`, mixed into `LlamaCppEngine`): the next token
of every decoding sequence plus a bounded chunk of pending prompt tokens in one `llama_decode`,
then sampling and KV export. This is the hot loop: it runs once per generated token, so it
allocates no more than the parts of the step and the events it sends."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import llama_cpp
import numpy as np

from edgebox.runtimes.base import (
    FinishReason,
    KVSnapshot,
    SamplingError,
    TokenEvent,
    TokenLogprob,
)
from edgebox.runtimes.jobs import JobMetrics
from edgebox.runtimes.llamacpp.jump_forward import jump
from edgebox.runtimes.llamacpp.kv_state import logits_finite
from edgebox.runtimes.llamacpp.model import LlamaCppModel
from edgebox.runtimes.llamacpp.recovery import KV_INVALID
from edgebox.runtimes.llamacpp.sampling import greedy_token, logits_row, token_logprobs
from edgebox.runtimes.llamacpp.slots import BatchArrays, Part, Slot, SlotJob

# A step measures the prefill rate when it carries at least this many prompt tokens and they
# outnumber its decode tokens this many times (the decode tokens' share of the time is then
# small); the rate is an exponential average over such steps.
_PREFILL_SAMPLE_TOKENS = 64
_PREFILL_DOMINANCE = 8
_PREFILL_EWMA = 0.3
_DECODE_EWMA = 0.2


def _submitted(slot: Slot) -> float:
    assert slot.job is not None
    return slot.job.submitted


def _prefill_dominated(n_tokens: int, n_prompt: int) -> bool:
    """Whether a step measures the prefill rate (see _PREFILL_SAMPLE_TOKENS)."""
    return n_prompt >= _PREFILL_SAMPLE_TOKENS and n_prompt >= _PREFILL_DOMINANCE * (
        n_tokens - n_prompt
    )


class Stepping:
    """The engine's decode step (mixed into `LlamaCppEngine`, which supplies these)."""

    model: LlamaCppModel
    ctx: Any  # llama_context_p
    n_batch: int
    n_ctx_seq: int
    prefill_chunk: int
    _arrays: BatchArrays  # the llama_batch's arrays
    _slots: list[Slot]
    _metrics: JobMetrics
    decode_step_s: float = 0.0  # an exponential average of steps that carry no prompt

    if TYPE_CHECKING:  # supplied by recovery.Healing, kv_import.KVTransfer and the engine

        def _decode_failed(self, parts: Sequence[Part], rc: int) -> None: ...

        def _export(self, slot: Slot, logits: np.ndarray) -> KVSnapshot: ...

        def _close_gaps(self) -> None: ...

        def _release(
            self,
            slot: Slot,
            reason: FinishReason,
            error: str | None = None,
            kv: KVSnapshot | None = None,
            code: str | None = None,
        ) -> None: ...

    def _step(self) -> None:
        t = time.monotonic()
        for slot in self._slots:
            job = slot.job
            if job and job.cancelled:
                self._release(slot, "cancelled")
            elif job and job.overdue(t):
                self._release(slot, "timeout", error=job.timeout_message("generating"))
        for slot in self._slots:
            if slot.job is not None and slot.job.given_logits is not None:
                self._sample_given(slot)
        self._close_gaps()  # after this step's releases: a sequence they end is not moved
        parts = self._plan()
        if not parts:
            return
        decode_started = time.monotonic()
        rc, rows = self._decode(parts)
        if rc != 0:
            self._decode_failed(parts, rc)  # recovery.Healing
            return
        n = sum(len(p.tokens) for p in parts)
        n_sampled = sum(p.logits and not p.export for p in parts)
        n_prompt = n - n_sampled
        if _prefill_dominated(n, n_prompt):
            llama_cpp.llama_synchronize(self.ctx)  # GPU backends return before the work ends
            prefill_s = time.monotonic() - decode_started  # the decode alone: no sampling/export
            if prefill_s:
                self._metrics.prefill_sample(n_prompt, prefill_s, _PREFILL_EWMA)
        elif not n_prompt:  # what a step of decoding alone costs (moves are weighed by it)
            self.decode_step_s += _DECODE_EWMA * (
                time.monotonic() - decode_started - self.decode_step_s
            )
        self._after_decode(rows)
        self._metrics.step(n, time.monotonic() - t, n_sampled)

    def _plan(self) -> list[Part]:
        """This step's parts: the next tokens of every decoding slot (a sampled token and any
        text jumped over after it; left for the next step where the batch is full), then prompt
        chunks (oldest request first) within the batch budget. Tokens enter `slot.cached` here."""
        parts: list[Part] = []
        room = self.n_batch  # in tokens: a decoding slot may carry jumped-over text too
        for slot in self._slots:
            job = slot.job
            if job and not job.pending and job.next_tokens and len(job.next_tokens) <= room:
                parts.append(Part(slot, len(slot.cached), job.next_tokens, logits=True))
                room -= len(job.next_tokens)
                job.next_tokens = []
        budget = min(self.prefill_chunk, room) if parts else room
        waiting = sorted((s for s in self._slots if s.job and s.job.pending), key=_submitted)
        for slot in waiting:
            if budget <= 0:
                break
            job = slot.job
            assert job is not None
            chunk, job.pending = job.pending[:budget], job.pending[budget:]
            budget -= len(chunk)
            done = not job.pending  # then sample after it, or export the prompt's KV and logits
            export = done and job.request.export_kv
            parts.append(Part(slot, len(slot.cached), chunk, logits=done, export=export))
        for part in parts:
            part.slot.cached.extend(part.tokens)
            part.slot.blocks.extended(part.slot.cached)
        return parts

    def _decode(self, parts: Sequence[Part]) -> tuple[int, list[tuple[Part, int]]]:
        """One llama_decode of `parts`; the code and each part's logits row in the batch."""
        rows = self._arrays.fill(parts)
        return llama_cpp.llama_decode(self.ctx, self._arrays.batch), rows

    def _after_decode(self, rows: Sequence[tuple[Part, int]]) -> None:
        """Sample the decoding parts, then export the parts whose prompt is complete."""
        for part, index in rows:
            if part.logits and not part.export and part.slot.job is not None:
                self._sample(part.slot, index)
        for part, index in rows:
            if part.export and part.slot.job is not None:
                # kept too: the same prompt here then starts exactly as the importer does
                row = logits_row(self.model, self.ctx, index).copy()
                part.slot.remember_logits(row)
                self._export_prompt(part.slot, row)

    def _export_prompt(self, slot: Slot, logits: np.ndarray) -> None:
        """End an export request with its sequence's KV and the logits after its prompt."""
        try:
            snapshot = self._export(slot, logits)
        except Exception as exc:  # only this request fails, not the whole batch
            self._release(slot, "error", error=f"KV export failed: {exc}")
        else:
            self._release(slot, "stop", kv=snapshot)

    def _sample(self, slot: Slot, index: int) -> None:
        job = slot.job
        assert job is not None
        if job.probe and not logits_finite(self.ctx, index, self.model.n_vocab):
            error = "the uploaded KV state makes the model compute non-finite logits"
            self._release(slot, "error", error=error, code=KV_INVALID)
            return
        row = None
        if job.greedy:
            row = logits_row(self.model, self.ctx, index)
            token = greedy_token(self.model, row, job.request.sampling.ignore_eos)
        else:  # the chain draws, the grammar (if any) checks it (`Sampler.draw`)
            row = logits_row(self.model, self.ctx, index)
            try:
                token = job.sampler.draw(row)
            except SamplingError as exc:
                self._release(slot, "error", error=str(exc))
                return
        first = job.generated == 0 and not job.probe
        if row is None and (first or job.request.sampling.logprobs is not None):
            row = logits_row(self.model, self.ctx, index)
        if first:  # the prompt's own logits, for the same prompt again
            assert row is not None
            slot.remember_logits(row.copy())
        self._emit(slot, token, row)

    def _sample_given(self, slot: Slot) -> None:
        """The first token of a prompt whose logits the slot holds (kept from the same prompt
        before, or imported with a snapshot of it): sampled from those, as the step that
        ended that prefill did, with no decode here."""
        job = slot.job
        assert job is not None and job.given_logits is not None
        row, job.given_logits = job.given_logits, None
        slot.remember_logits(row)
        if job.request.export_kv:  # nothing left to prefill
            self._export_prompt(slot, row)
            return
        try:
            if job.greedy:
                token = greedy_token(self.model, row, job.request.sampling.ignore_eos)
            else:
                token = job.sampler.draw(row)
        except SamplingError as exc:
            self._release(slot, "error", error=str(exc))
            return
        self._metrics.produced(1)  # no step carries it into the recent rate
        self._emit(slot, token, row)

    def _write_forced(self, slot: Slot, job: SlotJob, tokens: list[int]) -> bool:
        """Write out jumped-over text as generated tokens; False when a stop string in it
        ended the request."""
        for token in tokens:
            self._hand_out(job, token)
            if job.matcher.stopped:
                self._release(slot, "stop")
                return False
        return True

    def _hand_out(
        self,
        job: SlotJob,
        token: int,
        logprob: TokenLogprob | None = None,
        top: tuple[TokenLogprob, ...] = (),
    ) -> None:
        """Count a generated token, read its text through the decoder and stop matcher (and
        the call heads, while they follow the reply) and send it."""
        job.generated += 1
        self._metrics.generated += 1  # this thread is the only writer
        piece = self.model.piece(token)
        if not piece and token in job.shown:
            piece = self.model.token_text(token).encode()
        if job.heads is not None and job.heads.active:
            # a control token renders to nothing; the grammar reads its text (a tag)
            job.heads.feed(piece or self.model.token_text(token).encode())
        text = job.matcher.feed(job.decoder.feed(piece))
        job.sink(TokenEvent(token_id=token, text=text, logprob=logprob, top_logprobs=top))

    def _emit(self, slot: Slot, token: int, row: np.ndarray | None) -> None:
        """Hand the sampled token to the request (with its log-probabilities when asked, read
        off `row`), then end the request or queue the token for the next decode."""
        job = slot.job
        assert job is not None
        # forced text is due before the first sampled token (nothing generated yet)
        if job.forced and not job.generated and not self._write_forced(slot, job, job.forced):
            return
        top_n = job.request.sampling.logprobs
        logprob = None
        top: tuple = ()
        if top_n is not None and row is not None:
            logprob, top = token_logprobs(self.model, row, token, top_n)
        if self.model.is_eog(token):
            self._release(slot, "stop")
            return
        self._hand_out(job, token, logprob, top)
        limit = job.request.max_tokens
        if job.matcher.stopped:
            self._release(slot, "stop")
        elif job.end_token is not None and job.sampler.allows(job.end_token):
            self._release(slot, "stop")  # the calls are complete: only the end may follow
        elif (limit is not None and job.generated >= limit) or len(
            slot.cached
        ) + 1 >= self.n_ctx_seq:
            self._release(slot, "length")
        else:
            job.next_tokens = [token]
            if job.heads is not None and job.heads.active:
                self._jump(slot, job)

    def _jump(self, slot: Slot, job: SlotJob) -> None:
        """Jump forward over call text forced after the token just sampled (`jump_forward`):
        written out now, decoded with that token in the next step."""
        assert job.heads is not None
        room = min(self.n_ctx_seq - 2 - len(slot.cached), self.n_batch - 1)
        if job.request.max_tokens is not None:
            room = min(room, job.request.max_tokens - job.generated)
        tokens, job.sampler = jump(self.model, job.heads, job.sampler, room)
        if tokens and self._write_forced(slot, job, tokens):
            job.next_tokens.extend(tokens)
            if job.end_token is not None and job.sampler.allows(job.end_token):
                self._release(slot, "stop")  # the jump completed the calls: nothing to decode
