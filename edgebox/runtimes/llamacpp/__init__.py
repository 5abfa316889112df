"""llama.cpp backend (GGUF models; CPU, CUDA or Metal, whichever llama-cpp-python was built for)."""

from edgebox.runtimes.llamacpp.openmp import keep_spinning_across_teams

keep_spinning_across_teams()  # before llama-cpp-python (and libgomp) load: see openmp.py

from edgebox.runtimes.llamacpp.engine import EngineConfig, LlamaCppEngine  # noqa: E402
from edgebox.runtimes.llamacpp.model import LlamaCppModel  # noqa: E402
from edgebox.runtimes.llamacpp.runtime import LlamaCppRuntime  # noqa: E402

__all__ = ["EngineConfig", "LlamaCppEngine", "LlamaCppModel", "LlamaCppRuntime"]
