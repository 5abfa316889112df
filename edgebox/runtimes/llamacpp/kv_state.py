"""One sequence's KV cells as bytes (llama_state_seq_*), and what those bytes depend on."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

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
    size = llama_cpp.llama_state_seq_get_size(ctx, seq_id)
    buf = (ctypes.c_uint8 * size)()
    written = llama_cpp.llama_state_seq_get_data(ctx, buf, size, seq_id)
    if written == 0:
        raise BackendError("llama.cpp could not export the sequence's KV state")
    return ctypes.string_at(buf, written)


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
    buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
    with captured_log():  # llama.cpp logs its own refusal; the caller reports it
        read = llama_cpp.llama_state_seq_set_data(ctx, buf, len(data), seq_id)
    if not check:
        return read == len(data)
    if (
        read == len(data)
        and llama_cpp.llama_memory_seq_pos_min(memory, seq_id) == 0
        and llama_cpp.llama_memory_seq_pos_max(memory, seq_id) == n_tokens - 1
    ):
        return True
    llama_cpp.llama_memory_seq_rm(memory, seq_id, -1, -1)
    return False


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
