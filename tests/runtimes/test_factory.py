"""open_runtime: the file format picks the runtime unless a runtime is named."""

from pathlib import Path

import pytest

from edgebox.models import ResolvedModel, resolve_model
from edgebox.runtimes.base import BackendError
from edgebox.runtimes.factory import open_runtime
from edgebox.runtimes.onnx import OnnxEmbeddingRuntime


def test_an_onnx_model_opens_on_onnx_runtime_as_an_embedder() -> None:
    runtime = open_runtime(resolve_model("minilm"))
    try:
        assert isinstance(runtime, OnnxEmbeddingRuntime)
        assert runtime.capabilities.embeddings and not runtime.capabilities.chat
        assert runtime.name == "all-minilm-l6-v2"
    finally:
        runtime.close()


def test_an_unknown_format_or_runtime_names_the_known_ones(tmp_path: Path) -> None:
    weird = ResolvedModel(tmp_path / "model.safetensors", "weird", "file")
    with pytest.raises(BackendError, match="known runtimes: llamacpp, onnx"):
        open_runtime(weird)
    with pytest.raises(BackendError, match="runtime tensorrt-llm"):
        open_runtime(resolve_model("minilm"), "tensorrt-llm")


def test_an_onnx_model_without_a_tokenizer_is_refused(tmp_path: Path) -> None:
    bare = ResolvedModel(resolve_model("minilm").path, "bare", "file")
    with pytest.raises(BackendError, match="tokenizer"):
        open_runtime(bare)
