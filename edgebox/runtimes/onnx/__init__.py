"""ONNX Runtime backend: sentence embeddings on TensorRT, CUDA, CoreML or CPU."""

from edgebox.runtimes.onnx.providers import choose_providers, trt_cache_dir
from edgebox.runtimes.onnx.runtime import OnnxEmbeddingRuntime

__all__ = ["OnnxEmbeddingRuntime", "choose_providers", "trt_cache_dir"]
