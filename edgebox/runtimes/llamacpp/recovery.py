"""How the engine heals: a failed `llama_decode` is attributed to the sequence(s) that caused
it, those fail alone, and a context that cannot decode even one fresh sequence is rebuilt.

Attribution: every sequence of the failed step is rolled back to where the step began and
decoded again on its own. Those that decode continue (sampled, exported) as if nothing had
happened; those that fail again are the culprits. A culprit's request fails (400 `kv_invalid`
when its cells came from a client's snapshot, else 500 `decode_failed`) and its sequence is
emptied. If it cannot be emptied (a cell llama.cpp's `seq_rm` cannot reach), or an ordinary
culprit leaves a context that cannot decode one token in a fresh sequence, the context is
rebuilt: freed and created anew, every slot's cache forgotten, and the requests that were
running fed their tokens again (`Job.readmit`), so they continue where they were.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import llama_cpp

from edgebox.runtimes.base import BackendError, FinishReason, KVSnapshot
from edgebox.runtimes.llamacpp.model import LlamaCppModel
from edgebox.runtimes.llamacpp.slots import Part, Slot

log = logging.getLogger(__name__)

DEGRADED_HOLD_S = 5.0  # /health stays "degraded" this long after a failure was dealt with
KV_INVALID = "kv_invalid"
DECODE_FAILED = "decode_failed"


@dataclass
class EngineHealth:
    """What /health and /metrics say about the engine's recent trouble (read from any thread)."""

    decode_failures: int = 0  # failed llama_decode calls, retries included
    rebuilds: int = 0
    reason: str | None = None
    rebuilding: bool = False
    degraded_until: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def trouble(self, reason: str, *, failure: bool = False) -> None:
        with self._lock:
            self.decode_failures += failure
            self.reason = reason
            self.degraded_until = time.monotonic() + DEGRADED_HOLD_S

    def status(self) -> dict[str, str]:
        """{"status": "ok"} or {"status": "degraded", "reason": ...}."""
        with self._lock:
            if self.rebuilding or time.monotonic() < self.degraded_until:
                return {"status": "degraded", "reason": self.reason or "recovering"}
            return {"status": "ok"}


class Healing:
    """The engine's recovery steps (mixed into `LlamaCppEngine`, which supplies these)."""

    model: LlamaCppModel
    ctx: Any  # llama_context_p; None after close or a failed rebuild
    memory: llama_cpp.llama_memory_t
    health: EngineHealth
    _slots: list[Slot]
    _batch: Any  # llama_batch (ctypes' stubs cannot type its nested arrays)
    _params: llama_cpp.llama_context_params

    def _decode(self, parts: Sequence[Part]) -> tuple[int, list[tuple[Part, int]]]:
        raise NotImplementedError

    def _after_decode(self, parts: Sequence[tuple[Part, int]]) -> None:
        raise NotImplementedError

    def _release(
        self,
        slot: Slot,
        reason: FinishReason,
        error: str | None = None,
        kv: KVSnapshot | None = None,
        code: str | None = None,
    ) -> None:
        raise NotImplementedError

    def _decode_failed(self, parts: Sequence[Part], rc: int) -> None:
        """Attribute a failed step to its culprit sequences; the others go on."""
        self.health.trouble(f"llama_decode returned {rc}", failure=True)
        log.warning(
            "llama_decode returned %d for %d sequences; retrying each alone", rc, len(parts)
        )
        for part in parts:
            self._rollback(part)
        culprits = list(parts)
        if len(parts) > 1:
            culprits = []
            for part in parts:
                rc_alone, rows = self._decode([part])
                if rc_alone == 0:
                    self._after_decode(rows)
                else:
                    self.health.trouble(f"llama_decode returned {rc_alone}", failure=True)
                    self._rollback(part)
                    culprits.append(part)
        broken = [self._fail_culprit(part.slot, rc) for part in culprits]
        if any(broken):
            self._rebuild(f"a sequence's cells could not be cleared after llama_decode {rc}")

    def _rollback(self, part: Part) -> None:
        """Drop whatever cells the failed step left at or after the part's first position."""
        llama_cpp.llama_memory_seq_rm(self.memory, part.slot.seq_id, part.start, -1)

    def _fail_culprit(self, slot: Slot, rc: int) -> bool:
        """Fail the slot's request; True when the context must be rebuilt."""
        imported = slot.imported
        if imported:
            code, error = KV_INVALID, "the uploaded KV snapshot could not be decoded"
        else:
            code, error = DECODE_FAILED, f"llama.cpp could not decode this sequence (code {rc})"
        self._release(slot, "error", error=error, code=code)
        llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, -1, -1)
        slot.clear()
        if llama_cpp.llama_memory_seq_pos_max(self.memory, slot.seq_id) >= 0:
            return True  # cells seq_rm cannot remove: only a new context is clean
        # A client's snapshot explains its own failure; an ordinary sequence's may not.
        return not imported and not self._fresh_sequence_decodes(slot)

    def _fresh_sequence_decodes(self, slot: Slot) -> bool:
        """Whether the context still decodes one token in the (now empty) slot's sequence."""
        batch = self._batch
        batch.n_tokens = 1
        batch.token[0] = max(self.model.bos_id, 0)
        batch.pos[0] = 0
        batch.n_seq_id[0] = 1
        batch.seq_id[0][0] = slot.seq_id
        batch.logits[0] = True
        ok = llama_cpp.llama_decode(self.ctx, batch) == 0
        llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, -1, -1)
        return ok

    def _rebuild(self, reason: str) -> None:
        """Free the context and create it anew; running requests are fed their tokens again."""
        self.health.rebuilding = True
        self.health.trouble(f"rebuilding the llama.cpp context: {reason}")
        log.warning("rebuilding the llama.cpp context: %s", reason)
        try:
            if self.ctx:
                llama_cpp.llama_free(self.ctx)
            ctx = llama_cpp.llama_init_from_model(self.model.ptr, self._params)
            if not ctx:
                self.ctx = None
                raise BackendError("could not create the llama.cpp context again")
            self.ctx, self.memory = ctx, llama_cpp.llama_get_memory(ctx)
            for slot in self._slots:
                held = slot.cached
                slot.clear()
                if slot.job is not None and slot.job.probe:  # its snapshot's cells are gone
                    self._release(slot, "error", error="the engine was rebuilt; upload again")
                elif slot.job is not None:
                    slot.job.readmit(held)
            self.health.rebuilds += 1
        finally:
            self.health.rebuilding = False
            self.health.trouble(f"rebuilt the llama.cpp context: {reason}")
