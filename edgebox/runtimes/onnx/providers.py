"""Which ONNX Runtime execution providers a session asks for, fastest first (pure policy).

Order: TensorRT → CUDA → CoreML → CPU, keeping only those `onnxruntime.get_available_providers()`
reports. ONNX Runtime assigns each graph node to the first provider in the list that supports
it, so an int8 node TensorRT cannot build falls to CUDA, then CPU. TensorRT builds an engine per
input shape profile, which takes seconds to minutes: engines and timing caches are kept on disk.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PREFERENCE = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CoreMLExecutionProvider",
    "CPUExecutionProvider",
)

ProviderSpec = tuple[str, dict[str, Any]]


def trt_cache_dir(env: dict[str, str] | None = None) -> Path:
    """$EDGEBOX_HOME/cache/trt, else ~/.edgebox/cache/trt."""
    env = dict(os.environ) if env is None else env
    home = Path(env["EDGEBOX_HOME"]) if env.get("EDGEBOX_HOME") else Path.home() / ".edgebox"
    return home.expanduser() / "cache" / "trt"


def choose_providers(
    available: Sequence[str], *, trt_cache: Path, device_id: int = 0
) -> list[ProviderSpec]:
    """The providers to pass to `InferenceSession`, each with its options; CPU always last."""
    chosen: list[ProviderSpec] = []
    for name in PREFERENCE:
        if name not in available and name != "CPUExecutionProvider":
            continue
        chosen.append((name, _options(name, trt_cache, device_id)))
    return chosen


def _options(name: str, trt_cache: Path, device_id: int) -> dict[str, Any]:
    if name == "TensorrtExecutionProvider":
        return {
            "device_id": device_id,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(trt_cache),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(trt_cache),
            "trt_fp16_enable": True,
        }
    if name == "CUDAExecutionProvider":
        return {"device_id": device_id}
    return {}
