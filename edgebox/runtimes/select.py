"""Which runtime serves a model on this box, with which settings, and why.

`select_runtime` is a pure function of the hardware profile, the model's format and what is
installed, so every rule is tested over hand-built profiles. The rules, per format:

| format       | Apple Silicon        | NVIDIA                         | CPU only            |
|--------------|----------------------|--------------------------------|---------------------|
| `gguf`       | llama.cpp, Metal     | llama.cpp, CUDA, layers that fit | llama.cpp, CPU    |
| `mlx`        | mlx-lm, Metal        | mlx-lm, CPU backend            | mlx-lm, CPU backend |
| `trt-engine` | (needs NVIDIA)       | TensorRT-LLM (`trtllm-serve`)  | (needs NVIDIA)      |
| `onnx`       | ORT, CoreML EP       | ORT, TensorRT EP > CUDA EP     | ORT, CPU EP         |

A GPU path is taken only when the installed build can use it (llama-cpp-python built with
GPU offload, onnxruntime-gpu's providers); otherwise the reason says what is missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgebox.hardware.probe import HardwareProfile

ModelFormat = Literal["gguf", "mlx", "trt-engine", "onnx"]
RuntimeName = Literal["llamacpp", "mlx", "onnx", "trtllm"]
MODEL_FORMATS: tuple[ModelFormat, ...] = ("gguf", "mlx", "trt-engine", "onnx")
RUNTIMES: tuple[RuntimeName, ...] = ("llamacpp", "mlx", "onnx", "trtllm")

# Which format each runtime loads; an explicit `--runtime` must agree with the model.
RUNTIME_FORMAT: dict[RuntimeName, ModelFormat] = {
    "llamacpp": "gguf",
    "mlx": "mlx",
    "onnx": "onnx",
    "trtllm": "trt-engine",
}

# Best first; a provider is used only where the hardware can run it.
ONNX_PROVIDER_ORDER: tuple[tuple[str, str], ...] = (
    ("TensorrtExecutionProvider", "nvidia"),
    ("CUDAExecutionProvider", "nvidia"),
    ("CoreMLExecutionProvider", "apple"),
    ("CPUExecutionProvider", "any"),
)

INSTALL_HINT: dict[RuntimeName, str] = {
    "llamacpp": 'pip install "llama-cpp-python==0.3.36"',
    "mlx": 'pip install "edgebox[mlx]"',
    "onnx": "pip install onnxruntime",
    "trtllm": "pip install tensorrt-llm (on an NVIDIA GPU box; provides trtllm-serve)",
}


@dataclass(frozen=True)
class Installed:
    """What this box can run: importable runtimes and what their builds support."""

    runtimes: frozenset[str]  # names from RUNTIMES
    llama_gpu_offload: bool = False
    onnx_providers: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelSize:
    """What the offload rule needs to know about a GGUF: its bytes and its repeating layers."""

    bytes: int
    layers: int


# Of a discrete GPU's memory, the share weights may take; the rest holds the KV cache,
# CUDA context and compute buffers.
GPU_WEIGHT_SHARE = 0.8


def gpu_layers_that_fit(size: ModelSize | None, gpu_bytes: int | None) -> int:
    """-1 (all) when the weights fit in GPU_WEIGHT_SHARE of the GPU, else the layers that do.

    layers = floor(layers_total * GPU_WEIGHT_SHARE * gpu_bytes / model_bytes); unknown sizes
    and unified memory (GB10, Apple: the GPU shares host memory) mean all.
    """
    if size is None or gpu_bytes is None or size.bytes <= 0 or size.layers <= 0:
        return -1
    budget = GPU_WEIGHT_SHARE * gpu_bytes
    if size.bytes <= budget:
        return -1
    return int(size.layers * budget / size.bytes)


@dataclass(frozen=True)
class Selection:
    """The chosen runtime (None: this box cannot serve the format) and its settings."""

    model_format: str
    runtime: RuntimeName | None
    reason: str
    settings: Mapping[str, Any] = field(default_factory=dict)


def _platform(profile: HardwareProfile) -> str:
    if profile.hw_class.startswith("nvidia"):
        return "nvidia"
    return "apple" if profile.hw_class == "apple-silicon" else "cpu"


def _gpu_name(profile: HardwareProfile) -> str:
    cuda = [a.name for a in profile.accelerators if a.kind == "cuda"]
    return cuda[0] if cuda else "the GPU"


def _llamacpp(
    profile: HardwareProfile,
    installed: Installed,
    size: ModelSize | None = None,
    gpu_layers: int = -1,
) -> Selection:
    where = _platform(profile)
    if where in ("nvidia", "apple") and installed.llama_gpu_offload:
        backend = "CUDA" if where == "nvidia" else "Metal"
        target = _gpu_name(profile) if where == "nvidia" else "the Apple GPU"
        if gpu_layers == 0:
            return Selection(
                "gguf",
                "llamacpp",
                f"llama.cpp on CPU: --gpu-layers 0 keeps every layer off {target}",
                {"n_gpu_layers": 0, "backend": "cpu"},
            )
        cuda = [a for a in profile.accelerators if a.kind == "cuda" and not a.unified]
        fit = gpu_layers_that_fit(size, cuda[0].memory_total if cuda else None)
        layers = gpu_layers if gpu_layers > 0 else fit
        return Selection(
            "gguf",
            "llamacpp",
            f"llama.cpp with {backend}: {_offload(layers, size, target, gpu_layers > 0)}",
            {"n_gpu_layers": layers, "backend": backend.lower()},
        )
    if where in ("nvidia", "apple"):
        return Selection(
            "gguf",
            "llamacpp",
            "llama.cpp on CPU: this llama-cpp-python build has no GPU offload "
            "(`edgebox doctor` prints the rebuild command)",
            {"n_gpu_layers": 0, "backend": "cpu"},
        )
    return Selection(
        "gguf",
        "llamacpp",
        "llama.cpp on CPU (no GPU on this box)",
        {"n_gpu_layers": 0, "backend": "cpu"},
    )


def _offload(layers: int, size: ModelSize | None, target: str, asked: bool) -> str:
    """How much of the model goes to the GPU, in words; `asked`: --gpu-layers named `layers`."""
    why = f" (--gpu-layers {layers})" if asked else " (the rest does not fit)"
    if layers < 0 or (size is not None and layers >= size.layers):
        return f"every layer offloaded to {target}" + (why if asked else "")
    if size is None:
        return f"{layers} layers on {target}{why}"
    return f"{layers} of {size.layers} layers on {target}{why}"


def _mlx(profile: HardwareProfile, installed: Installed) -> Selection:
    if _platform(profile) == "apple":
        return Selection("mlx", "mlx", "mlx-lm on the Apple GPU (Metal)", {"device": "gpu"})
    return Selection(
        "mlx",
        "mlx",
        "mlx-lm on its CPU backend (MLX's GPU path is Apple Silicon only)",
        {"device": "cpu"},
    )


def _trtllm(profile: HardwareProfile, installed: Installed) -> Selection:
    return Selection(
        "trt-engine",
        "trtllm",
        f"TensorRT-LLM engine on {_gpu_name(profile)} through a supervised trtllm-serve "
        "(in-flight batching)",
        {"backend": "tensorrt"},
    )


def _onnx(profile: HardwareProfile, installed: Installed) -> Selection:
    where = _platform(profile)
    usable = [
        provider
        for provider, needs in ONNX_PROVIDER_ORDER
        if needs in ("any", where) and provider in installed.onnx_providers
    ]
    providers = usable or ["CPUExecutionProvider"]
    reason = f"ONNX Runtime with {providers[0]}"
    if where == "nvidia" and providers[0] == "CPUExecutionProvider":
        reason += " (this onnxruntime has no CUDA provider: install onnxruntime-gpu)"
    return Selection("onnx", "onnx", reason, {"providers": tuple(providers)})


_RULES = {"llamacpp": _llamacpp, "mlx": _mlx, "onnx": _onnx, "trtllm": _trtllm}
_DEFAULT_RUNTIME: dict[str, RuntimeName] = {fmt: rt for rt, fmt in RUNTIME_FORMAT.items()}


def select_runtime(
    profile: HardwareProfile,
    model_format: str,
    installed: Installed,
    *,
    requested: str = "auto",
    model_size: ModelSize | None = None,
    gpu_layers: int = -1,
) -> Selection:
    """The runtime for a model of `model_format` on this box; `requested` overrides `auto`,
    and `gpu_layers` (`serve --gpu-layers`; -1: what fits) llama.cpp's offload, so that the
    reason says what will run.

    Every format has exactly one runtime that loads it; the hardware decides how that runtime
    runs (GPU backend, offload, execution providers). A runtime that is not installed, a
    format the override cannot load, or hardware the format needs but lacks gives a Selection
    with `runtime=None` and a reason that says what to do.
    """
    if model_format not in _DEFAULT_RUNTIME:
        known = ", ".join(MODEL_FORMATS)
        return Selection(model_format, None, f"unknown model format {model_format!r} ({known})")
    runtime = _DEFAULT_RUNTIME[model_format]
    loads: dict[str, str] = {str(k): str(v) for k, v in RUNTIME_FORMAT.items()}
    if requested != "auto":
        if requested not in loads:
            choices = ", ".join((*RUNTIMES, "auto"))
            return Selection(model_format, None, f"unknown runtime {requested!r} ({choices})")
        if loads[requested] != model_format:
            return Selection(
                model_format,
                None,
                f"runtime {requested} loads {loads[requested]} models, not {model_format}; "
                f"use --runtime auto or {runtime}",
            )
    if runtime == "trtllm" and _platform(profile) != "nvidia":  # before any install advice
        return Selection(model_format, None, "a TensorRT-LLM engine needs an NVIDIA GPU")
    if runtime not in installed.runtimes:
        return Selection(model_format, None, f"{runtime} is not installed: {INSTALL_HINT[runtime]}")
    if runtime == "llamacpp":
        return _llamacpp(profile, installed, model_size, gpu_layers)
    return _RULES[runtime](profile, installed)


def detect_model_format(path: Path) -> ModelFormat | None:
    """The format of a model on disk, from its name and, for directories, its files."""
    if path.is_file():
        suffix = path.suffix.lower()
        return "gguf" if suffix == ".gguf" else "onnx" if suffix == ".onnx" else None
    if not path.is_dir() or not (path / "config.json").is_file():
        return None
    if (path / "rank0.engine").is_file():
        return "trt-engine"
    if any(path.glob("*.safetensors")):
        return "mlx"
    return None
