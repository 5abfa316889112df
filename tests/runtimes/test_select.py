"""The runtime selection policy over hand-built hardware profiles (no probing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgebox.hardware.probe import Accelerator, HardwareProfile
from edgebox.runtimes.select import (
    Installed,
    ModelSize,
    detect_model_format,
    gpu_layers_that_fit,
    select_runtime,
)

GIB = 1 << 30


def profile(hw_class: str, *accelerators: Accelerator) -> HardwareProfile:
    apple = hw_class == "apple-silicon"
    return HardwareProfile(
        hw_class=hw_class,
        hostname="box",
        os="Darwin 24.0" if apple else "Linux 6.8",
        arch="arm64" if apple or hw_class == "nvidia-dgx-spark" else "x86_64",
        cpu_model="Apple M3 Max" if apple else "CPU",
        cores_physical=8,
        cores_logical=16,
        simd=(),
        memory_total=64 * GIB,
        memory_available=48 * GIB,
        unified_memory=hw_class in ("apple-silicon", "nvidia-dgx-spark"),
        bandwidth_gbps=400.0,
        bandwidth_source="spec:test",
        accelerators=accelerators,
    )


RTX = profile("nvidia-rtx", Accelerator("cuda", "NVIDIA GeForce RTX 4090", 24 * GIB, False, "8.9"))
SPARK = profile("nvidia-dgx-spark", Accelerator("cuda", "NVIDIA GB10", None, True, "12.1"))
H100 = profile("nvidia-datacenter", Accelerator("cuda", "NVIDIA H100 80GB HBM3", 80 * GIB, False))
MAC = profile("apple-silicon", Accelerator("metal", "Apple M3 Max", None, True))
CPU = profile("cpu")

ALL = frozenset({"llamacpp", "mlx", "onnx", "trtllm"})
GPU_BUILDS = Installed(
    ALL,
    llama_gpu_offload=True,
    onnx_providers=("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
)
CPU_BUILDS = Installed(ALL, llama_gpu_offload=False, onnx_providers=("CPUExecutionProvider",))
MAC_BUILDS = Installed(
    ALL, llama_gpu_offload=True, onnx_providers=("CoreMLExecutionProvider", "CPUExecutionProvider")
)
ONLY_LLAMA = Installed(frozenset({"llamacpp"}))

# (profile, format, installed, runtime, settings subset, words in the reason)
CASES = [
    (RTX, "gguf", GPU_BUILDS, "llamacpp", {"n_gpu_layers": -1, "backend": "cuda"}, "RTX 4090"),
    (SPARK, "gguf", GPU_BUILDS, "llamacpp", {"n_gpu_layers": -1}, "GB10"),
    (H100, "gguf", CPU_BUILDS, "llamacpp", {"n_gpu_layers": 0}, "no GPU offload"),
    (MAC, "gguf", MAC_BUILDS, "llamacpp", {"n_gpu_layers": -1, "backend": "metal"}, "Metal"),
    (MAC, "gguf", CPU_BUILDS, "llamacpp", {"n_gpu_layers": 0}, "no GPU offload"),
    (CPU, "gguf", GPU_BUILDS, "llamacpp", {"n_gpu_layers": 0, "backend": "cpu"}, "no GPU"),
    (MAC, "mlx", MAC_BUILDS, "mlx", {"device": "gpu"}, "Metal"),
    (CPU, "mlx", CPU_BUILDS, "mlx", {"device": "cpu"}, "CPU backend"),
    (RTX, "mlx", GPU_BUILDS, "mlx", {"device": "cpu"}, "Apple Silicon only"),
    (RTX, "trt-engine", GPU_BUILDS, "trtllm", {"backend": "tensorrt"}, "trtllm-serve"),
    (SPARK, "trt-engine", GPU_BUILDS, "trtllm", {}, "GB10"),
    (MAC, "trt-engine", MAC_BUILDS, None, {}, "needs an NVIDIA GPU"),
    (CPU, "trt-engine", CPU_BUILDS, None, {}, "needs an NVIDIA GPU"),
    (H100, "trt-engine", ONLY_LLAMA, None, {}, "pip install tensorrt-llm"),
    (
        RTX,
        "onnx",
        GPU_BUILDS,
        "onnx",
        {
            "providers": (
                "TensorrtExecutionProvider",
                "CUDAExecutionProvider",
                "CPUExecutionProvider",
            )
        },
        "Tensorrt",
    ),
    (RTX, "onnx", CPU_BUILDS, "onnx", {"providers": ("CPUExecutionProvider",)}, "onnxruntime-gpu"),
    (
        MAC,
        "onnx",
        MAC_BUILDS,
        "onnx",
        {"providers": ("CoreMLExecutionProvider", "CPUExecutionProvider")},
        "CoreML",
    ),
    # A CUDA provider is useless without an NVIDIA GPU, whatever the build lists.
    (CPU, "onnx", GPU_BUILDS, "onnx", {"providers": ("CPUExecutionProvider",)}, "CPUExecution"),
    (CPU, "onnx", ONLY_LLAMA, None, {}, "pip install onnxruntime"),
    (MAC, "mlx", ONLY_LLAMA, None, {}, "edgebox[mlx]"),
    (CPU, "gguf", Installed(frozenset()), None, {}, "llama-cpp-python"),
    (CPU, "safetensors", CPU_BUILDS, None, {}, "unknown model format"),
]


@pytest.mark.parametrize(("hw", "fmt", "installed", "runtime", "settings", "words"), CASES)
def test_auto_selection(hw, fmt, installed, runtime, settings, words) -> None:  # type: ignore[no-untyped-def]
    chosen = select_runtime(hw, fmt, installed)
    assert chosen.runtime == runtime, chosen.reason
    assert chosen.model_format == fmt
    assert {k: chosen.settings.get(k) for k in settings} == settings
    assert words in chosen.reason


@pytest.mark.parametrize(
    ("fmt", "requested", "runtime", "words"),
    [
        ("gguf", "llamacpp", "llamacpp", "llama.cpp"),
        ("mlx", "mlx", "mlx", "mlx-lm"),
        (
            "gguf",
            "mlx",
            None,
            "runtime mlx loads mlx models, not gguf; use --runtime auto or llamacpp",
        ),
        ("onnx", "trtllm", None, "loads trt-engine models"),
        ("gguf", "vllm", None, "unknown runtime 'vllm'"),
    ],
)
def test_explicit_runtime_must_load_the_format(fmt, requested, runtime, words) -> None:  # type: ignore[no-untyped-def]
    chosen = select_runtime(CPU, fmt, CPU_BUILDS, requested=requested)
    assert chosen.runtime == runtime
    assert words in chosen.reason


def test_formats_are_detected_from_the_files(tmp_path: Path) -> None:
    gguf = tmp_path / "m.Q4_K_M.gguf"
    gguf.write_bytes(b"GGUF")
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"")
    mlx = tmp_path / "mlx"
    mlx.mkdir()
    (mlx / "config.json").write_text("{}")
    (mlx / "model.safetensors").write_bytes(b"")
    engine = tmp_path / "engine"
    engine.mkdir()
    (engine / "config.json").write_text("{}")
    (engine / "rank0.engine").write_bytes(b"")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "model.safetensors").write_bytes(b"")  # no config.json: not a loadable model
    other = tmp_path / "notes.txt"
    other.write_text("")
    assert detect_model_format(gguf) == "gguf"
    assert detect_model_format(onnx) == "onnx"
    assert detect_model_format(mlx) == "mlx"
    assert detect_model_format(engine) == "trt-engine"
    assert detect_model_format(bare) is None
    assert detect_model_format(other) is None
    assert detect_model_format(tmp_path / "missing.gguf") is None


@pytest.mark.parametrize(
    ("size", "gpu", "layers"),
    [
        (ModelSize(4 * GIB, 32), 24 * GIB, -1),  # fits: all layers
        (ModelSize(40 * GIB, 80), 24 * GIB, 38),  # 80 * 0.8 * 24 / 40 = 38.4
        (ModelSize(200 * GIB, 100), 24 * GIB, 9),
        (None, 24 * GIB, -1),  # unknown model size: all
        (ModelSize(40 * GIB, 80), None, -1),  # unified memory: all
    ],
)
def test_gpu_layers_that_fit(size: ModelSize | None, gpu: int | None, layers: int) -> None:
    assert gpu_layers_that_fit(size, gpu) == layers


def test_a_gguf_larger_than_the_gpu_is_split() -> None:
    big = ModelSize(40 * GIB, 80)
    chosen = select_runtime(RTX, "gguf", GPU_BUILDS, model_size=big)
    assert chosen.settings["n_gpu_layers"] == 38
    assert "38 of 80 layers on NVIDIA GeForce RTX 4090" in chosen.reason
    # a GB10's GPU shares the host's memory: all layers
    assert select_runtime(SPARK, "gguf", GPU_BUILDS, model_size=big).settings["n_gpu_layers"] == -1
