"""One sequence's KV cells as bytes (llama_state_seq_*), and what those bytes depend on."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

import llama_cpp
import numpy as np

from edgebox.runtimes.base import BackendError
from edgebox.runtimes.llamacpp.model import captured_log

_GGML_TYPES = {
    0: "f32",
    1: "f16",
    2: "q4_0",
    3: "q4_1",
    6: "q5_0",
    7: "q5_1",
    8: "q8_0",
    30: "bf16",
}


def resolved_flash_attn(configured: str, log: Sequence[str]) -> str:
    """What `auto` became: llama.cpp logs its decision while creating the context."""
    if configured != "auto":
        return configured
    for line in log:
        if "Flash Attention" in line:
            return "off" if "disabled" in line else "on"
    return "auto"


def kv_layout(
    params: llama_cpp.llama_context_params, flash_attn: str, n_ctx_seq: int, parallel: int
) -> dict[str, str]:
    """The context settings a sequence's saved state depends on (fingerprint fields)."""
    return {
        "type_k": _GGML_TYPES.get(params.type_k, str(params.type_k)),
        "type_v": _GGML_TYPES.get(params.type_v, str(params.type_v)),
        "flash_attn": flash_attn,
        "swa_full": str(params.swa_full).lower(),
        "kv_unified": str(params.kv_unified).lower(),
        # a non-unified cache writes one stream per slot into every saved state
        "n_stream": str(1 if params.kv_unified else parallel),
        "n_ctx": str(n_ctx_seq),
    }


def save_sequence(ctx: llama_cpp.llama_context_p, seq_id: int) -> bytes:
    buf, written = _saved(ctx, seq_id)
    return buf[:written].tobytes()


def load_sequence(
    ctx: llama_cpp.llama_context_p,
    memory: llama_cpp.llama_memory_t,
    seq_id: int,
    data: bytes,
    n_tokens: int,
    *,
    check: bool = True,
) -> bool:
    """Load saved cells into `seq_id`; True only when they span positions 0..n_tokens-1.

    On False the sequence is emptied as far as `seq_rm` can (the bytes did not hold what
    their header claims); a cell at position INT32_MAX it cannot remove, so the caller checks.
    `check=False` (a test hook) loads and trusts whatever the bytes hold."""
    buf = np.frombuffer(data, np.uint8)  # read in place: llama.cpp only reads it
    return _load(ctx, memory, seq_id, buf, len(data), n_tokens, check=check)


def _load(
    ctx: llama_cpp.llama_context_p,
    memory: llama_cpp.llama_memory_t,
    seq_id: int,
    buf: np.ndarray,
    size: int,
    n_tokens: int,
    *,
    check: bool = True,
) -> bool:
    with captured_log():  # llama.cpp logs its own refusal; the caller reports it
        read = llama_cpp.llama_state_seq_set_data(ctx, _pointer(buf), size, seq_id)
    if not check:
        return read == size
    if (
        read == size
        and llama_cpp.llama_memory_seq_pos_min(memory, seq_id) == 0
        and llama_cpp.llama_memory_seq_pos_max(memory, seq_id) == n_tokens - 1
    ):
        return True
    llama_cpp.llama_memory_seq_rm(memory, seq_id, -1, -1)
    return False


def _saved(
    ctx: llama_cpp.llama_context_p, seq_id: int, into: np.ndarray | None = None
) -> tuple[np.ndarray, int]:
    """The sequence's state in `into` where it fits, else in a new buffer; the buffer and the
    state's length. Not zero-filled first: a ctypes array is, at ~2 GB/s (23 ms of a 46 MB
    state, 2,000 SmolLM2 cells, on a 2-core EPYC, against 5 ms to write the state)."""
    size = llama_cpp.llama_state_seq_get_size(ctx, seq_id)
    buf = into if into is not None and len(into) >= size else np.empty(size, np.uint8)
    written = llama_cpp.llama_state_seq_get_data(ctx, _pointer(buf), size, seq_id)
    if written == 0:
        raise BackendError("llama.cpp could not save the sequence's KV state")
    return buf, written


def _pointer(buf: np.ndarray) -> Any:
    return buf.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))


class MoveBuffers:
    """Two buffers for `swap_sequences`, kept between moves up to `keep` bytes each: a fresh
    46 MB buffer's pages cost more to fault in than the state costs to write (28-57 ms a move of
    2,000 SmolLM2 cells with new buffers, ~10 ms with kept ones, on a 2-core EPYC VM)."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.kept: list[np.ndarray | None] = [None, None]

    def save(self, ctx: llama_cpp.llama_context_p, seq_id: int, i: int) -> tuple[np.ndarray, int]:
        buf, written = _saved(ctx, seq_id, self.kept[i])
        if buf is not self.kept[i] and len(buf) <= self.keep:
            self.kept[i] = buf
        return buf, written


def swap_sequences(
    ctx: llama_cpp.llama_context_p,
    memory: llama_cpp.llama_memory_t,
    a: tuple[int, int],
    b: tuple[int, int],
    buffers: MoveBuffers,
) -> tuple[bool, bool]:
    """Exchange the cells of two sequences, each given as (seq_id, the tokens it holds at
    positions 0..n-1; 0 for none), through the saved-state format: bytes in proportion to the
    cells used (a cross-stream `llama_memory_seq_cp` copies the whole stream, and only at the
    next decode). Whether `a`'s cells moved to `b`, and whether `b`'s moved to `a`: `a`'s
    are never lost (they stay where they were unless they moved); `b`'s may be."""
    (a_id, a_n), (b_id, b_n) = a, b
    a_state = buffers.save(ctx, a_id, 0) if a_n else None
    b_state = buffers.save(ctx, b_id, 1) if b_n else None
    llama_cpp.llama_memory_seq_rm(memory, b_id, -1, -1)
    if a_state is not None and not _load(ctx, memory, b_id, *a_state, a_n):
        return False, False
    llama_cpp.llama_memory_seq_rm(memory, a_id, -1, -1)
    if b_state is None:
        return True, True
    return True, _load(ctx, memory, a_id, *b_state, b_n)


def reference_state(
    ctx: llama_cpp.llama_context_p, memory: llama_cpp.llama_memory_t, seq_id: int, token: int
) -> bytes:
    """The state of a one-token sequence (decoded in `seq_id`, then removed): what this
    context's saved states look like, layer by layer (kv_format.reference_layout)."""
    batch = llama_cpp.llama_batch_init(1, 0, 1)
    try:
        batch.n_tokens = 1
        batch.token[0], batch.pos[0], batch.n_seq_id[0] = token, 0, 1
        batch.seq_id[0][0] = seq_id
        batch.logits[0] = False
        rc = llama_cpp.llama_decode(ctx, batch)
        if rc != 0:
            raise BackendError(f"llama_decode returned {rc} for a one-token sequence")
        return save_sequence(ctx, seq_id)
    finally:
        llama_cpp.llama_memory_seq_rm(memory, seq_id, -1, -1)
        llama_cpp.llama_batch_free(batch)


def logits_finite(ctx: llama_cpp.llama_context_p, index: int, n_vocab: int) -> bool:
    """Whether the logits row `index` of the last decode holds only finite numbers."""
    ptr = llama_cpp.llama_get_logits_ith(ctx, index)
    if not ptr:
        return False
    row = np.ctypeslib.as_array(ptr, shape=(n_vocab,))
    return bool(np.isfinite(row).all())
