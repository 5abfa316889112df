"""Moving sequences between the engine's slots (`SlotMoves`, mixed into `LlamaCppEngine`).

With the KV cache split per sequence, llama.cpp decodes sequences in one ubatch only where
their ids run consecutively (`slots.runs_with`). A request that ends in the middle of a run
leaves the others in two ubatches a step until they end; a busy sequence moves into a free slot
that joins them again (`_close_gaps`). A new conversation placed on a cached slot for being next
to the busy ones moves that cache where the request would otherwise have gone (`_spare_cache`).
Either way the cells go through llama.cpp's saved-state format (`kv_state.swap_sequences`), and
no conversation's cache is evicted that would not have been anyway.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from edgebox.runtimes.base import BackendError
from edgebox.runtimes.llamacpp.kv_state import MoveBuffers, swap_sequences
from edgebox.runtimes.llamacpp.model import LlamaCppModel
from edgebox.runtimes.llamacpp.slots import (
    Slot,
    evictee,
    gap_move,
    swap_contents,
    worth_moving,
)

log = logging.getLogger(__name__)

# A first guess at what moving a sequence's cells costs, per cell of both slots (a 2-core EPYC
# took 4-17 us a cell for SmolLM2; larger models' cells hold more), until moves measure it;
# those of at least this many cells do.
MOVE_S_PER_CELL = 20e-6
MOVE_SAMPLE_CELLS = 64
MOVE_BUFFER_BYTES = 64 << 20  # what each of the two buffers moves go through may keep


class SlotMoves:
    """The engine's moves between slots (mixed into `LlamaCppEngine`, which supplies these)."""

    model: LlamaCppModel
    ctx: Any  # llama_context_p; None after close or a failed rebuild
    memory: Any  # llama_memory_t
    n_ctx_seq: int
    decode_step_s: float  # `stepping.Stepping`'s average of steps without prompt tokens
    _slots: list[Slot]
    _cond: threading.Condition

    def _init_moves(self) -> None:
        # The most cells a busy sequence may hold to move between slots: a saved state keeps
        # only the window of sliding-window layers (llama.cpp drops the cells masked there),
        # so a longer sequence would lose what a shorter prefix of it needs; a recurrent state
        # is not cells at all. 0: none moves.
        model = self.model
        self._move_cells = 0 if model.recurrent else (model.n_swa or self.n_ctx_seq)
        self._move_s_per_cell = MOVE_S_PER_CELL  # learned from each move (`_exchange`)
        self._buffers = MoveBuffers(MOVE_BUFFER_BYTES)

    def _close_gaps(self) -> None:
        """Where a request in the middle of a run of busy slots has ended and no new one took
        its slot, move a busy sequence into a free slot that joins the runs again (`gap_move`):
        each run of consecutive ids is a ubatch of its own. The free slot's cache moves the
        other way. ~2 ms for 300 cells of SmolLM2 and ~10 ms for 2,000 on a 2-core EPYC, where
        a step's extra ubatch costs ~7 ms at four streams (`benchmarks/bench_ended_streams.py`);
        `worth_moving` weighs each move. Only this thread changes the slots' jobs and touches
        the cells, so the copy runs outside the lock; the slots exchange their contents under
        it. `_step` calls it once the requests it ends before decoding (cancelled, overdue,
        ended by kept logits) are released: none of them is copied only to be dropped, and the
        runs are the ones the step decodes."""
        move = gap_move(self._slots, self._move_cells)
        if move is not None and worth_moving(
            *move, self._move_s_per_cell, self.decode_step_s, self.n_ctx_seq
        ):
            self._exchange(*move)

    def _spare_cache(self, slot: Slot, free: list[Slot]) -> None:
        """`slot`, chosen next to the busy ones for a request that shares none of its cache:
        that cache moves into the slot the request would have taken otherwise (`evictee`: an
        empty one, else the least recently used), whose cache goes instead; a conversation that
        only ended a moment ago keeps its history."""
        other = evictee(slot, free)
        if other is not None and len(slot.cached) <= self._move_cells:
            self._exchange(slot, other, keep_b=False)

    def _exchange(self, a: Slot, b: Slot, *, keep_b: bool = True) -> None:
        """Exchange the cells of two slots, then everything else they hold; with `keep_b`
        False, `b`'s cache is dropped instead of moving to `a`. The cells go through llama.cpp's
        saved-state format (`kv_state.swap_sequences`); `a`'s are never lost. Where llama.cpp
        could not, `a` keeps what it holds and no sequence moves from then on."""
        if self.ctx is None:  # a rebuild failed: the running requests fail this step
            return
        t = time.perf_counter()
        b_cells = len(b.cached) if keep_b else 0
        try:
            moved, kept = swap_sequences(
                self.ctx, self.memory, (a.seq_id, len(a.cached)), (b.seq_id, b_cells), self._buffers
            )
        except BackendError as exc:  # nothing was changed
            moved, kept = False, True
            log.warning("could not save sequence %d or %d: %s", a.seq_id, b.seq_id, exc)
        took = time.perf_counter() - t
        cells = len(a.cached) + b_cells
        if moved and cells >= MOVE_SAMPLE_CELLS:
            self._move_s_per_cell += 0.5 * (took / cells - self._move_s_per_cell)
        with self._cond:
            if not moved:  # runs stay split, caches are evicted, from now on
                log.warning("sequences stay in their slots: could not move %d", a.seq_id)
                self._move_cells = 0
                if not kept:
                    b.clear()
                return
            swap_contents(a, b)
            if not kept or not keep_b:
                a.clear()
        log.debug(
            "moved sequence %d to %d (%d cells, %d back) in %.1f ms",
            a.seq_id,
            b.seq_id,
            len(b.cached),
            len(a.cached),
            1000 * took,
        )
