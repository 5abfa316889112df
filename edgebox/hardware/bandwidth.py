"""The memory bandwidth a node's decode is bound by, measured once per machine, and the "speed
of light" it implies: at batch 1 a dense model reads every weight once per generated token, so
decode cannot beat `bandwidth ÷ weight bytes` tokens per second.

CPU: a short streaming copy of a buffer several times the last-level cache (`probe_cpu`),
bounded to a fraction of a second, cached by CPU model (`cached_cpu_bandwidth`), so a node
measures once per machine rather than once per start. GPU: the hook is `gpu_bandwidth_gbps`
(NVML's maximum memory clock x bus width; double data rate), used where NVML answers.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

MIN_BUFFER = 64 << 20  # bytes; a buffer at least this large, and ≥ 4x the L3 cache
MAX_BUFFER = 128 << 20  # never more (the probe runs beside a serving model)
PROBE_BUDGET_S = 0.3  # timed copies stop once this much time has gone
MAX_COPIES = 6
CACHE_VERSION = 1


@dataclass(frozen=True)
class Bandwidth:
    gbps: float  # GB/s (1e9 bytes)
    source: str  # "measured:copy", "nvml", "spec:<device>"
    device: str  # the CPU model or GPU name it belongs to

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def speed_of_light(bandwidth_gbps: float, bytes_per_token: int) -> float | None:
    """Tokens/s a single stream could reach if every token read `bytes_per_token` at full
    bandwidth (a dense model at batch 1 reads its weights once per token); None if unknown."""
    if bandwidth_gbps <= 0 or bytes_per_token <= 0:
        return None
    return bandwidth_gbps * 1e9 / bytes_per_token


def l3_bytes(sysfs: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int:
    """The largest cache level's size as the kernel reports it (0 when not readable)."""
    sizes = []
    for entry in sysfs.glob("index*/size"):
        text = entry.read_text().strip().upper()
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes, default=0)


def probe_cpu(buffer_bytes: int | None = None) -> float:
    """GB/s of a streaming copy (bytes read + bytes written over the best copy's time). The
    first copy only faults the pages in; timed copies follow until PROBE_BUDGET_S is spent
    (at least two)."""
    size = buffer_bytes or min(MAX_BUFFER, max(MIN_BUFFER, 4 * l3_bytes()))
    src = np.ones(size // 8, dtype=np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = float("inf")
    started = time.perf_counter()
    for i in range(MAX_COPIES):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
        if i >= 1 and time.perf_counter() - started > PROBE_BUDGET_S:
            break
    return 2 * src.nbytes / best / 1e9


def cached_cpu_bandwidth(cache_file: Path, cpu_model: str) -> Bandwidth:
    """This CPU's bandwidth from `cache_file` (keyed by CPU model), measuring it when absent."""
    cached = _read_cache(cache_file)
    entry = cached.get(cpu_model)
    if isinstance(entry, int | float) and entry > 0:
        return Bandwidth(round(float(entry), 1), "measured:copy", cpu_model)
    gbps = probe_cpu()
    cached[cpu_model] = round(gbps, 1)
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": CACHE_VERSION, "cpus": cached}))
        tmp.replace(cache_file)
    except OSError:
        pass  # a read-only cache measures again next start; the figure is still good
    return Bandwidth(round(gbps, 1), "measured:copy", cpu_model)


def _read_cache(cache_file: Path) -> dict[str, Any]:
    try:
        data = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return {}
    cpus = data.get("cpus")
    return dict(cpus) if isinstance(cpus, dict) else {}


def node_bandwidth(cache_file: Path, cpu_model: str) -> Bandwidth:
    """The bandwidth decode is bound by here: the first NVIDIA GPU's (NVML), else this CPU's
    (measured once, then cached in `cache_file`)."""
    from edgebox.hardware.nvidia import nvidia_bandwidth

    gpu = nvidia_bandwidth()
    if gpu is not None:
        return Bandwidth(round(gpu[1], 1), "nvml", gpu[0])
    return cached_cpu_bandwidth(cache_file, cpu_model)


def gpu_bandwidth_gbps(nvml: Any, handle: Any) -> float | None:
    """A GPU's peak memory bandwidth from NVML: max memory clock (MHz) x bus width (bits)
    x 2 (double data rate) ÷ 8; None where NVML does not say (unified-memory parts)."""
    try:
        clock_mhz = nvml.nvmlDeviceGetMaxClockInfo(handle, nvml.NVML_CLOCK_MEM)
        bus_bits = nvml.nvmlDeviceGetMemoryBusWidth(handle)
    except (nvml.NVMLError, AttributeError):
        return None
    if not clock_mhz or not bus_bits:
        return None
    return clock_mhz * 1e6 * bus_bits * 2 / 8 / 1e9
