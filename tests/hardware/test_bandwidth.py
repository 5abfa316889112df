"""The memory bandwidth a node's decode is bound by: measured once per CPU model and cached,
read from NVML on NVIDIA GPUs (replayed answers: this machine has none)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pynvml

from edgebox.hardware.bandwidth import (
    CACHE_VERSION,
    cached_cpu_bandwidth,
    gpu_bandwidth_gbps,
    l3_bytes,
    probe_cpu,
    speed_of_light,
)
from edgebox.hardware.nvidia import nvidia_bandwidth
from tests.hardware.test_nvidia import GB10, RTX_4090, ReplayedNVML


class ClockedNVML(ReplayedNVML):
    NVML_CLOCK_MEM = pynvml.NVML_CLOCK_MEM

    def nvmlDeviceGetMaxClockInfo(self, d: dict[str, Any], clock: int) -> int:
        assert clock == pynvml.NVML_CLOCK_MEM
        if "mem_clock_mhz" not in d:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return int(d["mem_clock_mhz"])

    def nvmlDeviceGetMemoryBusWidth(self, d: dict[str, Any]) -> int:
        if "bus_bits" not in d:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return int(d["bus_bits"])


H100_SXM = {**RTX_4090, "name": "NVIDIA H100 80GB HBM3", "mem_clock_mhz": 2619, "bus_bits": 5120}


def test_the_probe_is_short_and_plausible() -> None:
    started = time.perf_counter()
    gbps = probe_cpu()
    # about 0.1 s on an idle machine; 2.5 s was seen with load 12 on 2 cores (page faults)
    assert time.perf_counter() - started < 6.0
    assert 0.5 < gbps < 2000
    assert l3_bytes() >= 0


def test_a_cpu_is_measured_once_then_read_from_the_cache(tmp_path: Path) -> None:
    cache = tmp_path / "bandwidth.json"
    first = cached_cpu_bandwidth(cache, "Test CPU 9000")
    assert first.source == "measured:copy" and first.gbps > 0
    stored = json.loads(cache.read_text())
    assert stored == {"version": CACHE_VERSION, "cpus": {"Test CPU 9000": first.gbps}}
    # a planted figure proves the second answer comes from the cache, not a new probe
    cache.write_text(json.dumps({"version": CACHE_VERSION, "cpus": {"Test CPU 9000": 12.5}}))
    assert cached_cpu_bandwidth(cache, "Test CPU 9000").gbps == 12.5
    other = cached_cpu_bandwidth(cache, "Other CPU")  # keyed by model: measured afresh
    assert set(json.loads(cache.read_text())["cpus"]) == {"Test CPU 9000", "Other CPU"}
    assert other.gbps > 0


def test_a_corrupt_cache_is_measured_over(tmp_path: Path) -> None:
    cache = tmp_path / "bandwidth.json"
    cache.write_text("{not json")
    assert cached_cpu_bandwidth(cache, "c").gbps > 0
    cache.write_text(json.dumps({"version": CACHE_VERSION, "cpus": {"c": "fast"}}))
    assert cached_cpu_bandwidth(cache, "c").gbps > 0


def test_speed_of_light_is_bandwidth_over_bytes_per_token() -> None:
    assert speed_of_light(100.0, 50_000_000) == 2000.0
    assert speed_of_light(0.0, 1) is None and speed_of_light(10.0, 0) is None


def test_gpu_bandwidth_from_nvml_memory_clock_and_bus_width() -> None:
    nvml = ClockedNVML([H100_SXM])
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    assert round(gpu_bandwidth_gbps(nvml, handle) or 0) == 3352  # H100 SXM: 3.35 TB/s
    name, gbps = nvidia_bandwidth(nvml) or ("", 0.0)
    assert name == "NVIDIA H100 80GB HBM3" and round(gbps) == 3352
    assert nvml.initialised == 0


def test_a_gpu_nvml_cannot_clock_gives_no_figure() -> None:
    nvml = ClockedNVML([GB10])  # unified memory: NVML answers NOT_SUPPORTED
    assert nvidia_bandwidth(nvml) is None
    assert nvidia_bandwidth() is None  # this machine: no libnvidia-ml
