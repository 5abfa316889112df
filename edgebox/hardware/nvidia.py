"""NVIDIA GPUs through NVML (nvidia-ml-py): what they are, and how they are doing now.

On a DGX Spark (GB10) the GPU has no memory of its own: `nvmlDeviceGetMemoryInfo` answers
NOT_SUPPORTED, so memory is reported as unified: the system's MemTotal, with the GPU's share
as the sum of its processes' usage. Tested against replayed NVML answers (an RTX 4090 and a
GB10); not yet verified on the hardware itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import psutil

from edgebox.hardware.bandwidth import gpu_bandwidth_gbps
from edgebox.hardware.probe import Accelerator


@dataclass(frozen=True)
class GpuSample:
    index: int
    name: str
    utilization_pct: float | None
    memory_used: int | None  # bytes
    memory_total: int | None
    memory_unified: bool
    temperature_c: float | None
    power_w: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_nvml() -> Any | None:
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _maybe(nvml: Any, fn: str, *args: Any) -> Any:
    """An NVML query that some devices do not support: None instead of an error."""
    try:
        return getattr(nvml, fn)(*args)
    except nvml.NVMLError:
        return None


class _Session:
    """nvmlInit/nvmlShutdown around a block; falsy when NVML is not available."""

    def __init__(self, nvml: Any) -> None:
        self.nvml: Any = nvml
        self.ok = False

    def __enter__(self) -> _Session:
        if self.nvml is not None:
            try:
                self.nvml.nvmlInit()
                self.ok = True
            except self.nvml.NVMLError:  # no driver, no library, no device
                self.ok = False
        return self

    def __exit__(self, *exc: object) -> None:
        if self.ok:
            self.nvml.nvmlShutdown()


def _memory(nvml: Any, handle: Any) -> tuple[int | None, int | None, bool]:
    """(used, total, unified) in bytes."""
    try:
        info = nvml.nvmlDeviceGetMemoryInfo(handle)
        return int(info.used), int(info.total), False
    except nvml.NVMLError as exc:
        if getattr(exc, "value", None) != nvml.NVML_ERROR_NOT_SUPPORTED:
            return None, None, False
    used = 0
    for query in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
        for proc in _maybe(nvml, query, handle) or ():
            used += int(getattr(proc, "usedGpuMemory", 0) or 0)
    return used, psutil.virtual_memory().total, True


def nvidia_accelerators(nvml: Any | None = None) -> tuple[Accelerator, ...]:
    lib: Any = nvml if nvml is not None else load_nvml()
    with _Session(lib) as session:
        if not session.ok:
            return ()
        nvml = lib
        driver = _text(_maybe(nvml, "nvmlSystemGetDriverVersion") or "") or None
        out = []
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            _, total, unified = _memory(nvml, handle)
            cc = _maybe(nvml, "nvmlDeviceGetCudaComputeCapability", handle)
            out.append(
                Accelerator(
                    kind="cuda",
                    name=_text(nvml.nvmlDeviceGetName(handle)),
                    memory_total=None if unified else total,
                    unified=unified,
                    compute_capability=f"{cc[0]}.{cc[1]}" if cc else None,
                    driver=driver,
                )
            )
        return tuple(out)


def sample_device(nvml: Any, index: int, handle: Any) -> GpuSample:
    """One device's figures now; NVML must be initialised (a session, or a long-lived sampler)."""
    used, total, unified = _memory(nvml, handle)
    util = _maybe(nvml, "nvmlDeviceGetUtilizationRates", handle)
    temp = _maybe(nvml, "nvmlDeviceGetTemperature", handle, nvml.NVML_TEMPERATURE_GPU)
    power_mw = _maybe(nvml, "nvmlDeviceGetPowerUsage", handle)
    return GpuSample(
        index=index,
        name=_text(nvml.nvmlDeviceGetName(handle)),
        utilization_pct=float(util.gpu) if util is not None else None,
        memory_used=used,
        memory_total=total,
        memory_unified=unified,
        temperature_c=float(temp) if temp is not None else None,
        power_w=power_mw / 1000 if power_mw is not None else None,
    )


def nvidia_telemetry(nvml: Any | None = None) -> list[GpuSample]:
    """One sample of every GPU, opening and closing NVML (the sampler keeps it open instead)."""
    lib: Any = nvml if nvml is not None else load_nvml()
    with _Session(lib) as session:
        if not session.ok:
            return []
        return [
            sample_device(lib, i, lib.nvmlDeviceGetHandleByIndex(i))
            for i in range(lib.nvmlDeviceGetCount())
        ]


def nvidia_bandwidth(nvml: Any | None = None) -> tuple[str, float] | None:
    """(name, GB/s) of the first GPU whose peak memory bandwidth NVML can give
    (`bandwidth.gpu_bandwidth_gbps`); None without NVML or without such a GPU."""
    lib: Any = nvml if nvml is not None else load_nvml()
    with _Session(lib) as session:
        if not session.ok:
            return None
        for i in range(lib.nvmlDeviceGetCount()):
            handle = lib.nvmlDeviceGetHandleByIndex(i)
            gbps = gpu_bandwidth_gbps(lib, handle)
            if gbps:
                return _text(lib.nvmlDeviceGetName(handle)), gbps
    return None
