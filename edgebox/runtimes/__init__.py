"""Backend adapters: each runtime serves one model behind the small interface in `base`."""

from edgebox.runtimes.base import (
    Capabilities,
    ContextLengthError,
    FinishEvent,
    GrammarError,
    GenerationRequest,
    ModelInfo,
    QueueFullError,
    RequestHandle,
    Runtime,
    BackendError,
    RuntimeStats,
    SamplingParams,
    TokenEvent,
    TokenLogprob,
)

__all__ = [
    "Capabilities",
    "ContextLengthError",
    "FinishEvent",
    "GrammarError",
    "GenerationRequest",
    "ModelInfo",
    "QueueFullError",
    "RequestHandle",
    "Runtime",
    "BackendError",
    "RuntimeStats",
    "SamplingParams",
    "TokenEvent",
    "TokenLogprob",
]
