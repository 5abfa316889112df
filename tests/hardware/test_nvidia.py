"""NVML paths against replayed answers: this machine has no NVIDIA GPU. The fake keeps the
real pynvml error class and constants, and answers what an RTX 4090 and a DGX Spark's GB10
answer (the GB10 raising NOT_SUPPORTED for its memory info)."""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import psutil
import pynvml

from edgebox.hardware import probe
from edgebox.hardware.nvidia import nvidia_accelerators, nvidia_telemetry

Memory = namedtuple("Memory", "total free used")
Utilization = namedtuple("Utilization", "gpu memory")
Process = namedtuple("Process", "pid usedGpuMemory")


class ReplayedNVML:
    NVMLError = pynvml.NVMLError
    NVML_ERROR_NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU

    def __init__(self, devices: list[dict[str, Any]], driver: str = "580.95.05") -> None:
        self.devices = devices
        self.driver = driver
        self.initialised = 0

    def nvmlInit(self) -> None:
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.initialised -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.driver

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> dict[str, Any]:
        return self.devices[i]

    def nvmlDeviceGetName(self, d: dict[str, Any]) -> str:
        return d["name"]

    def nvmlDeviceGetMemoryInfo(self, d: dict[str, Any]) -> Memory:
        if "memory_error" in d:
            raise pynvml.NVMLError(d["memory_error"])
        return d["memory"]

    def nvmlDeviceGetCudaComputeCapability(self, d: dict[str, Any]) -> tuple[int, int]:
        return d["cc"]

    def nvmlDeviceGetUtilizationRates(self, d: dict[str, Any]) -> Utilization:
        return d["util"]

    def nvmlDeviceGetTemperature(self, d: dict[str, Any], sensor: int) -> int:
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return d["temp"]

    def nvmlDeviceGetPowerUsage(self, d: dict[str, Any]) -> int:
        if "power_error" in d:
            raise pynvml.NVMLError(d["power_error"])
        return d["power_mw"]

    def nvmlDeviceGetComputeRunningProcesses(self, d: dict[str, Any]) -> list[Process]:
        return d.get("compute", [])

    def nvmlDeviceGetGraphicsRunningProcesses(self, d: dict[str, Any]) -> list[Process]:
        return d.get("graphics", [])


RTX_4090 = {
    "name": "NVIDIA GeForce RTX 4090",
    "memory": Memory(total=25757220864, free=20401094656, used=5356126208),
    "cc": (8, 9),
    "util": Utilization(gpu=87, memory=54),
    "temp": 66,
    "power_mw": 341_250,
}
GB10 = {
    "name": "NVIDIA GB10",
    "memory_error": pynvml.NVML_ERROR_NOT_SUPPORTED,
    "cc": (12, 1),
    "util": Utilization(gpu=96, memory=0),
    "temp": 71,
    "power_error": pynvml.NVML_ERROR_NOT_SUPPORTED,
    "compute": [Process(4242, 21_474_836_480), Process(4243, None)],
    "graphics": [Process(1001, 134_217_728)],
}


def test_rtx_is_a_discrete_gpu_with_its_own_memory() -> None:
    nvml = ReplayedNVML([RTX_4090])
    (gpu,) = nvidia_accelerators(nvml)
    assert gpu.name == "NVIDIA GeForce RTX 4090" and gpu.kind == "cuda"
    assert gpu.memory_total == 25757220864 and not gpu.unified
    assert gpu.compute_capability == "8.9" and gpu.driver == "580.95.05"
    (sample,) = nvidia_telemetry(nvml)
    assert (sample.utilization_pct, sample.temperature_c, sample.power_w) == (87.0, 66.0, 341.25)
    assert (sample.memory_used, sample.memory_total) == (5356126208, 25757220864)
    assert nvml.initialised == 0  # every nvmlInit was paired with nvmlShutdown
    hw = probe(measure=False, accelerators=(gpu,))
    assert hw.hw_class == "nvidia-rtx" and hw.bandwidth_source == "spec:RTX 4090"
    assert hw.bandwidth_gbps == 1008 and not hw.unified_memory


def test_gb10_memory_not_supported_becomes_unified_memory() -> None:
    nvml = ReplayedNVML([GB10])
    (gpu,) = nvidia_accelerators(nvml)
    assert gpu.unified and gpu.memory_total is None and gpu.compute_capability == "12.1"
    (sample,) = nvidia_telemetry(nvml)
    assert sample.memory_unified
    assert sample.memory_total == psutil.virtual_memory().total  # MemTotal of the host
    assert sample.memory_used == 21_474_836_480 + 134_217_728  # its processes' usage
    assert sample.power_w is None and sample.utilization_pct == 96.0
    hw = probe(measure=False, accelerators=(gpu,))
    assert hw.hw_class == "nvidia-dgx-spark" and hw.unified_memory
    assert (hw.bandwidth_gbps, hw.bandwidth_source) == (273, "spec:GB10")


def test_no_nvml_library_means_no_gpus() -> None:
    # This machine: pynvml is installed but libnvidia-ml is not.
    assert nvidia_accelerators() == ()
    assert nvidia_telemetry() == []
    assert probe(measure=False).accelerators == ()
