"""NVML paths against replayed answers: this machine has no NVIDIA GPU. The fake keeps the
real pynvml error class and constants, and answers what an RTX 4090 and a DGX Spark's GB10
answer (the GB10 raising NOT_SUPPORTED for its memory info), and an H100 from
tests/fixtures/nvidia/ (see its README for what was recorded on the hardware)."""

from __future__ import annotations

import psutil
import pynvml

from edgebox.hardware import probe
from edgebox.hardware.nvidia import nvidia_accelerators, nvidia_telemetry
from tests.hardware.nvml_replay import Memory, Process, ReplayedNVML, Utilization, recorded

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


def test_h100_is_a_datacenter_gpu_bounded_by_its_hbm3() -> None:
    nvml = recorded("h100_nvml.json")
    (gpu,) = nvidia_accelerators(nvml)
    assert (gpu.name, gpu.kind, gpu.unified) == ("NVIDIA H100 80GB HBM3", "cuda", False)
    assert gpu.memory_total == 81559 * 2**20 and gpu.compute_capability == "9.0"
    assert gpu.driver == "580.159.04"
    (sample,) = nvidia_telemetry(nvml)
    assert sample.memory_total == gpu.memory_total and not sample.memory_unified
    assert nvml.initialised == 0
    hw = probe(measure=False, accelerators=(gpu,))
    assert hw.hw_class == "nvidia-datacenter" and not hw.unified_memory
    assert (hw.bandwidth_gbps, hw.bandwidth_source) == (3350, "spec:H100")  # SXM5's HBM3


def test_no_nvml_library_means_no_gpus() -> None:
    # This machine: pynvml is installed but libnvidia-ml is not.
    assert nvidia_accelerators() == ()
    assert nvidia_telemetry() == []
    assert probe(measure=False).accelerators == ()
