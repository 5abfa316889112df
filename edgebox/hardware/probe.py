"""What this box is: CPU, memory, accelerators, and the memory bandwidth that bounds decode.

The CPU path is probed for real; NVIDIA GPUs come from NVML (`nvidia.py`), Apple chips and
their GPU from sysctl and system_profiler (`apple.py`); both are tested against replayed
answers and not verified on the hardware.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

HardwareClass = str  # nvidia-dgx-spark | nvidia-rtx | nvidia-datacenter | apple-silicon | cpu

# Peak memory bandwidth in GB/s from vendors' specifications: the "speed of light" for
# decode (each generated token reads every weight once).
KNOWN_BANDWIDTH_GBPS: dict[str, float] = {
    "GB10": 273,
    "H200": 4800,
    "H100 SXM": 3350,
    "H100 PCIe": 2000,
    "H100": 3350,
    "A100-SXM4-80GB": 2039,
    "A100": 1555,
    "L40S": 864,
    "L4": 300,
    "RTX 5090": 1792,
    "RTX 4090": 1008,
    "RTX 4080": 717,
    "RTX 3090": 936,
    "Apple M1 Ultra": 800,
    "Apple M1 Max": 400,
    "Apple M1 Pro": 200,
    "Apple M1": 68,
    "Apple M2 Ultra": 800,
    "Apple M2 Max": 400,
    "Apple M2 Pro": 200,
    "Apple M2": 100,
    "Apple M3 Ultra": 819,
    "Apple M3 Max": 400,
    "Apple M3 Pro": 150,
    "Apple M3": 100,
    "Apple M4 Max": 546,
    "Apple M4 Pro": 273,
    "Apple M4": 120,
}

_X86_SIMD = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)
_ARM_SIMD = ("asimd", "asimddp", "asimdhp", "i8mm", "bf16", "sve", "sve2", "sme")


@dataclass(frozen=True)
class Accelerator:
    kind: str  # "cuda" or "metal"
    name: str
    memory_total: int | None  # bytes; None where the device has no memory of its own (GB10)
    unified: bool
    compute_capability: str | None = None
    driver: str | None = None
    gpu_cores: int | None = None


@dataclass(frozen=True)
class HardwareProfile:
    hw_class: HardwareClass
    hostname: str
    os: str
    arch: str
    cpu_model: str
    cores_physical: int
    cores_logical: int
    simd: tuple[str, ...]
    memory_total: int
    memory_available: int
    unified_memory: bool
    bandwidth_gbps: float
    bandwidth_source: str  # "spec:<device>", "measured", or "unknown" (not measured)
    accelerators: tuple[Accelerator, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def known_bandwidth(device_name: str) -> tuple[str, float] | None:
    """The longest table key contained in the device name (so "RTX 4090" beats "RTX 40")."""
    matches = [key for key in KNOWN_BANDWIDTH_GBPS if key.lower() in device_name.lower()]
    if not matches:
        return None
    key = max(matches, key=len)
    return key, KNOWN_BANDWIDTH_GBPS[key]


def measure_copy_bandwidth(mib: int = 256, repeats: int = 3) -> float:
    """GB/s of a large memory copy (read + write), best of `repeats`; about a quarter second."""
    src = np.ones(mib * 1024 * 1024 // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - started)
    return 2 * src.nbytes / best / 1e9


def cpuinfo_fields(text: str) -> tuple[str, set[str]]:
    """(model name, every CPU flag) from /proc/cpuinfo's text (x86 `flags`, ARM `Features`)."""
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
    return model, flags


def parse_cpuinfo(text: str) -> tuple[str, tuple[str, ...]]:
    """(model name, SIMD features edgebox cares about) from /proc/cpuinfo's text."""
    model, flags = cpuinfo_fields(text)
    wanted = _X86_SIMD if "avx" in flags or "sse2" in flags else _ARM_SIMD
    return model, tuple(f for f in wanted if f in flags)


def _cpu() -> tuple[str, tuple[str, ...]]:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        model, simd = parse_cpuinfo(cpuinfo.read_text(errors="replace"))
        return model or platform.processor() or platform.machine(), simd
    if platform.system() == "Darwin":
        brand = _sysctl("machdep.cpu.brand_string") or platform.processor()
        return brand, ("asimd",) if platform.machine() == "arm64" else ()
    return platform.processor() or platform.machine(), ()


def cpu_model() -> str:
    """This machine's CPU model name (what per-CPU caches are keyed by)."""
    return _cpu()[0]


def _sysctl(name: str) -> str:
    try:
        done = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def classify(system: str, arch: str, accelerators: tuple[Accelerator, ...]) -> HardwareClass:
    cuda = [a for a in accelerators if a.kind == "cuda"]
    if cuda:
        name = cuda[0].name
        if "GB10" in name:
            return "nvidia-dgx-spark"
        if "RTX" in name or "GeForce" in name or "TITAN" in name:
            return "nvidia-rtx"
        return "nvidia-datacenter"
    if any(a.kind == "metal" for a in accelerators) or (system == "Darwin" and arch == "arm64"):
        return "apple-silicon"
    return "cpu"


def _local_accelerators(system: str, arch: str) -> tuple[Accelerator, ...]:
    from edgebox.hardware.nvidia import nvidia_accelerators

    found = nvidia_accelerators()
    if system == "Darwin" and arch == "arm64":
        from edgebox.hardware.apple import apple_accelerators

        found += apple_accelerators()
    return found


def probe(
    *, measure: bool = True, accelerators: tuple[Accelerator, ...] | None = None
) -> HardwareProfile:
    """Probe this machine; `accelerators` None asks NVML for NVIDIA GPUs and, on a Mac,
    sysctl and system_profiler for the Apple GPU."""
    system, arch = platform.system(), platform.machine()
    if accelerators is None:
        accelerators = _local_accelerators(system, arch)
    cpu_model, simd = _cpu()
    memory = psutil.virtual_memory()
    memory_total = memory.total
    if system == "Darwin":
        from edgebox.hardware.apple import unified_memory_bytes

        memory_total = unified_memory_bytes() or memory_total
    hw_class = classify(system, arch, accelerators)
    unified = hw_class in ("nvidia-dgx-spark", "apple-silicon")
    names = [a.name for a in accelerators] + [cpu_model]
    spec = next((k for k in map(known_bandwidth, names) if k), None)
    if spec:
        bandwidth, source = spec[1], f"spec:{spec[0]}"
    else:
        bandwidth, source = (measure_copy_bandwidth(), "measured") if measure else (0.0, "unknown")
    return HardwareProfile(
        hw_class=hw_class,
        hostname=socket.gethostname(),
        os=f"{system} {platform.release()}",
        arch=arch,
        cpu_model=cpu_model,
        cores_physical=psutil.cpu_count(logical=False) or os.cpu_count() or 1,
        cores_logical=psutil.cpu_count(logical=True) or os.cpu_count() or 1,
        simd=simd,
        memory_total=memory_total,
        memory_available=memory.available,
        unified_memory=unified,
        bandwidth_gbps=round(bandwidth, 1),
        bandwidth_source=source,
        accelerators=accelerators,
    )
