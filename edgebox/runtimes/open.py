"""Open a model on the runtime the selection policy picks (or the one `--runtime` names).

The I/O edge of `select.py`: detects the model's format on disk, asks the hardware probe and
`doctor`'s checks what this box has, calls `select_runtime`, and builds that runtime.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from edgebox.hardware.probe import HardwareProfile
from edgebox.models import ResolvedModel, resolve_model
from edgebox.models.bundled import Progress
from edgebox.models.resolve import default_alias
from edgebox.runtimes.base import BackendError, EmbeddingRuntime, Runtime
from edgebox.runtimes.select import (
    Installed,
    ModelSize,
    Selection,
    detect_model_format,
    select_runtime,
)

RUNTIME_CHOICES = ("auto", "llamacpp", "mlx", "onnx", "trtllm")
TRTLLM_SERVE_ENV = "EDGEBOX_TRTLLM_SERVE"  # the trtllm-serve command, when not on PATH


@dataclass(frozen=True)
class RuntimeOptions:
    """What `edgebox serve` lets a user set; each runtime takes the parts it understands."""

    n_ctx: int = 4096
    parallel: int = 0
    n_threads: int = 1
    prefill_chunk: int = 256
    max_queue: int = 64
    flash_attn: str = "auto"
    request_timeout: float | None = 600.0
    gpu_layers: int = -1  # -1: what fits (all, on most GPUs); else exactly this many
    verbose: bool = False
    embedding_batch: int = 32  # inputs per ONNX Runtime call
    cpu_extra_buffers: str = "auto"  # llama.cpp's repacked/AMX CPU weights: auto, on, off


def resolve_model_or_dir(
    spec: str | None, *, alias: str | None = None, progress: Progress | None = None
) -> ResolvedModel:
    """`resolve_model`, plus local model directories (MLX, TensorRT-LLM engines)."""
    local = Path(spec).expanduser() if spec else None
    if local is not None and local.is_dir():
        return ResolvedModel(local.resolve(), alias or default_alias(local), "file")
    return resolve_model(spec, alias=alias, progress=progress)


def _box() -> tuple[HardwareProfile, Installed]:
    from edgebox.hardware.probe import probe
    from edgebox.runtimes.doctor import check_runtimes, installed_runtimes

    profile = probe(measure=False)
    return profile, installed_runtimes(check_runtimes(profile))


def open_model(
    path: Path,
    *,
    name: str,
    requested: str = "auto",
    options: RuntimeOptions | None = None,
    box: tuple[HardwareProfile, Installed] | None = None,
    tokenizer: Path | None = None,
) -> tuple[Runtime | EmbeddingRuntime, Selection]:
    """Build the runtime for the model at `path`; BackendError says why it cannot be served."""
    options = options or RuntimeOptions()
    fmt = detect_model_format(path)
    if fmt is None:
        raise BackendError(
            f"{path} is not a model edgebox can serve: expected a .gguf or .onnx file, an MLX "
            "directory (config.json + *.safetensors) or a TensorRT-LLM engine directory "
            "(config.json + rank0.engine)"
        )
    profile, installed = box or _box()
    size = gguf_model_size(path) if fmt == "gguf" else None
    chosen = select_runtime(
        profile, fmt, installed, requested=requested, model_size=size, gpu_layers=options.gpu_layers
    )
    if chosen.runtime is None:
        raise BackendError(f"cannot serve {path.name}: {chosen.reason}")
    if chosen.runtime == "onnx":
        return _onnx(path, tokenizer, name, options), chosen
    return _build(chosen, path, name, options), chosen


def _onnx(
    path: Path, tokenizer: Path | None, name: str, options: RuntimeOptions
) -> EmbeddingRuntime:
    from edgebox.runtimes.onnx import OnnxEmbeddingRuntime

    if tokenizer is None:
        raise BackendError(f"{name}: an ONNX model needs the tokenizer.json it was trained with")
    return OnnxEmbeddingRuntime(
        path,
        tokenizer,
        name=name,
        threads=options.n_threads,
        max_queue=options.max_queue,
        batch_size=options.embedding_batch,
    )


def _build(chosen: Selection, path: Path, name: str, options: RuntimeOptions) -> Runtime:
    if chosen.runtime == "llamacpp":
        from edgebox.runtimes.llamacpp import EngineConfig, LlamaCppRuntime

        config = EngineConfig(
            n_ctx=options.n_ctx,
            parallel=options.parallel,
            n_threads=options.n_threads,
            prefill_chunk=options.prefill_chunk,
            max_queue=options.max_queue,
            flash_attn=options.flash_attn,
            request_timeout=options.request_timeout,
        )
        return LlamaCppRuntime(
            path,
            name=name,
            config=config,
            # the selection's count: --gpu-layers, else what fits (its reason says which)
            n_gpu_layers=int(chosen.settings.get("n_gpu_layers", options.gpu_layers)),
            verbose=options.verbose,
            cpu_extra_buffers=options.cpu_extra_buffers,
        )
    if chosen.runtime == "mlx":
        from edgebox.runtimes.mlx import MlxConfig, MlxRuntime

        mlx_config = MlxConfig(
            n_ctx=options.n_ctx,
            max_queue=options.max_queue,
            request_timeout=options.request_timeout,
        )
        return MlxRuntime(path, name=name, config=mlx_config)
    if chosen.runtime == "trtllm":
        from edgebox.runtimes.trtllm import TrtllmConfig, TrtllmRuntime

        trt = TrtllmConfig(max_queue=options.max_queue, request_timeout=options.request_timeout)
        if os.environ.get(TRTLLM_SERVE_ENV):
            trt = dataclasses.replace(trt, executable=os.environ[TRTLLM_SERVE_ENV])
        return TrtllmRuntime(path, name=name, config=trt)
    raise BackendError(
        f"the {chosen.runtime} runtime is not part of this edgebox build; "
        "serve a GGUF, MLX or TensorRT-LLM model"
    )


# GGUF metadata value types: fixed-size scalars by struct format, 8 = string, 9 = array.
_GGUF_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}


def _gguf_value(f: BinaryIO, kind: int) -> object:
    if kind in _GGUF_SCALARS:
        fmt = "<" + _GGUF_SCALARS[kind]
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
    if kind == 8:
        (n,) = struct.unpack("<Q", f.read(8))
        return f.read(n).decode("utf-8", errors="replace")
    if kind == 9:
        item, count = struct.unpack("<IQ", f.read(12))
        return [_gguf_value(f, item) for _ in range(count)]
    raise ValueError(f"unknown GGUF value type {kind}")


def gguf_model_size(path: Path) -> ModelSize | None:
    """The file's size and `<arch>.block_count` from the GGUF header; None if unreadable."""
    try:
        with path.open("rb") as f:
            magic, _version, _tensors, n_kv = struct.unpack("<4sIQQ", f.read(24))
            if magic != b"GGUF":
                return None
            values: dict[str, object] = {}
            for _ in range(n_kv):
                (n,) = struct.unpack("<Q", f.read(8))
                key = f.read(n).decode("utf-8", errors="replace")
                (kind,) = struct.unpack("<I", f.read(4))
                values[key] = _gguf_value(f, kind)
                arch = values.get("general.architecture")
                if arch and f"{arch}.block_count" in values:
                    layers = int(values[f"{arch}.block_count"])  # type: ignore[call-overload]
                    return ModelSize(path.stat().st_size, layers)
    except (OSError, ValueError, struct.error):
        return None
    return None
