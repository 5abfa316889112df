"""Sentence embeddings from an ONNX encoder (BERT family) and a Hugging Face `tokenizer.json`.

Inference runs on the runtime's own worker threads (`concurrency`, 1 by default: one ONNX
session already spreads a batch over every core), so the node's event loop never blocks.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from edgebox.runtimes.base import (
    BackendError,
    Capabilities,
    Embeddings,
    ModelInfo,
    RuntimeStats,
)
from edgebox.runtimes.jobs import Job, JobMetrics, JobQueue, Workers
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


def load_tokenizer(path: Path, max_tokens: int) -> Tokenizer:
    """The tokenizer, truncating at `max_tokens` and padding nothing (batches pad themselves)."""
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:
        raise BackendError(f"cannot read tokenizer {path}: {exc}") from exc
    # tokenizer.json may fix padding/truncation (all-MiniLM's pads every input to 128);
    # we pad per batch to its longest member instead.
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_tokens)
    return tokenizer


def load_session(
    model_path: Path,
    threads: int | None,
    providers: Sequence[tuple[str, dict[str, object]]] | None,
) -> ort.InferenceSession:
    """An ONNX Runtime session on the best providers here (or the ones given)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0  # 0: ONNX Runtime's default, all cores
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle worker threads would otherwise spin after each run, taking the cores the
    # HTTP event loop needs to answer the request that just finished.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    chosen = providers or choose_providers(ort.get_available_providers(), trt_cache=trt_cache_dir())
    for provider, opts in chosen:
        if provider == "TensorrtExecutionProvider":
            os.makedirs(str(opts.get("trt_engine_cache_path", ".")), exist_ok=True)
    try:
        return ort.InferenceSession(str(model_path), options, providers=list(chosen))
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise BackendError(f"cannot load ONNX model {model_path}: {exc}") from exc


@dataclass(eq=False, kw_only=True)
class EmbeddingJob(Job):
    """Texts to embed, and the future their vectors go to."""

    texts: list[str]
    future: Future[Embeddings] = field(default_factory=Future)


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
        self.max_tokens = max_tokens_for(self.tokenizer_path, n_positions)
        self.tokenizer = load_tokenizer(self.tokenizer_path, self.max_tokens)
        self.session = load_session(self.model_path, threads, providers)
        self._inputs = {i.name for i in self.session.get_inputs()}
        output = self.session.get_outputs()[0]
        self._output = output.name
        self._pooled = len(output.shape) == 2  # already one vector per input; else tokens
        self.dimensions = int(self._probe_dimensions())
        self.batch_size = batch_size
        self.max_queue = max_queue
        self.providers = self.session.get_providers()
        self.capabilities = Capabilities(
            chat=False, completions=False, embeddings=True, batching=True
        )
        self.info = self._model_info(n_positions)
        self._slots = concurrency
        self._queue: JobQueue[EmbeddingJob] = JobQueue(max_queue, full_message=self._full)
        self._metrics = JobMetrics(self._queue.cond, steps=True)
        self._workers = Workers(
            self._queue, concurrency, self._serve, self._failed, name=f"onnx-{name}"
        )

    def _full(self, waiting: int) -> str:
        return f"{waiting} embedding requests are waiting for {self.name}"

    def _model_info(self, n_positions: int) -> ModelInfo:
        return ModelInfo(
            path=str(self.model_path),
            architecture="bert",
            n_ctx_train=n_positions,
            n_ctx=self.max_tokens,
            n_params=0,  # not recorded in ONNX files
            size_bytes=self.model_path.stat().st_size,
            description=f"{self.model_path.name} ({self.name}), {self.dimensions}-d embeddings",
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
        return int(self._run([[101, 102]], [[0, 0]], count=False).shape[1])

    def embed(self, texts: Sequence[str]) -> Future[Embeddings]:
        job = EmbeddingJob(texts=list(texts))
        self._queue.put(job)
        return job.future

    def _serve(self, job: EmbeddingJob) -> None:
        if job.future.set_running_or_notify_cancel():  # False: the caller gave up waiting
            job.future.set_result(self._embed(job.texts))

    def _failed(self, job: EmbeddingJob, exc: Exception) -> None:
        job.future.set_exception(exc)

    def _embed(self, texts: list[str]) -> Embeddings:
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
        self._metrics.totals(prompt=sum(counts))
        return Embeddings(vectors=vectors, prompt_tokens=sum(counts), token_counts=counts)

    def _run(
        self, ids: Sequence[Sequence[int]], types: Sequence[Sequence[int]], *, count: bool = True
    ) -> np.ndarray:
        """One batch through the session; `count`: as a step of its tokens in the stats."""
        batch = pad_batch(ids, types)
        feed = {k: v for k, v in batch.items() if k in self._inputs}
        started = time.perf_counter()
        out = self.session.run([self._output], feed)[0]
        pooled = out if self._pooled else mean_pool(out, batch["attention_mask"])
        if count:
            self._metrics.step(sum(len(i) for i in ids), time.perf_counter() - started)
        return normalise(pooled)

    def stats(self) -> RuntimeStats:
        with self._queue.cond:
            running, queued = len(self._workers.running), len(self._queue)
            return self._metrics.stats(slots=self._slots, running=running, queued=queued)

    def close(self) -> None:
        for job in self._workers.close(cancel_running=False, timeout=None):
            job.future.cancel()
