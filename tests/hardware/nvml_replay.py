"""A stand-in for the `pynvml` module that answers from recorded NVML answers: the real error
class and constants, each device a dict (tests/fixtures/nvidia/README.md says the format)."""

from __future__ import annotations

import json
from collections import namedtuple
from pathlib import Path
from typing import Any

import pynvml

Memory = namedtuple("Memory", "total free used")
Utilization = namedtuple("Utilization", "gpu memory")
Process = namedtuple("Process", "pid usedGpuMemory")

FIXTURES = Path(__file__).parent.parent / "fixtures" / "nvidia"


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


def _device(recorded: dict[str, Any]) -> dict[str, Any]:
    """One recorded device (benchmarks/gpu_check.py's format) as a ReplayedNVML device."""
    device: dict[str, Any] = {"name": recorded["name"], "cc": tuple(recorded["cc"])}
    for key, field, shape in (
        ("memory", "memory", lambda v: Memory(**v)),
        ("util", "util", lambda v: Utilization(**v)),
        ("temp", "temp", lambda v: v),
        ("power_mw", "power_mw", lambda v: v),
        ("compute", "compute", lambda v: [Process(**p) for p in v]),
        ("graphics", "graphics", lambda v: [Process(**p) for p in v]),
    ):
        value = recorded[key]
        if isinstance(value, dict) and "error" in value:
            device[f"{field.split('_')[0]}_error"] = value["error"]
        else:
            device[field] = shape(value)
    return device


def recorded(name: str) -> ReplayedNVML:
    """The NVML answers in tests/fixtures/nvidia/`name`."""
    data = json.loads((FIXTURES / name).read_text())
    return ReplayedNVML([_device(d) for d in data["devices"]], driver=data["driver"])
