"""`edgebox doctor`'s line on llama.cpp's repacked/AMX CPU weights: forced by the environment,
not probed yet, probed (a real child), or faulted."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgebox.runtimes.doctor import RuntimeCheck, cpu_extra_buffers
from edgebox.runtimes.llamacpp import cpu_probe

LLAMA = [RuntimeCheck("llama.cpp", True, "llama-cpp-python 0.3.36, CPU-only build")]


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGEBOX_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(cpu_probe.MODE_ENV, raising=False)
    monkeypatch.delenv(cpu_probe.FAULT_HOOK_ENV, raising=False)
    return tmp_path


def test_nothing_to_say_without_llama_cpp() -> None:
    missing = [RuntimeCheck("llama.cpp", False, "llama-cpp-python is not installed")]
    assert cpu_extra_buffers(missing, run_probe=True) is None


@pytest.mark.system  # edgebox runs the probe in a child process
def test_not_probed_yet_then_probed_for_real(cache: Path) -> None:
    before = cpu_extra_buffers(LLAMA, run_probe=False)
    assert before is not None and before["status"] == "not probed" and before["enabled"]
    assert before["cache"] == str(cache / "cpu_extra_buffers.json")
    after = cpu_extra_buffers(LLAMA, run_probe=True)
    assert after is not None
    if "amx_tile" in cpu_probe.cpu_identity()[1] and after["status"] != "probed ok":
        # a Xeon VM that advertises AMX and faults on it (the CI's Intel kind): shown as off
        assert after["fallback"] and after["enabled"] is False and "SIGSEGV" in after["detail"]
    else:
        assert after["status"] == "probed ok" and after["enabled"]
    assert (cache / "cpu_extra_buffers.json").is_file()


@pytest.mark.system  # edgebox runs the probe in a child process
def test_a_fault_shows_as_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cpu_probe.FAULT_HOOK_ENV, "1")
    shown = cpu_extra_buffers(LLAMA, run_probe=True)
    assert shown is not None and shown["fallback"] and shown["enabled"] is False
    assert "SIGSEGV" in shown["detail"]


@pytest.mark.parametrize(
    ("env", "status", "enabled"), [("on", "forced on", True), ("Off", "forced off", False)]
)
def test_the_environment_forces_it(
    monkeypatch: pytest.MonkeyPatch, env: str, status: str, enabled: bool
) -> None:
    monkeypatch.setenv(cpu_probe.MODE_ENV, env)
    shown = cpu_extra_buffers(LLAMA, run_probe=True)
    assert shown is not None and (shown["status"], shown["enabled"]) == (status, enabled)


def test_a_bad_environment_value_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cpu_probe.MODE_ENV, "maybe")
    shown = cpu_extra_buffers(LLAMA, run_probe=False)
    assert shown is not None and shown["status"] == "invalid" and "'maybe'" in shown["detail"]
