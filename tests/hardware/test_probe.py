"""Hardware probe on this machine for real; other devices through the pure parts."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from edgebox.hardware import Accelerator, probe
from edgebox.hardware.probe import classify, known_bandwidth, parse_cpuinfo
from edgebox.runtimes.doctor import check_llama_cpp, fast_paths

# Lines as /proc/cpuinfo prints them on an x86 server and on a GB10 (aarch64).
X86_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9B14
flags\t\t: fpu vme sse2 ssse3 fma sse4_2 avx f16c avx2 avx512f avx512_vnni avx512_bf16
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 2000.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp asimddp sve sve2 i8mm bf16
CPU implementer\t: 0x41
"""


def test_cpuinfo_parsing_picks_model_and_simd() -> None:
    model, simd = parse_cpuinfo(X86_CPUINFO)
    assert model == "AMD EPYC 9B14"
    assert simd == ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16")
    model, simd = parse_cpuinfo(ARM_CPUINFO)
    assert model == ""
    assert simd == ("asimd", "asimddp", "asimdhp", "i8mm", "bf16", "sve", "sve2")


@pytest.mark.parametrize(
    ("name", "key", "gbps"),
    [
        ("NVIDIA GB10", "GB10", 273),
        ("NVIDIA GeForce RTX 4090", "RTX 4090", 1008),
        ("NVIDIA H100 80GB HBM3", "H100", 3350),
        ("NVIDIA H100 PCIe", "H100 PCIe", 2000),
        ("Apple M2 Max", "Apple M2 Max", 400),
        ("Apple M2", "Apple M2", 100),
    ],
)
def test_known_bandwidth_takes_the_most_specific_entry(name: str, key: str, gbps: float) -> None:
    assert known_bandwidth(name) == (key, gbps)


def test_unknown_device_has_no_table_entry() -> None:
    assert known_bandwidth("AMD EPYC 9B14") is None


def gpu(name: str, unified: bool = False) -> Accelerator:
    return Accelerator("cuda", name, None if unified else 24 << 30, unified, "8.9", "580.0")


def test_classes() -> None:
    assert classify("Linux", "aarch64", (gpu("NVIDIA GB10", True),)) == "nvidia-dgx-spark"
    assert classify("Linux", "x86_64", (gpu("NVIDIA GeForce RTX 4090"),)) == "nvidia-rtx"
    assert classify("Linux", "x86_64", (gpu("NVIDIA H100 80GB HBM3"),)) == "nvidia-datacenter"
    assert classify("Darwin", "arm64", ()) == "apple-silicon"
    assert classify("Linux", "x86_64", ()) == "cpu"


def test_real_probe_of_this_machine() -> None:
    hw = probe()
    assert hw.hw_class == "cpu" and not hw.accelerators and not hw.unified_memory
    assert hw.cores_logical == os.cpu_count()
    assert 0 < hw.memory_available <= hw.memory_total
    assert hw.bandwidth_source == "measured" and hw.bandwidth_gbps > 0.5
    assert hw.cpu_model
    json.dumps(hw.to_dict())  # serialisable for the hub and `--json`


def test_doctor_names_the_cuda_build_on_an_nvidia_box_with_a_cpu_build() -> None:
    spark = dataclasses.replace(
        probe(measure=False),
        hw_class="nvidia-dgx-spark",
        accelerators=(gpu("NVIDIA GB10", True),),
    )
    check = check_llama_cpp(spark)
    assert check.usable and "CPU-only build" in check.detail
    assert check.enable is not None and 'CMAKE_ARGS="-DGGML_CUDA=on"' in check.enable
    assert "llama-cpp-python==0.3.36" in check.enable
    gguf = next(p for p in fast_paths(spark, [check]) if p.model_format == "gguf")
    assert gguf.runtime == "llamacpp" and gguf.settings["n_gpu_layers"] == 0
    assert "no GPU offload" in gguf.reason


def test_doctor_cli_json() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "edgebox", "doctor", "--json", "--no-measure"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["hardware"]["hw_class"] == "cpu"
    runtimes = {r["runtime"]: r for r in data["runtimes"]}
    assert runtimes["llama.cpp"]["usable"] is True
    assert runtimes["tensorrt-llm"] == {
        "runtime": "tensorrt-llm",
        "usable": False,
        "detail": "needs an NVIDIA GPU",
        "enable": None,
        "features": [],
    }
    paths = {p["model_format"]: p for p in data["fast_paths"]}
    assert paths["gguf"]["runtime"] == "llamacpp"
    assert paths["gguf"]["reason"] == "llama.cpp on CPU (no GPU on this box)"
    assert paths["mlx"]["runtime"] == "mlx" and paths["mlx"]["settings"] == {"device": "cpu"}
    assert paths["onnx"]["settings"] == {"providers": ["CPUExecutionProvider"]}
    assert paths["trt-engine"] == {
        "model_format": "trt-engine",
        "runtime": None,
        "settings": {},
        "reason": "a TensorRT-LLM engine needs an NVIDIA GPU",
    }
