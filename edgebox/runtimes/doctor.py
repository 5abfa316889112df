"""`edgebox doctor`: which runtimes this box can use, which fast path each model format takes,
and the exact command that enables each missing piece.

The fast paths come from the runtime selection policy (`runtimes/select.py`), the same
function `edgebox serve --runtime auto` calls, so doctor shows what serve will do. It lives with
the runtimes (it reports on installed software) and reads the hardware probe, which knows
nothing of runtimes.
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import asdict, dataclass, field
from typing import Any

from edgebox.hardware.probe import HardwareProfile
from edgebox.runtimes.select import MODEL_FORMATS, Installed, select_runtime

LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"


@dataclass(frozen=True)
class RuntimeCheck:
    runtime: str
    usable: bool
    detail: str
    enable: str | None = None  # command that makes it usable (or faster) here
    features: tuple[str, ...] = ()  # "gpu_offload"; ONNX Runtime's execution providers


@dataclass(frozen=True)
class FastPath:
    model_format: str
    runtime: str | None  # a `--runtime` value: llamacpp, mlx, onnx, trtllm
    reason: str
    settings: dict[str, Any] = field(default_factory=dict)


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _reinstall_llama(cmake: str) -> str:
    return f'CMAKE_ARGS="{cmake}" pip install --force-reinstall --no-cache-dir "{LLAMA_CPP_PYTHON}"'


def check_llama_cpp(profile: HardwareProfile) -> RuntimeCheck:
    if not _installed("llama_cpp"):
        return RuntimeCheck(
            "llama.cpp",
            False,
            "llama-cpp-python is not installed",
            f'pip install "{LLAMA_CPP_PYTHON}"',
        )
    try:
        # libgomp's wait policy must be set before llama_cpp loads it (see openmp.py)
        from edgebox.runtimes.llamacpp.openmp import keep_spinning_across_teams

        keep_spinning_across_teams()
        import llama_cpp
    except (ImportError, OSError, RuntimeError) as exc:  # e.g. a CUDA build without its driver
        return RuntimeCheck(
            "llama.cpp",
            False,
            f"llama-cpp-python fails to load: {exc}",
            f'pip install --force-reinstall "{LLAMA_CPP_PYTHON}"',
        )

    offload = bool(llama_cpp.llama_supports_gpu_offload())
    detail = f"llama-cpp-python {llama_cpp.__version__}, " + (
        "GPU offload built in" if offload else "CPU-only build"
    )
    enable: str | None = None
    if not offload and profile.hw_class.startswith("nvidia"):
        enable = _reinstall_llama("-DGGML_CUDA=on")
    elif not offload and profile.hw_class == "apple-silicon":
        enable = _reinstall_llama("-DGGML_METAL=on")
    features = ("gpu_offload",) if offload else ()
    return RuntimeCheck("llama.cpp", True, detail, enable, features)


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
    detail = "providers: " + ", ".join(providers)
    return RuntimeCheck("onnxruntime", True, detail, enable, tuple(providers))


def check_tensorrt_llm(profile: HardwareProfile) -> RuntimeCheck:
    """edgebox runs TensorRT-LLM engines through the `trtllm-serve` command it installs."""
    if not profile.hw_class.startswith("nvidia"):
        return RuntimeCheck("tensorrt-llm", False, "needs an NVIDIA GPU")
    serve = shutil.which("trtllm-serve")
    if serve:
        return RuntimeCheck("tensorrt-llm", True, f"trtllm-serve at {serve}")
    if _installed("tensorrt_llm"):
        missing = "tensorrt_llm is installed but trtllm-serve is not on PATH"
        return RuntimeCheck("tensorrt-llm", False, missing, "add its environment's bin/ to PATH")
    return RuntimeCheck(
        "tensorrt-llm", False, "tensorrt_llm is not installed", "pip install tensorrt-llm"
    )


def check_runtimes(profile: HardwareProfile) -> list[RuntimeCheck]:
    return [
        check(profile)
        for check in (check_llama_cpp, check_mlx, check_onnxruntime, check_tensorrt_llm)
    ]


_SELECT_NAME = {
    "llama.cpp": "llamacpp",
    "mlx": "mlx",
    "onnxruntime": "onnx",
    "tensorrt-llm": "trtllm",
}


def installed_runtimes(checks: list[RuntimeCheck]) -> Installed:
    """What the selection policy needs to know from the checks."""
    usable = {c.runtime: c for c in checks if c.usable}
    llama = usable.get("llama.cpp")
    ort = usable.get("onnxruntime")
    return Installed(
        runtimes=frozenset(_SELECT_NAME[name] for name in usable if name in _SELECT_NAME),
        llama_gpu_offload=llama is not None and "gpu_offload" in llama.features,
        onnx_providers=ort.features if ort else (),
    )


def fast_paths(profile: HardwareProfile, checks: list[RuntimeCheck]) -> list[FastPath]:
    """Which runtime each model format would use on this box, and why."""
    installed = installed_runtimes(checks)
    out = []
    for model_format in MODEL_FORMATS:
        chosen = select_runtime(profile, model_format, installed)
        out.append(FastPath(model_format, chosen.runtime, chosen.reason, dict(chosen.settings)))
    return out


def cpu_extra_buffers(checks: list[RuntimeCheck], *, run_probe: bool) -> dict[str, Any] | None:
    """Whether llama.cpp loads models with repacked/AMX CPU weights here (`cpu_probe`): forced
    by $EDGEBOX_CPU_EXTRA_BUFFERS, probed ok, faulted (so off), or not probed yet; None
    without a usable llama.cpp. `run_probe` runs the probe (a second or two) when none is cached.
    """
    if not any(c.runtime == "llama.cpp" and c.usable for c in checks):
        return None
    from edgebox.runtimes.llamacpp import cpu_probe

    try:
        decision = cpu_probe.status(run=run_probe)
    except ValueError as exc:  # a bad $EDGEBOX_CPU_EXTRA_BUFFERS
        return {"enabled": None, "status": "invalid", "detail": str(exc), "fallback": False}
    return {**decision.to_dict(), "cache": str(cpu_probe.cache_path())}


def report(profile: HardwareProfile, *, probe_cpu: bool = False) -> dict[str, Any]:
    checks = check_runtimes(profile)
    return {
        "hardware": profile.to_dict(),
        "runtimes": [asdict(c) for c in checks],
        "fast_paths": [asdict(p) for p in fast_paths(profile, checks)],
        "cpu_extra_buffers": cpu_extra_buffers(checks, run_probe=probe_cpu),
    }
