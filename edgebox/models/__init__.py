"""Where model files come from: bundled packages, local paths, or the Hugging Face cache."""

from edgebox.models.resolve import (
    BUNDLED,
    DEFAULT_EMBEDDING_MODEL,
    DEFAULT_MODEL,
    ModelNotAvailable,
    ResolvedModel,
    resolve_model,
)

__all__ = [
    "BUNDLED",
    "DEFAULT_EMBEDDING_MODEL",
    "DEFAULT_MODEL",
    "ModelNotAvailable",
    "ResolvedModel",
    "resolve_model",
]
