"""The CPU extra-buffer probe: a real child process decodes with llama.cpp's repacked/AMX
weights on; a child that dies turns them off. The tests follow the CPU they run on: on an AVX2
CPU without AMX (AMD EPYC) the probe decodes; on a Xeon VM that advertises AMX the decode with
AMX weights really faults (seen on the CI's Intel Xeon kind: SIGSEGV) and the fallback
decodes. Where nothing can fault for real, `EDGEBOX_TEST_CPU_PROBE_FAULT=1` makes the child
really segfault just before its decode, standing in for the `ldtilecfg` fault."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgebox.runtimes.llamacpp import cpu_probe
from edgebox.runtimes.llamacpp.cpu_probe import ProbeResult, decide
from edgebox.runtimes.llamacpp.model import LlamaCppModel, captured_log


def _has_amx() -> bool:
    return "amx_tile" in cpu_probe.cpu_identity()[1]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh user cache, and no decision remembered from earlier tests in this process."""
    monkeypatch.setenv("EDGEBOX_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(cpu_probe.MODE_ENV, raising=False)
    monkeypatch.setattr(cpu_probe, "_decisions", {})
    return tmp_path


def test_policy_forced_modes_win_and_auto_follows_the_probe() -> None:
    faulted = ProbeResult("faulted", "the probe died by SIGSEGV", fallback_works=True)
    assert decide("on", faulted).enabled and decide("on", faulted).status == "forced on"
    assert not decide("off", ProbeResult("ok", "")).enabled
    assert decide("auto", ProbeResult("ok", "")).enabled
    off = decide("auto", faulted)
    assert not off.enabled and off.fallback
    assert "AMX/repacked weights fault" in (cpu_probe.fallback_notice(off) or "")
    assert cpu_probe.fallback_notice(decide("off", faulted)) is None  # forced: no warning
    # a probe that could not run says nothing about the CPU: llama.cpp's default stays
    assert decide("auto", ProbeResult("error", "no model")).enabled
    assert decide("auto", None).status == "not probed"
    broken = decide("auto", ProbeResult("faulted", "SIGILL", fallback_works=False))
    assert "rebuild llama-cpp-python" in broken.detail


def test_mode_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cpu_probe.MODE_ENV, "OFF")
    assert cpu_probe.normalise_mode(None) == "off"
    with pytest.raises(ValueError, match="auto, on or off"):
        cpu_probe.normalise_mode("maybe")


@pytest.mark.system  # edgebox runs the probe in a child process
def test_the_probe_child_decodes_here(smollm2_path: Path) -> None:
    result = cpu_probe.run_probe(smollm2_path)
    if result.status == "faulted":  # only where the CPU advertises AMX, and the fallback works
        assert _has_amx(), result
        assert result.fallback_works is True and "SIGSEGV" in result.detail, result
    else:
        assert result.status == "ok", result
    assert 0 < result.seconds < 30


@pytest.mark.system  # edgebox runs the probe in a child process
def test_a_child_that_crashes_is_a_fault(
    smollm2_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(cpu_probe.FAULT_HOOK_ENV, "1")
    result = cpu_probe.run_probe(smollm2_path)
    assert result.status == "faulted"
    assert "SIGSEGV" in result.detail
    assert result.fallback_works is True  # the same decode without extra buffers worked


@pytest.mark.system  # edgebox runs the probe in a child process
def test_a_child_that_hangs_is_a_fault(smollm2_path: Path) -> None:
    result = cpu_probe.run_probe(smollm2_path, timeout=0.05)
    assert result.status == "faulted" and "hung" in result.detail


@pytest.mark.system  # edgebox runs the probe in a child process
def test_a_probe_that_cannot_run_is_not_a_fault(tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model")
    result = cpu_probe.run_probe(junk)
    assert result.status == "error" and "probe setup failed" in result.detail


@pytest.mark.system  # edgebox runs the probe in a child process
def test_the_answer_is_cached_per_cpu_and_build(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    children: list[bool] = []
    real = cpu_probe._run_child

    def counted(model: Path, extra: bool, timeout: float) -> tuple[int | None, str, float]:
        children.append(extra)
        return real(model, extra, timeout)

    monkeypatch.setattr(cpu_probe, "_run_child", counted)
    monkeypatch.setenv(cpu_probe.FAULT_HOOK_ENV, "1")
    first = cpu_probe.extra_buffers("auto")
    assert not first.enabled and first.fallback
    assert children == [True, False]  # on faulted, off checked
    stored = json.loads(cpu_probe.cache_path().read_text())
    (entry,) = stored.values()
    assert entry["result"]["status"] == "faulted"
    assert entry["key"]["cpu"] and "system_info" in entry["key"]
    # a new process (the memo cleared) reads the cache and starts no child
    monkeypatch.setattr(cpu_probe, "_decisions", {})
    monkeypatch.delenv(cpu_probe.FAULT_HOOK_ENV)
    assert not cpu_probe.extra_buffers("auto").enabled
    assert children == [True, False]
    # forced modes never probe
    assert cpu_probe.extra_buffers("on").enabled
    assert children == [True, False]


def test_another_build_or_cpu_probes_again(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = cpu_probe.probe_key()
    cpu_probe.store_result(key, ProbeResult("faulted", "SIGSEGV", True))
    assert cpu_probe.cached_result(key) is not None
    assert cpu_probe.cached_result({**key, "system_info": "CPU : AMX_INT8 = 1"}) is None
    assert cpu_probe.cached_result({**key, "flags": ["amx_tile"]}) is None
    cpu_probe.store_result(key, ProbeResult("error", "no model"))  # errors are not kept
    assert cpu_probe.cached_result(key) == ProbeResult("faulted", "SIGSEGV", True)


def test_gemma_weights_are_repacked_only_with_extra_buffers(gemma_path: Path) -> None:
    """With extra buffers llama.cpp repacks Q4_K weights (CPU_REPACK on AVX2, AMX on a CPU that
    advertises AMX); off keeps them plain."""
    with captured_log() as on_log:
        on = LlamaCppModel(gemma_path, n_gpu_layers=0, extra_buffers=True)
    with captured_log() as off_log:
        off = LlamaCppModel(gemma_path, n_gpu_layers=0, extra_buffers=False)
    on.close()
    off.close()
    assert on.extra_buffers and not off.extra_buffers
    kind = "AMX" if _has_amx() else "CPU_REPACK"
    assert f"{kind} model buffer size" in "".join(on_log)
    assert "CPU_REPACK" not in "".join(off_log) and "AMX model buffer" not in "".join(off_log)
