"""TensorRT-LLM runtime: a supervised `trtllm-serve` child for an engine directory."""

from edgebox.runtimes.trtllm.runtime import TrtllmConfig, TrtllmRuntime, trtllm_serve_command
from edgebox.runtimes.trtllm.supervisor import ServerSupervisor, ServerUnavailable, SupervisorConfig

__all__ = [
    "ServerSupervisor",
    "ServerUnavailable",
    "SupervisorConfig",
    "TrtllmConfig",
    "TrtllmRuntime",
    "trtllm_serve_command",
]
