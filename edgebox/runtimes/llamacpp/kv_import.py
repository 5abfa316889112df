"""KV in and out of the engine's sequences (`KVTransfer`, mixed into the engine), and checking
an uploaded KV snapshot before any request may use it: its bytes parsed in
Python against this engine's own layout (kv_format), then a probe: the snapshot imported
into a free slot's sequence and one token decoded on top of it, which must give finite
logits. The probe's slot is emptied afterwards whatever happens (an imported slot is never
kept), so a refused snapshot leaves nothing behind."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import llama_cpp
import numpy as np

from edgebox.runtimes.base import (
    BackendError,
    FinishEvent,
    GenerationRequest,
    KVInvalidError,
    KVMismatchError,
    KVSnapshot,
    SamplingParams,
    fingerprint_mismatch,
)
from edgebox.runtimes.llamacpp.kv_format import (
    KVFormatError,
    StateLayout,
    reference_layout,
    validate_state,
)
from edgebox.runtimes.llamacpp.kv_state import load_sequence, reference_state, save_sequence
from edgebox.runtimes.llamacpp.model import LlamaCppModel
from edgebox.runtimes.llamacpp.recovery import KV_INVALID
from edgebox.runtimes.llamacpp.slots import Slot

if TYPE_CHECKING:
    from edgebox.runtimes.llamacpp.engine import LlamaCppEngine

REFERENCE_WAIT_S = 120.0  # the reference waits for a free slot: about one request's time
# No model computes logits this large (SmolLM2 and Gemma 3 stay within ±25): a snapshot's
# are refused past it, since the sampler chain divides them by the temperature and a huge
# finite one overflows to infinity there, then to NaN probabilities (see `_validate_logits`).
MAX_LOGIT = 1e4


def validate(engine: LlamaCppEngine, kv: KVSnapshot) -> None:
    """Raise KVInvalidError unless the snapshot's bytes are exactly one sequence of its
    tokens' length at positions 0..n-1, shaped like this engine's own states."""
    if engine.unchecked_kv:
        return
    try:
        reference = engine.kv_reference(REFERENCE_WAIT_S)
    except Exception as exc:
        raise BackendError(f"this engine cannot check uploaded KV states: {exc}") from exc
    limits = (engine.n_ctx_seq - 1, engine.model.n_vocab)  # a request then adds a token
    try:
        validate_state(kv.data, reference, len(kv.tokens), limits)
    except KVFormatError as exc:
        raise KVInvalidError(f"the KV state does not hold what its header claims: {exc}") from exc
    if kv.logits:
        _validate_logits(kv.logits, engine.model.n_vocab)


def _validate_logits(logits: bytes, n_vocab: int) -> None:
    """A snapshot's logits must be one finite float32 per vocabulary entry within ±MAX_LOGIT:
    they decide the first token directly. Larger ones, divided by a temperature, overflow;
    the probabilities become NaN, llama.cpp's draw then lands on a token the request's
    grammar bans, and the grammar throws through the C API: the process aborts."""
    if len(logits) != 4 * n_vocab:
        raise KVInvalidError(
            f"the snapshot's logits are {len(logits)} bytes; this model's vocabulary of "
            f"{n_vocab} tokens takes {4 * n_vocab}"
        )
    row = np.frombuffer(logits, np.float32)
    if not np.isfinite(row).all():
        raise KVInvalidError("the snapshot's logits are not all finite numbers")
    peak = float(np.abs(row).max())
    if peak > MAX_LOGIT:
        raise KVInvalidError(
            f"the snapshot's logits reach {peak:g}, larger than any model computes "
            f"(at most {MAX_LOGIT:g} is taken)"
        )


def probe_request(kv: KVSnapshot, timeout: float | None) -> GenerationRequest:
    """The probe: the snapshot's tokens and one more (any valid id), one greedy token."""
    return GenerationRequest(
        prompt_tokens=[*kv.tokens, kv.tokens[-1]],
        sampling=SamplingParams(temperature=0.0),
        max_tokens=1,
        timeout=timeout,
        kv=kv,
    )


def probe_outcome(finish: FinishEvent) -> None:
    """Raise unless the probe decoded: KVInvalidError for the snapshot's fault."""
    if finish.error_code == KV_INVALID:
        raise KVInvalidError(finish.error or "the KV state cannot be decoded", undecodable=True)
    if finish.reason in ("stop", "length") and finish.error is None:
        return
    raise BackendError(finish.error or f"the KV probe ended: {finish.reason}")


class KVTransfer:
    """The engine's KV import, export and reference layout (mixed into `LlamaCppEngine`,
    which supplies these attributes); everything here runs on the engine thread except
    `kv_reference` and `_check_snapshot`."""

    model: LlamaCppModel
    ctx: Any
    memory: llama_cpp.llama_memory_t
    unchecked_kv: bool
    _slots: list[Slot]
    _cond: threading.Condition
    _kv_reference: Future[StateLayout]
    _reference_wanted: bool
    _kv_layout: dict[str, str]

    def fingerprint(self) -> Mapping[str, str]:
        raise NotImplementedError

    def _rebuild(self, reason: str) -> None:
        raise NotImplementedError

    def _check_snapshot(self, kv: KVSnapshot, prompt: Sequence[int]) -> None:
        problem = fingerprint_mismatch(self.fingerprint(), kv.fingerprint)
        if problem:
            raise KVMismatchError(problem)
        n = len(kv.tokens)
        # Without the logits after its last token a snapshot must leave a token to decode.
        longest = len(prompt) if kv.logits else len(prompt) - 1
        if not n or n > longest or list(prompt[:n]) != list(kv.tokens):
            what = "a prefix" if kv.logits else "a proper prefix"
            raise KVMismatchError(
                f"the KV snapshot's {n} tokens are not {what} of this {len(prompt)}-token prompt"
            )

    def kv_reference(self, timeout: float) -> StateLayout:
        """This engine's own state layout (taken on the engine thread the first time)."""
        with self._cond:
            if not self._kv_reference.done():
                self._reference_wanted = True
                self._cond.notify()
        return self._kv_reference.result(timeout=timeout)

    def _reference_due(self) -> bool:
        return self._reference_wanted and any(s.job is None for s in self._slots)

    def _take_kv_reference(self) -> None:
        """Export a one-token state of this engine's own (kv_format.reference_layout) in the
        least recently used free slot, whose cached prefix it gives up."""
        self._reference_wanted = False
        slot = min((s for s in self._slots if s.job is None), key=lambda s: s.last_used)
        llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, -1, -1)
        slot.clear()
        try:
            token = max(self.model.bos_id, 0)
            blob = reference_state(self.ctx, self.memory, slot.seq_id, token)
            n_stream = int(self._kv_layout["n_stream"])
            self._kv_reference.set_result(reference_layout(blob, n_stream, self.model.n_vocab))
        except Exception as exc:  # KV uploads are then refused, saying why
            self._kv_reference.set_exception(exc)

    def _import(self, slot: Slot, kv: KVSnapshot) -> bool:
        """Load a snapshot into the slot's sequence; on failure the slot is left empty and
        the prompt is simply prefilled (uploads are validated and probed, so this is rare)."""
        slot.clear()
        if self.unchecked_kv:  # test hook: load as today's checks would never have let through
            load_sequence(self.ctx, self.memory, slot.seq_id, kv.data, len(kv.tokens), check=False)
        elif not load_sequence(self.ctx, self.memory, slot.seq_id, kv.data, len(kv.tokens)):
            if llama_cpp.llama_memory_seq_pos_max(self.memory, slot.seq_id) >= 0:
                self._rebuild("an imported KV state left cells that could not be removed")
            return False
        slot.cached = list(kv.tokens)
        slot.imported = True
        if kv.logits:
            slot.remember_logits(np.frombuffer(kv.logits, np.float32))
        return True

    def _export(self, slot: Slot, logits: np.ndarray) -> KVSnapshot:
        """The slot's sequence state, with the logits after its last token (`logits`)."""
        data = save_sequence(self.ctx, slot.seq_id)
        return KVSnapshot(self.fingerprint(), tuple(slot.cached), data, logits.tobytes())
