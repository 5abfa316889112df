"""How this box is doing now: CPU, RAM and load (psutil), and each accelerator's utilisation,
memory, temperature and power.

Backends: NVML through nvidia-ml-py, initialised once and kept open (a GB10's memory is
reported as unified, see `nvidia.py`); on Apple Silicon `macmon pipe` when installed, else
only what sysctl knows (no GPU utilisation: None, never a made-up 0). `sample()` blocks for
a moment (psutil's first CPU reading, NVML queries, macmon's sampling interval): call it
from a thread, as `CachedTelemetry` does for the event loop. The NVML and macOS paths are
tested against replayed answers and have not been run on that hardware.
"""

from __future__ import annotations

import asyncio
import platform
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import psutil

from edgebox.hardware import apple, nvidia

_FIRST_CPU_WINDOW_S = 0.1  # psutil needs two readings; the first sample waits this long
_MIN_CPU_WINDOW_S = 0.05  # a shorter window is noise: keep the previous figure


@dataclass(frozen=True)
class AcceleratorTelemetry:
    kind: str  # "cuda" or "metal"
    index: int
    name: str
    utilization_pct: float | None  # None: the backend cannot tell
    memory_used: int | None  # bytes; on unified devices the GPU's share where known
    memory_total: int | None  # bytes; on unified devices the system memory it shares
    unified: bool
    temperature_c: float | None
    power_w: float | None


@dataclass(frozen=True)
class Telemetry:
    timestamp: float  # Unix time of the sample
    cpu_pct: float  # all cores, 0-100
    cpu_count: int
    memory_used: int  # bytes: total minus available
    memory_total: int
    load_avg: tuple[float, float, float]  # 1, 5, 15 min run-queue averages
    accelerators: tuple[AcceleratorTelemetry, ...]
    sources: tuple[str, ...]  # which backends answered: psutil, nvml, macmon, sysctl

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _from_gpu_sample(sample: nvidia.GpuSample) -> AcceleratorTelemetry:
    return AcceleratorTelemetry(
        kind="cuda",
        index=sample.index,
        name=sample.name,
        utilization_pct=sample.utilization_pct,
        memory_used=sample.memory_used,
        memory_total=sample.memory_total,
        unified=sample.memory_unified,
        temperature_c=sample.temperature_c,
        power_w=sample.power_w,
    )


class _NvmlDevices:
    """NVML opened once, device handles cached; empty when there is no NVIDIA driver."""

    def __init__(self, nvml: Any | None) -> None:
        self.nvml = nvml
        self.handles: list[Any] | None = None  # None: not opened yet

    def sample(self) -> list[AcceleratorTelemetry]:
        nvml = self.nvml
        if nvml is None:
            return []
        if self.handles is None:
            try:
                nvml.nvmlInit()
            except nvml.NVMLError:  # no driver or library: never ask again
                self.nvml, self.handles = None, []
                return []
            try:
                count = nvml.nvmlDeviceGetCount()
                self.handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            except nvml.NVMLError:  # a driver in a bad state: try again next sample
                nvml.nvmlShutdown()
                return []
        samples = []
        for i, handle in enumerate(self.handles):
            try:
                samples.append(_from_gpu_sample(nvidia.sample_device(nvml, i, handle)))
            except nvml.NVMLError:  # e.g. a GPU that fell off the bus: leave it out
                continue
        return samples

    def close(self) -> None:
        if self.nvml is not None and self.handles is not None:
            self.nvml.nvmlShutdown()
        self.handles = None


class _AppleGpu:
    """The Apple GPU through macmon, else its name and memory from sysctl alone."""

    def __init__(self, run: apple.CommandRunner, interval_ms: int) -> None:
        self.run = run
        self.interval_ms = interval_ms
        self.chip = apple.sysctl("machdep.cpu.brand_string", run) or "Apple GPU"
        self.memsize = apple.unified_memory_bytes(run)

    def sample(self) -> tuple[AcceleratorTelemetry, str]:
        reading = apple.macmon_reading(self.run, self.interval_ms)
        if reading is None:
            reading = apple.MacmonReading(None, None, None, None, None)
            source = "sysctl"
        else:
            source = "macmon"
        gpu = AcceleratorTelemetry(
            kind="metal",
            index=0,
            name=self.chip,
            utilization_pct=reading.gpu_utilization_pct,
            memory_used=None,  # macOS tells no GPU share of unified memory without sudo
            memory_total=reading.ram_total or self.memsize,
            unified=True,
            temperature_c=reading.gpu_temperature_c,
            power_w=reading.gpu_power_w,
        )
        return gpu, source


class TelemetrySampler:
    """Takes `Telemetry` samples; thread-safe, keeps NVML open between samples.

    `nvml` is the pynvml module (default: imported when installed) and `run` the command
    runner for sysctl/macmon; tests pass replaying fakes for hardware this machine lacks.
    """

    def __init__(
        self,
        *,
        nvml: Any | None = None,
        system: str | None = None,
        arch: str | None = None,
        run: apple.CommandRunner = apple.run_command,
        macmon_interval_ms: int = 250,
    ) -> None:
        system = system or platform.system()
        arch = arch or platform.machine()
        self._lock = threading.Lock()
        self._nvml = _NvmlDevices(nvml if nvml is not None else nvidia.load_nvml())
        is_apple = system == "Darwin" and arch == "arm64"
        self._apple = _AppleGpu(run, macmon_interval_ms) if is_apple else None
        self._last_cpu: tuple[float, float] | None = None  # (monotonic time, percent)

    def _cpu_pct(self) -> float:
        now = time.monotonic()
        if self._last_cpu is None:
            pct = psutil.cpu_percent(interval=_FIRST_CPU_WINDOW_S)
        elif now - self._last_cpu[0] < _MIN_CPU_WINDOW_S:
            return self._last_cpu[1]
        else:
            pct = psutil.cpu_percent(interval=None)  # since the previous call
        self._last_cpu = (time.monotonic(), pct)
        return pct

    def sample(self) -> Telemetry:
        """A sample now; blocks briefly (see the module docstring)."""
        with self._lock:
            sources = ["psutil"]
            accelerators = self._nvml.sample()
            if accelerators:
                sources.append("nvml")
            if self._apple is not None:
                gpu, source = self._apple.sample()
                accelerators.append(gpu)
                sources.append(source)
            memory = psutil.virtual_memory()
            load = psutil.getloadavg()
            return Telemetry(
                timestamp=time.time(),
                cpu_pct=self._cpu_pct(),
                cpu_count=psutil.cpu_count() or 1,
                memory_used=memory.total - memory.available,
                memory_total=memory.total,
                load_avg=(round(load[0], 2), round(load[1], 2), round(load[2], 2)),
                accelerators=tuple(accelerators),
                sources=tuple(sources),
            )

    def close(self) -> None:
        with self._lock:
            self._nvml.close()


class CachedTelemetry:
    """A sample at most `max_age` seconds old for async callers (the node's /health).

    Sampling runs in a worker thread; concurrent callers share one refresh.
    """

    def __init__(self, sampler: TelemetrySampler | None = None, max_age: float = 1.0) -> None:
        self._sampler = sampler
        self.max_age = max_age
        self._latest: Telemetry | None = None
        self._taken = 0.0  # monotonic time of _latest
        self._refresh: asyncio.Task[Telemetry] | None = None

    async def get(self) -> Telemetry:
        if self._latest is not None and time.monotonic() - self._taken <= self.max_age:
            return self._latest
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.create_task(self._take())
        return await asyncio.shield(self._refresh)

    async def _take(self) -> Telemetry:
        if self._sampler is None:
            self._sampler = await asyncio.to_thread(TelemetrySampler)
        sample = await asyncio.to_thread(self._sampler.sample)
        self._latest, self._taken = sample, time.monotonic()
        return sample


_default: TelemetrySampler | None = None
_default_lock = threading.Lock()


def sample() -> Telemetry:
    """A sample from this process's shared sampler (created on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = TelemetrySampler()
    return _default.sample()
