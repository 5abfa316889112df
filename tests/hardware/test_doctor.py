"""`edgebox doctor`'s view of installed runtimes, fed to the selection policy."""

from __future__ import annotations

from edgebox.runtimes.doctor import RuntimeCheck, fast_paths, installed_runtimes
from tests.runtimes.test_select import MAC, RTX

GPU_CHECKS = [
    RuntimeCheck(
        "llama.cpp",
        True,
        "llama-cpp-python 0.3.36, GPU offload built in",
        features=("gpu_offload",),
    ),
    RuntimeCheck("mlx", False, "mlx-lm is not installed", "pip install mlx-lm"),
    RuntimeCheck(
        "onnxruntime",
        True,
        "providers: CUDAExecutionProvider, CPUExecutionProvider",
        features=("CUDAExecutionProvider", "CPUExecutionProvider"),
    ),
    RuntimeCheck("tensorrt-llm", True, "trtllm-serve at /usr/local/bin/trtllm-serve"),
]


def test_checks_become_the_policy_inputs() -> None:
    installed = installed_runtimes(GPU_CHECKS)
    assert installed.runtimes == {"llamacpp", "onnx", "trtllm"}
    assert installed.llama_gpu_offload
    assert installed.onnx_providers == ("CUDAExecutionProvider", "CPUExecutionProvider")


def test_fast_paths_on_an_rtx_box() -> None:
    paths = {p.model_format: p for p in fast_paths(RTX, GPU_CHECKS)}
    assert paths["gguf"].runtime == "llamacpp" and paths["gguf"].settings["n_gpu_layers"] == -1
    assert "RTX 4090" in paths["gguf"].reason
    assert paths["trt-engine"].runtime == "trtllm"
    assert paths["onnx"].settings["providers"] == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert paths["mlx"].runtime is None and "edgebox[mlx]" in paths["mlx"].reason


def test_fast_paths_on_a_mac_keep_cuda_providers_out() -> None:
    paths = {p.model_format: p for p in fast_paths(MAC, GPU_CHECKS)}
    assert paths["gguf"].settings["backend"] == "metal"
    assert paths["onnx"].settings["providers"] == ("CPUExecutionProvider",)
    assert paths["trt-engine"].runtime is None
