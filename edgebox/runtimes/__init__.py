"""Backend adapters: each runtime serves one model behind the small interface in `base`."""

from edgebox.runtimes.base import (
    BackendError,
    Capabilities,
    ContextLengthError,
    EmbeddingRuntime,
    Embeddings,
    FinishEvent,
    GenerationRequest,
    GrammarError,
    ModelInfo,
    QueueFullError,
    RequestHandle,
    Runtime,
    RuntimeStats,
    SamplingParams,
    TokenEvent,
    TokenLogprob,
)

__all__ = [
    "BackendError",
    "Capabilities",
    "ContextLengthError",
    "EmbeddingRuntime",
    "Embeddings",
    "FinishEvent",
    "GenerationRequest",
    "GrammarError",
    "ModelInfo",
    "QueueFullError",
    "RequestHandle",
    "Runtime",
    "RuntimeStats",
    "SamplingParams",
    "TokenEvent",
    "TokenLogprob",
]
