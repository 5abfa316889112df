"""Open the runtime that serves one resolved model: the one place runtimes are constructed.

Which runtime a model gets (`runtime_name`) is decided by the caller; without one, the file
format decides: GGUF → llama.cpp, ONNX → ONNX Runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edgebox.runtimes.base import BackendError, EmbeddingRuntime, Runtime
from edgebox.runtimes.llamacpp.engine import EngineConfig

if TYPE_CHECKING:
    from edgebox.models import ResolvedModel

RUNTIME_FOR_FORMAT = {"gguf": "llamacpp", "onnx": "onnx"}


@dataclass(frozen=True)
class RuntimeConfig:
    """Settings from `edgebox serve`; each runtime takes the ones it understands."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    gpu_layers: int = -1
    verbose: bool = False
    embedding_batch: int = 32  # inputs per ONNX Runtime call


def open_runtime(
    model: ResolvedModel, runtime_name: str | None = None, config: RuntimeConfig | None = None
) -> Runtime | EmbeddingRuntime:
    """Load `model` on `runtime_name` (default: by file format). Raises BackendError."""
    config = config or RuntimeConfig()
    name = runtime_name or RUNTIME_FOR_FORMAT.get(model.format)
    if name == "llamacpp":
        from edgebox.runtimes.llamacpp import LlamaCppRuntime

        return LlamaCppRuntime(
            model.path,
            name=model.alias,
            config=config.engine,
            n_gpu_layers=config.gpu_layers,
            verbose=config.verbose,
        )
    if name == "onnx":
        from edgebox.runtimes.onnx import OnnxEmbeddingRuntime

        if model.tokenizer is None:
            raise BackendError(f"{model.alias}: an ONNX model needs a tokenizer.json beside it")
        return OnnxEmbeddingRuntime(
            model.path,
            model.tokenizer,
            name=model.alias,
            threads=config.engine.n_threads,
            max_queue=config.engine.max_queue,
            batch_size=config.embedding_batch,
        )
    known = ", ".join(sorted(set(RUNTIME_FOR_FORMAT.values())))
    raise BackendError(
        f"no runtime for {model.alias} ({model.path.name}, runtime {name or 'unknown'}); "
        f"known runtimes: {known}"
    )
