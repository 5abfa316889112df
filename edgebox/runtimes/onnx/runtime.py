"""Sentence embeddings from an ONNX encoder (BERT family) and a Hugging Face `tokenizer.json`.

Inference runs on the runtime's own worker threads (`concurrency`, 1 by default: one ONNX
session already spreads a batch over every core), so the node's event loop never blocks.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from edgebox.runtimes.base import (
    BATCH_BUCKETS,
    BackendError,
    Capabilities,
    Embeddings,
    ModelInfo,
    QueueFullError,
    RuntimeStats,
)
from edgebox.runtimes.onnx.pooling import mean_pool, normalise, pad_batch
from edgebox.runtimes.onnx.providers import choose_providers, trt_cache_dir

DEFAULT_MAX_TOKENS = 256  # sentence-transformers' max_seq_length for all-MiniLM-L6-v2


def max_tokens_for(tokenizer_path: Path, n_positions: int) -> int:
    """sentence_bert_config.json's max_seq_length when present (what the model was trained
    with), else the position limit; never past the position embeddings."""
    config = tokenizer_path.parent / "sentence_bert_config.json"
    try:
        value = int(json.loads(config.read_text())["max_seq_length"])
    except (OSError, ValueError, KeyError, TypeError):
        value = n_positions
    return max(8, min(value, n_positions))


class OnnxEmbeddingRuntime:
    def __init__(
        self,
        model_path: str | Path,
        tokenizer_path: str | Path,
        *,
        name: str,
        threads: int | None = None,
        concurrency: int = 1,
        max_queue: int = 64,
        batch_size: int = 32,
        n_positions: int = 512,
        providers: Sequence[tuple[str, dict[str, object]]] | None = None,
    ) -> None:
        self.name = name
        self.model_path = Path(model_path)
        self.tokenizer_path = Path(tokenizer_path)
        try:
            self.tokenizer = Tokenizer.from_file(str(self.tokenizer_path))
        except Exception as exc:
            raise BackendError(f"cannot read tokenizer {self.tokenizer_path}: {exc}") from exc
        self.max_tokens = max_tokens_for(self.tokenizer_path, n_positions)
        # tokenizer.json may fix padding/truncation (all-MiniLM's pads every input to 128);
        # we pad per batch to its longest member instead.
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_tokens)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0  # 0: ONNX Runtime's default, all cores
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle worker threads would otherwise spin after each run, taking the cores the
        # HTTP event loop needs to answer the request that just finished.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        chosen = providers or choose_providers(
            ort.get_available_providers(), trt_cache=trt_cache_dir()
        )
        for provider, opts in chosen:
            if provider == "TensorrtExecutionProvider":
                os.makedirs(str(opts.get("trt_engine_cache_path", ".")), exist_ok=True)
        try:
            self.session = ort.InferenceSession(
                str(self.model_path), options, providers=list(chosen)
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise BackendError(f"cannot load ONNX model {self.model_path}: {exc}") from exc
        self._inputs = {i.name for i in self.session.get_inputs()}
        output = self.session.get_outputs()[0]
        self._output = output.name
        self._pooled = len(output.shape) == 2  # already one vector per input; else tokens
        self.dimensions = int(self._probe_dimensions())
        self.batch_size = batch_size
        self.max_queue = max_queue
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix=f"onnx-{name}")
        self._lock = threading.Lock()
        self._slots = concurrency
        self._pending = 0
        self._running = 0
        self._prompt_tokens = 0
        self._steps = 0
        self._step_s = 0.0
        self._batch_tokens = 0
        self._buckets = [0] * len(BATCH_BUCKETS)
        self.providers = self.session.get_providers()
        self.capabilities = Capabilities(
            chat=False, completions=False, embeddings=True, batching=True
        )
        self.info = ModelInfo(
            path=str(self.model_path),
            architecture="bert",
            n_ctx_train=n_positions,
            n_ctx=self.max_tokens,
            n_params=0,  # not recorded in ONNX files
            size_bytes=self.model_path.stat().st_size,
            description=f"{self.model_path.name} ({name}), {self.dimensions}-d embeddings",
            has_chat_template=False,
            metadata={
                "dimensions": self.dimensions,
                "pooling": "model" if self._pooled else "mean",
                "providers": self.providers,
                "tokenizer": str(self.tokenizer_path),
            },
        )

    def _probe_dimensions(self) -> int:
        last = self.session.get_outputs()[0].shape[-1]
        if isinstance(last, int):
            return last
        return int(self._run([[101, 102]], [[0, 0]]).shape[1])

    def embed(self, texts: Sequence[str]) -> Future[Embeddings]:
        with self._lock:
            if self._pending >= self.max_queue:
                raise QueueFullError(
                    f"{self._pending} embedding requests are waiting for {self.name}",
                    retry_after=1.0,
                )
            self._pending += 1
        return self._pool.submit(self._embed, list(texts))

    def _embed(self, texts: list[str]) -> Embeddings:
        with self._lock:
            self._pending -= 1
            self._running += 1
        try:
            encodings = self.tokenizer.encode_batch(texts)
            counts = tuple(len(e.ids) for e in encodings)
            vectors = np.empty((len(texts), self.dimensions), dtype=np.float32)
            # Similar lengths together, so each batch pads little; results go back in order.
            order = sorted(range(len(texts)), key=lambda i: counts[i])
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                vectors[rows] = self._run(
                    [encodings[i].ids for i in rows], [encodings[i].type_ids for i in rows]
                )
        finally:
            with self._lock:
                self._running -= 1
        with self._lock:
            self._prompt_tokens += sum(counts)
        return Embeddings(vectors=vectors, prompt_tokens=sum(counts), token_counts=counts)

    def _run(self, ids: Sequence[Sequence[int]], types: Sequence[Sequence[int]]) -> np.ndarray:
        batch = pad_batch(ids, types)
        feed = {k: v for k, v in batch.items() if k in self._inputs}
        started = time.perf_counter()
        out = self.session.run([self._output], feed)[0]
        pooled = out if self._pooled else mean_pool(out, batch["attention_mask"])
        elapsed = time.perf_counter() - started
        tokens = sum(len(i) for i in ids)
        with self._lock:
            self._steps += 1
            self._step_s += elapsed
            self._batch_tokens += tokens
            for b, bound in enumerate(BATCH_BUCKETS):
                if tokens <= bound:
                    self._buckets[b] += 1
        return normalise(pooled)

    def stats(self) -> RuntimeStats:
        with self._lock:
            return RuntimeStats(
                slots=self._slots,
                running=self._running,
                queued=self._pending,
                prompt_tokens_total=self._prompt_tokens,
                cached_tokens_total=0,
                generated_tokens_total=0,
                steps_total=self._steps,
                step_seconds_total=self._step_s,
                batch_tokens_total=self._batch_tokens,
                batch_size_buckets=tuple(self._buckets),
            )

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
