"""The CPU extra-buffer probe's child process (see `cpu_probe`): run as
`python -m edgebox.runtimes.llamacpp._probe_child MODEL on|off`; exit 0 when a 64-token
prompt and four single tokens decode. A fault kills only this process."""

from __future__ import annotations

import ctypes
import os
import sys

import llama_cpp

from edgebox.runtimes.llamacpp.cpu_probe import (
    CHILD_ERROR,
    DECODE_FAILED,
    FAULT_HOOK_ENV,
    PROBE_TOKENS,
)
from edgebox.runtimes.llamacpp.model import LlamaCppModel


def run(model: str, extra: bool) -> int:
    """The probe itself: load with extra buffers `extra`, decode 64 tokens, then 4 more."""
    try:
        loaded = LlamaCppModel(model, n_gpu_layers=0, extra_buffers=extra)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = 2 * PROBE_TOKENS
        # one thread runs the same kernels (AMX tiles included) and does not stall on a
        # busy machine the way a spinning thread pool does
        params.n_threads = params.n_threads_batch = 1
        ctx = llama_cpp.llama_init_from_model(loaded.ptr, params)
        if not ctx:
            raise RuntimeError("llama_init_from_model failed")
        tokens = loaded.tokenize("The quick brown fox jumps over the lazy dog. " * 16)
    except Exception as exc:
        print(f"probe setup failed: {exc}", file=sys.stderr)
        return CHILD_ERROR
    if extra and os.environ.get(FAULT_HOOK_ENV) == "1":
        ctypes.string_at(0)  # SIGSEGV, as the AMX kernels do on a faulting CPU
    prompt = (llama_cpp.llama_token * PROBE_TOKENS)(*tokens[:PROBE_TOKENS])
    if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(prompt, PROBE_TOKENS)) != 0:
        return DECODE_FAILED
    for token in tokens[PROBE_TOKENS : PROBE_TOKENS + 4]:  # the single-token decode path
        one = (llama_cpp.llama_token * 1)(token)
        if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(one, 1)) != 0:
            return DECODE_FAILED
    llama_cpp.llama_free(ctx)
    loaded.close()
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1], sys.argv[2] == "on"))
