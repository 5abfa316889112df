"""The telemetry sampler: psutil for real on this machine; NVML and macOS against replays.

This machine has no NVIDIA GPU and is not a Mac. The NVML fake (from test_nvidia.py) keeps
pynvml's real error class and constants; the H100 answers use the name and driver our own H100
run recorded (docs/benchmarks.md) and the memory/utilisation/temperature/power figures an
H100 80GB HBM3 shows in published nvidia-smi output; the GB10 raises NOT_SUPPORTED for its
memory info. Apple command output is replayed from tests/fixtures/apple/ (see its README).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
import pynvml
import pytest
from typer.testing import CliRunner

from edgebox.cli import app
from edgebox.hardware.apple import CommandRunner
from edgebox.hardware.telemetry import CachedTelemetry, TelemetrySampler
from tests.hardware.nvml_replay import Memory, ReplayedNVML, Utilization
from tests.hardware.test_nvidia import GB10

FIXTURES = Path(__file__).parent.parent / "fixtures" / "apple"
MIB = 1 << 20

H100 = {
    "name": "NVIDIA H100 80GB HBM3",
    "memory": Memory(total=81559 * MIB, free=(81559 - 26980) * MIB, used=26980 * MIB),
    "cc": (9, 0),
    "util": Utilization(gpu=100, memory=61),
    "temp": 41,
    "power_mw": 362_000,
}


def mem_total_from_proc_meminfo() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no MemTotal in /proc/meminfo")


def test_real_sample_of_this_machine() -> None:
    sampler = TelemetrySampler()  # real pynvml, no NVIDIA driver here: no accelerators
    try:
        first, second = sampler.sample(), sampler.sample()
    finally:
        sampler.close()
    memory = psutil.virtual_memory()
    for s in (first, second):
        assert s.memory_total == memory.total == mem_total_from_proc_meminfo()
        assert 0 < s.memory_used < s.memory_total
        assert 0.0 <= s.cpu_pct <= 100.0
        assert s.cpu_count == os.cpu_count()
        assert s.accelerators == () and s.sources == ("psutil",)
    assert second.timestamp > first.timestamp
    assert second.load_avg[2] == pytest.approx(os.getloadavg()[2], abs=0.5)
    assert json.loads(json.dumps(first.to_dict()))["memory_total"] == memory.total


def test_cached_sampling_runs_off_the_event_loop_and_is_shared() -> None:
    async def scenario() -> None:
        cache = CachedTelemetry(TelemetrySampler(), max_age=0.3)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticking = asyncio.create_task(ticker())
        # The first sample waits ~0.1 s for psutil's CPU window; the loop keeps running.
        a, b = await asyncio.gather(cache.get(), cache.get())
        ticking.cancel()
        assert ticks >= 3
        assert a is b  # concurrent callers shared one sample
        assert await cache.get() is a  # still fresh
        deadline = time.monotonic() + 0.35  # max_age 0.3: a new sample by then, polled for
        while (c := await cache.get()) is a and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert c is not a and c.timestamp > a.timestamp

    asyncio.run(scenario())


def test_h100_nvml_is_opened_once_and_kept_open() -> None:
    nvml = ReplayedNVML([H100], driver="580.159.04")
    sampler = TelemetrySampler(nvml=nvml, system="Linux", arch="x86_64")
    samples = [sampler.sample() for _ in range(3)]
    assert nvml.initialised == 1  # one nvmlInit for three samples
    (gpu,) = samples[-1].accelerators
    assert (gpu.kind, gpu.index, gpu.name) == ("cuda", 0, "NVIDIA H100 80GB HBM3")
    assert (gpu.memory_used, gpu.memory_total, gpu.unified) == (26980 * MIB, 81559 * MIB, False)
    assert (gpu.utilization_pct, gpu.temperature_c, gpu.power_w) == (100.0, 41.0, 362.0)
    assert samples[-1].sources == ("psutil", "nvml")
    sampler.close()
    assert nvml.initialised == 0


class LostGpuNVML(ReplayedNVML):
    """The second GPU fell off the bus: NVML answers GPU_IS_LOST for it."""

    def nvmlDeviceGetName(self, d: dict[str, Any]) -> str:
        if d.get("lost"):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return super().nvmlDeviceGetName(d)


def test_a_lost_gpu_is_left_out_and_the_others_still_reported() -> None:
    nvml = LostGpuNVML([H100, {**H100, "lost": True}])
    sampler = TelemetrySampler(nvml=nvml, system="Linux", arch="x86_64")
    assert [(g.index, g.name) for g in sampler.sample().accelerators] == [
        (0, "NVIDIA H100 80GB HBM3")
    ]
    sampler.close()


def test_gb10_reports_unified_memory_from_meminfo_and_process_usage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Injected as the pynvml module itself, as `import pynvml` would find it.
    nvml = ReplayedNVML([GB10])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    sampler = TelemetrySampler(system="Linux", arch="aarch64")
    (gpu,) = sampler.sample().accelerators
    assert gpu.name == "NVIDIA GB10" and gpu.unified
    assert gpu.memory_total == mem_total_from_proc_meminfo()
    assert gpu.memory_used == 21_474_836_480 + 134_217_728  # compute + graphics processes
    assert gpu.utilization_pct == 96.0 and gpu.temperature_c == 71.0
    assert gpu.power_w is None  # NOT_SUPPORTED on this replay: unknown, not 0
    assert json.loads(json.dumps(gpu.__dict__))["power_w"] is None
    sampler.close()


def replay(*, macmon: str | None) -> tuple[list[list[str]], CommandRunner]:
    """A command runner answering from the fixtures; macmon None: not installed."""
    calls: list[list[str]] = []

    def run(argv: Sequence[str]) -> str | None:
        calls.append(list(argv))
        if argv[0] == "sysctl":
            return (FIXTURES / f"sysctl_{argv[-1]}.txt").read_text()
        if argv[0] == "system_profiler":
            return (FIXTURES / "system_profiler_SPDisplaysDataType.json").read_text()
        if argv[0] == "macmon" and macmon is not None:
            return (FIXTURES / macmon).read_text()
        return None

    return calls, run


@pytest.mark.parametrize(
    ("fixture", "utilization"),
    [("macmon_pipe_0.6.json", 2.1), ("macmon_pipe_0.7.json", 9.0)],
)
def test_apple_gpu_through_macmon(fixture: str, utilization: float) -> None:
    calls, run = replay(macmon=fixture)
    sampler = TelemetrySampler(nvml=None, system="Darwin", arch="arm64", run=run)
    sample = sampler.sample()
    (gpu,) = sample.accelerators
    assert (gpu.kind, gpu.name, gpu.unified) == ("metal", "Apple M2 Max", True)
    assert gpu.utilization_pct == utilization
    assert gpu.temperature_c == pytest.approx(36.95167)
    assert gpu.power_w == pytest.approx(0.017451683)
    assert gpu.memory_total == 34359738368 and gpu.memory_used is None
    assert "macmon" in sample.sources
    assert ["macmon", "pipe", "-s", "1", "-i", "250"] in calls


def test_apple_without_macmon_says_unknown_instead_of_zero() -> None:
    _, run = replay(macmon=None)
    sampler = TelemetrySampler(system="Darwin", arch="arm64", run=run)
    sample = sampler.sample()
    (gpu,) = sample.accelerators
    assert gpu.name == "Apple M2 Max" and gpu.memory_total == 34359738368  # hw.memsize
    assert (gpu.utilization_pct, gpu.temperature_c, gpu.power_w) == (None, None, None)
    assert sample.sources[-1] == "sysctl"
    row = json.loads(json.dumps(sample.to_dict()))["accelerators"][0]
    assert row["utilization_pct"] is None and row["unified"] is True


def test_cli_prints_json_lines_and_a_table() -> None:
    runner = CliRunner()
    started = time.monotonic()
    done = runner.invoke(app, ["telemetry", "--json", "--watch", "0.2", "--count", "3"])
    assert done.exit_code == 0, done.output
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(rows) == 3 and time.monotonic() - started >= 0.4
    assert all(r["memory_total"] == psutil.virtual_memory().total for r in rows)
    assert rows[0]["timestamp"] < rows[1]["timestamp"] < rows[2]["timestamp"]
    table = runner.invoke(app, ["telemetry"])
    assert table.exit_code == 0 and "CPU" in table.stdout and "GiB" in table.stdout
    assert len(table.stdout.splitlines()) >= 5  # title, header, rule, CPU row, frame
