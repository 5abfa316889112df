"""`serve --gpu-layers` on an NVIDIA box: the selection's reason (what /health shows as the
model's fast_path) and the runtime agree on where the layers go.

The box is the H100 of tests/fixtures/nvidia/ through the real NVML parsing and probe, with a
llama-cpp-python build that has GPU offload; this machine's build is CPU-only, so the real
SmolLM2 loads on the CPU whatever is asked, and the test judges what edgebox says and passes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgebox.hardware.nvidia import nvidia_accelerators
from edgebox.hardware.probe import HardwareProfile, probe
from edgebox.runtimes.open import RuntimeOptions, open_model
from edgebox.runtimes.select import Installed, ModelSize, select_runtime
from tests.hardware.nvml_replay import recorded

CUDA_BUILD = Installed(frozenset({"llamacpp"}), llama_gpu_offload=True)
SMOLLM2 = ModelSize(98_362_432, 30)


@pytest.fixture(scope="module")
def h100() -> HardwareProfile:
    return probe(measure=False, accelerators=nvidia_accelerators(recorded("h100_nvml.json")))


@pytest.mark.parametrize(
    ("gpu_layers", "n_gpu_layers", "reason"),
    [
        (-1, -1, "llama.cpp with CUDA: every layer offloaded to NVIDIA H100 80GB HBM3"),
        (0, 0, "llama.cpp on CPU: --gpu-layers 0 keeps every layer off NVIDIA H100 80GB HBM3"),
        (10, 10, "llama.cpp with CUDA: 10 of 30 layers on NVIDIA H100 80GB HBM3 (--gpu-layers 10)"),
        (999, 999, "every layer offloaded to NVIDIA H100 80GB HBM3 (--gpu-layers 999)"),
    ],
)
def test_the_reason_says_where_the_layers_go(
    h100: HardwareProfile, gpu_layers: int, n_gpu_layers: int, reason: str
) -> None:
    chosen = select_runtime(h100, "gguf", CUDA_BUILD, model_size=SMOLLM2, gpu_layers=gpu_layers)
    assert chosen.runtime == "llamacpp"
    assert chosen.settings["n_gpu_layers"] == n_gpu_layers
    assert reason in chosen.reason
    if gpu_layers == 0:
        assert chosen.settings["backend"] == "cpu" and "offloaded" not in chosen.reason


def test_a_node_told_gpu_layers_0_neither_offloads_nor_says_it_does(
    h100: HardwareProfile, smollm2_path: Path
) -> None:
    options = RuntimeOptions(n_ctx=256, parallel=1, gpu_layers=0, cpu_extra_buffers="off")
    runtime, chosen = open_model(smollm2_path, name="m", options=options, box=(h100, CUDA_BUILD))
    try:
        assert "every layer off NVIDIA H100" in chosen.reason, chosen.reason
        assert runtime.info.metadata["gpu_layers"] == 0
    finally:
        runtime.close()
