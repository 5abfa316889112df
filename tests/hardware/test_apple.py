"""The Apple probe against replayed sysctl / system_profiler output (tests/fixtures/apple/);
not verified on a Mac."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from edgebox.hardware import probe
from edgebox.hardware.apple import apple_accelerators, parse_gpu_cores, parse_macmon

FIXTURES = Path(__file__).parent.parent / "fixtures" / "apple"


def run(argv: Sequence[str]) -> str | None:
    if argv[0] == "sysctl":
        path = FIXTURES / f"sysctl_{argv[-1]}.txt"
        return path.read_text() if path.exists() else None
    if argv[0] == "system_profiler":
        return (FIXTURES / "system_profiler_SPDisplaysDataType.json").read_text()
    return None


def test_m2_max_is_a_metal_gpu_with_its_core_count_and_spec_bandwidth() -> None:
    (gpu,) = apple_accelerators(run)
    assert (gpu.kind, gpu.name, gpu.gpu_cores, gpu.unified) == ("metal", "Apple M2 Max", 38, True)
    hw = probe(measure=False, accelerators=(gpu,))
    assert hw.hw_class == "apple-silicon" and hw.unified_memory
    assert (hw.bandwidth_gbps, hw.bandwidth_source) == (400, "spec:Apple M2 Max")


def test_an_intel_mac_or_a_failed_sysctl_has_no_apple_gpu() -> None:
    assert apple_accelerators(lambda argv: None) == ()
    assert apple_accelerators(lambda argv: "Intel(R) Core(TM) i9-9880H CPU @ 2.30GHz\n") == ()


def test_gpu_cores_parsing_tolerates_missing_or_broken_output() -> None:
    assert parse_gpu_cores((FIXTURES / "system_profiler_SPDisplaysDataType.json").read_text()) == 38
    assert parse_gpu_cores('{"SPDisplaysDataType": [{"sppci_model": "Radeon Pro"}]}') is None
    assert parse_gpu_cores("not json") is None


def test_macmon_lines_that_are_not_samples_are_refused() -> None:
    assert parse_macmon("") is None and parse_macmon("[1, 2]") is None
    reading = parse_macmon('{"gpu_usage": [461, 0.5]}')
    assert reading is not None and reading.gpu_utilization_pct == 50.0
    assert reading.gpu_power_w is None and reading.ram_total is None
