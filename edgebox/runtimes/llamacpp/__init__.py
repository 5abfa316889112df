"""llama.cpp backend (GGUF models; CPU, CUDA or Metal, whichever llama-cpp-python was built for)."""

from edgebox.runtimes.llamacpp.engine import EngineConfig, LlamaCppEngine
from edgebox.runtimes.llamacpp.model import LlamaCppModel
from edgebox.runtimes.llamacpp.runtime import LlamaCppRuntime

__all__ = ["EngineConfig", "LlamaCppEngine", "LlamaCppModel", "LlamaCppRuntime"]
