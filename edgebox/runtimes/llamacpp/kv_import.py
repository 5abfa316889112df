"""Checking an uploaded KV snapshot before any request may use it: its bytes parsed in
Python against this engine's own layout (kv_format), then a probe: the snapshot imported
into a free slot's sequence and one token decoded on top of it, which must give finite
logits. The probe's slot is emptied afterwards whatever happens (an imported slot is never
kept), so a refused snapshot leaves nothing behind."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgebox.runtimes.base import (
    BackendError,
    FinishEvent,
    GenerationRequest,
    KVInvalidError,
    KVSnapshot,
    SamplingParams,
)
from edgebox.runtimes.llamacpp.kv_format import KVFormatError, validate_state
from edgebox.runtimes.llamacpp.recovery import KV_INVALID

if TYPE_CHECKING:
    from edgebox.runtimes.llamacpp.engine import LlamaCppEngine

REFERENCE_WAIT_S = 60.0  # the engine exports its reference state first thing; this is slack


def validate(engine: LlamaCppEngine, kv: KVSnapshot) -> None:
    """Raise KVInvalidError unless the snapshot's bytes are exactly one sequence of its
    tokens' length at positions 0..n-1, shaped like this engine's own states."""
    if engine.unchecked_kv:
        return
    try:
        reference = engine.kv_reference.result(timeout=REFERENCE_WAIT_S)
    except Exception as exc:
        raise BackendError(f"this engine cannot check uploaded KV states: {exc}") from exc
    limits = (engine.n_ctx_seq - 1, engine.model.n_vocab)  # a request then adds a token
    try:
        validate_state(kv.data, reference, len(kv.tokens), limits)
    except KVFormatError as exc:
        raise KVInvalidError(f"the KV state does not hold what its header claims: {exc}") from exc


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
