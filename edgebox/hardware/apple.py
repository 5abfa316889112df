"""Apple Silicon: the chip and its GPU from sysctl and system_profiler, live figures from macmon.

Nothing here needs sudo. `macmon pipe` (https://github.com/vladkens/macmon, `brew install
macmon`) reads the same counters as `powermetrics`; without it there is no GPU utilisation,
temperature or power, and those figures are None rather than a made-up 0. Tested against
replayed command output (tests/fixtures/apple/); not verified on a Mac.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edgebox.hardware.probe import Accelerator

# Runs a command and returns its stdout, or None when it is missing, fails or times out.
CommandRunner = Callable[[Sequence[str]], str | None]


def run_command(argv: Sequence[str], timeout: float = 10.0) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def sysctl(name: str, run: CommandRunner = run_command) -> str | None:
    out = run(["sysctl", "-n", name])
    if out is None:
        return None
    return out.strip() or None


def parse_gpu_cores(system_profiler_json: str) -> int | None:
    """GPU core count of the first Apple GPU in `system_profiler SPDisplaysDataType -json`."""
    try:
        rows = json.loads(system_profiler_json).get("SPDisplaysDataType") or []
    except (json.JSONDecodeError, AttributeError):
        return None
    for row in rows:
        cores = str(row.get("sppci_cores", "")).strip() if isinstance(row, dict) else ""
        if cores.isdigit():
            return int(cores)
    return None


def apple_accelerators(run: CommandRunner = run_command) -> tuple[Accelerator, ...]:
    """The chip's GPU as a `metal` accelerator sharing unified memory; () when sysctl fails."""
    chip = sysctl("machdep.cpu.brand_string", run)
    if not chip or not chip.startswith("Apple"):
        return ()
    profile = run(["system_profiler", "SPDisplaysDataType", "-json"])
    return (
        Accelerator(
            kind="metal",
            name=chip,
            memory_total=None,  # unified: the profile's memory_total (hw.memsize) is shared
            unified=True,
            gpu_cores=parse_gpu_cores(profile) if profile else None,
        ),
    )


def unified_memory_bytes(run: CommandRunner = run_command) -> int | None:
    value = sysctl("hw.memsize", run)
    return int(value) if value and value.isdigit() else None


@dataclass(frozen=True)
class MacmonReading:
    """The figures edgebox uses from one `macmon pipe` sample."""

    gpu_utilization_pct: float | None
    gpu_temperature_c: float | None
    gpu_power_w: float | None
    ram_total: int | None
    ram_used: int | None


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def parse_macmon(line: str) -> MacmonReading | None:
    """One JSON line of `macmon pipe`. GPU use is `gpu_usage: [MHz, ratio]` before macmon 0.7
    and `gpu_active_ratio` after (the share of the interval the GPU was busy, as NVML's)."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    ratio = _number(data.get("gpu_active_ratio"))
    usage = data.get("gpu_usage")
    if ratio is None and isinstance(usage, list) and len(usage) == 2:
        ratio = _number(usage[1])
    temp, memory = data.get("temp"), data.get("memory")
    temp = temp if isinstance(temp, dict) else {}
    memory = memory if isinstance(memory, dict) else {}
    ram_total, ram_used = _number(memory.get("ram_total")), _number(memory.get("ram_usage"))
    return MacmonReading(
        gpu_utilization_pct=round(ratio * 100, 1) if ratio is not None else None,
        gpu_temperature_c=_number(temp.get("gpu_temp_avg")),
        gpu_power_w=_number(data.get("gpu_power")),
        ram_total=int(ram_total) if ram_total is not None else None,
        ram_used=int(ram_used) if ram_used is not None else None,
    )


def macmon_reading(
    run: CommandRunner = run_command, interval_ms: int = 250
) -> MacmonReading | None:
    """One sample over `interval_ms` (it blocks that long); None without macmon."""
    out = run(["macmon", "pipe", "-s", "1", "-i", str(interval_ms)])
    if not out:
        return None
    lines = [line for line in out.splitlines() if line.strip()]
    return parse_macmon(lines[-1]) if lines else None
