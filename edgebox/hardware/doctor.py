"""`edgebox doctor`: which runtimes this box can use, which fast path each model format takes,
and the exact command that enables each missing piece."""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass
from typing import Any

from edgebox.hardware.probe import HardwareProfile

LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"


@dataclass(frozen=True)
class RuntimeCheck:
    runtime: str
    usable: bool
    detail: str
    enable: str | None = None  # command that makes it usable (or faster) here


@dataclass(frozen=True)
class FastPath:
    model_format: str
    runtime: str | None
    reason: str


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _reinstall_llama(cmake: str) -> str:
    return f'CMAKE_ARGS="{cmake}" pip install --force-reinstall --no-cache-dir "{LLAMA_CPP_PYTHON}"'


def check_llama_cpp(profile: HardwareProfile) -> RuntimeCheck:
    if not _installed("llama_cpp"):
        return RuntimeCheck("llama.cpp", False, "llama-cpp-python is not installed",
                            f'pip install "{LLAMA_CPP_PYTHON}"')  # fmt: skip
    try:
        import llama_cpp
    except (ImportError, OSError, RuntimeError) as exc:  # e.g. a CUDA build without its driver
        return RuntimeCheck("llama.cpp", False, f"llama-cpp-python fails to load: {exc}",
                            f'pip install --force-reinstall "{LLAMA_CPP_PYTHON}"')  # fmt: skip

    offload = bool(llama_cpp.llama_supports_gpu_offload())
    detail = f"llama-cpp-python {llama_cpp.__version__}, " + (
        "GPU offload built in" if offload else "CPU-only build"
    )
    enable: str | None = None
    if not offload and profile.hw_class.startswith("nvidia"):
        enable = _reinstall_llama("-DGGML_CUDA=on")
    elif not offload and profile.hw_class == "apple-silicon":
        enable = _reinstall_llama("-DGGML_METAL=on")
    return RuntimeCheck("llama.cpp", True, detail, enable)


def check_mlx(profile: HardwareProfile) -> RuntimeCheck:
    apple = profile.hw_class == "apple-silicon"
    if _installed("mlx_lm"):
        return RuntimeCheck("mlx", True, "mlx-lm installed" + ("" if apple else " (CPU backend)"))
    enable = "pip install mlx-lm" if apple else 'pip install "mlx[cpu]" mlx-lm'
    return RuntimeCheck("mlx", False, "mlx-lm is not installed", enable)


def check_onnxruntime(profile: HardwareProfile) -> RuntimeCheck:
    nvidia = profile.hw_class.startswith("nvidia")
    if not _installed("onnxruntime"):
        install = "pip install onnxruntime-gpu tensorrt" if nvidia else "pip install onnxruntime"
        return RuntimeCheck("onnxruntime", False, "onnxruntime is not installed", install)
    try:
        import onnxruntime
    except (ImportError, OSError, RuntimeError) as exc:
        return RuntimeCheck("onnxruntime", False, f"onnxruntime fails to load: {exc}")

    providers = onnxruntime.get_available_providers()
    enable: str | None = None
    if nvidia and "CUDAExecutionProvider" not in providers:
        enable = "pip uninstall -y onnxruntime && pip install onnxruntime-gpu tensorrt"
    return RuntimeCheck("onnxruntime", True, "providers: " + ", ".join(providers), enable)


def check_tensorrt_llm(profile: HardwareProfile) -> RuntimeCheck:
    if _installed("tensorrt_llm"):
        return RuntimeCheck("tensorrt-llm", True, "tensorrt_llm installed")
    if profile.hw_class.startswith("nvidia"):
        return RuntimeCheck("tensorrt-llm", False, "tensorrt_llm is not installed",
                            "pip install tensorrt-llm")  # fmt: skip
    return RuntimeCheck("tensorrt-llm", False, "needs an NVIDIA GPU")


def check_runtimes(profile: HardwareProfile) -> list[RuntimeCheck]:
    return [
        check(profile)
        for check in (check_llama_cpp, check_mlx, check_onnxruntime, check_tensorrt_llm)
    ]


def fast_paths(profile: HardwareProfile, checks: list[RuntimeCheck]) -> list[FastPath]:
    """Which runtime each model format would use on this box, and why."""
    usable = {c.runtime: c for c in checks if c.usable}
    out = []
    llama = usable.get("llama.cpp")
    if llama is None:
        out.append(FastPath("gguf", None, "llama-cpp-python is not installed"))
    else:
        accel = "GPU offload" if "GPU offload" in llama.detail else "CPU"
        out.append(FastPath("gguf", "llama.cpp", f"llama.cpp on {accel}"))
    if "mlx" in usable:
        where = "Metal" if profile.hw_class == "apple-silicon" else "CPU (mlx[cpu])"
        out.append(FastPath("mlx", "mlx", f"mlx-lm on {where}"))
    else:
        out.append(FastPath("mlx", None, "mlx-lm is not installed"))
    ort = usable.get("onnxruntime")
    if ort is None:
        out.append(FastPath("onnx", None, "onnxruntime is not installed"))
    else:
        order = ("TensorrtExecutionProvider", "CUDAExecutionProvider",
                 "CoreMLExecutionProvider", "CPUExecutionProvider")  # fmt: skip
        best = next((p for p in order if p in ort.detail), "CPUExecutionProvider")
        out.append(FastPath("onnx", "onnxruntime", f"ONNX Runtime with {best}"))
    if "tensorrt-llm" in usable:
        out.append(FastPath("trt-engine", "tensorrt-llm", "TensorRT-LLM engine"))
    else:
        out.append(FastPath("trt-engine", None, "tensorrt_llm is not installed"))
    return out


def report(profile: HardwareProfile) -> dict[str, Any]:
    checks = check_runtimes(profile)
    return {
        "hardware": profile.to_dict(),
        "runtimes": [asdict(c) for c in checks],
        "fast_paths": [asdict(p) for p in fast_paths(profile, checks)],
    }
