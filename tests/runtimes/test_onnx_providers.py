"""Execution-provider choice: a pure policy over what onnxruntime reports."""

from pathlib import Path

from edgebox.runtimes.onnx.providers import choose_providers, trt_cache_dir

ALL = [
    "CPUExecutionProvider",
    "CoreMLExecutionProvider",
    "CUDAExecutionProvider",
    "TensorrtExecutionProvider",
    "AzureExecutionProvider",
]


def names(chosen: list[tuple[str, dict[str, object]]]) -> list[str]:
    return [name for name, _ in chosen]


def test_fastest_first_and_cpu_last_whatever_order_onnxruntime_reports() -> None:
    chosen = choose_providers(ALL, trt_cache=Path("/c"))
    assert names(chosen) == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CoreMLExecutionProvider",
        "CPUExecutionProvider",
    ]


def test_cpu_only_build_gets_cpu_only() -> None:
    # what the CPU wheel on this machine reports
    assert names(
        choose_providers(["AzureExecutionProvider", "CPUExecutionProvider"], trt_cache=Path("/c"))
    ) == ["CPUExecutionProvider"]


def test_cuda_build_without_tensorrt_libraries_skips_tensorrt() -> None:
    chosen = choose_providers(
        ["CUDAExecutionProvider", "CPUExecutionProvider"], trt_cache=Path("/c")
    )
    assert names(chosen) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert chosen[0][1] == {"device_id": 0}


def test_apple_build_uses_coreml() -> None:
    chosen = choose_providers(
        ["CoreMLExecutionProvider", "CPUExecutionProvider"], trt_cache=Path("/c")
    )
    assert names(chosen) == ["CoreMLExecutionProvider", "CPUExecutionProvider"]


def test_tensorrt_caches_engines_on_disk(tmp_path: Path) -> None:
    chosen = dict(choose_providers(ALL, trt_cache=tmp_path / "trt", device_id=1))
    trt = chosen["TensorrtExecutionProvider"]
    assert trt["trt_engine_cache_enable"] is True
    assert trt["trt_engine_cache_path"] == str(tmp_path / "trt")
    assert trt["trt_timing_cache_enable"] is True and trt["device_id"] == 1


def test_trt_cache_lives_under_edgebox_home() -> None:
    assert trt_cache_dir({"EDGEBOX_HOME": "/srv/eb"}) == Path("/srv/eb/cache/trt")
    assert trt_cache_dir({}) == Path.home() / ".edgebox" / "cache" / "trt"
