"""The ONNX Runtime embedding runtime on the bundled all-MiniLM-L6-v2 int8 model (real, CPU)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest

from edgebox.models import resolve_model
from edgebox.runtimes.base import Embeddings, QueueFullError
from edgebox.runtimes.onnx import OnnxEmbeddingRuntime
from edgebox.runtimes.onnx.pooling import mean_pool, normalise, pad_batch

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome.",
    "A man is riding a white horse on an enclosed ground.",
    "Quarks are bound together by gluons in the strong interaction.",
]


@pytest.fixture(scope="module")
def minilm() -> Iterator[OnnxEmbeddingRuntime]:
    model = resolve_model("minilm")
    assert model.tokenizer is not None
    runtime = OnnxEmbeddingRuntime(model.path, model.tokenizer, name=model.alias, threads=2)
    yield runtime
    runtime.close()


def embed(runtime: OnnxEmbeddingRuntime, texts: list[str]) -> np.ndarray:
    return runtime.embed(texts).result(timeout=60).vectors  # type: ignore[no-any-return]


def test_vectors_are_384_dimensional_and_unit_length(minilm: OnnxEmbeddingRuntime) -> None:
    vectors = embed(minilm, SENTENCES)
    assert vectors.shape == (5, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert minilm.dimensions == 384 and minilm.info.metadata["pooling"] == "mean"


def test_similar_sentences_are_closer_than_unrelated_ones(minilm: OnnxEmbeddingRuntime) -> None:
    v = embed(minilm, SENTENCES)
    eating = float(v[0] @ v[1])
    assert eating > 0.6
    assert all(eating > float(v[0] @ v[i]) + 0.3 for i in (2, 4))
    assert float(v[0] @ v[3]) > float(v[0] @ v[4])  # a man doing something beats physics


def test_a_batch_equals_each_sentence_alone(minilm: OnnxEmbeddingRuntime) -> None:
    # different lengths, so the batch pads; padding must not leak into the pooled vectors
    batch = embed(minilm, SENTENCES)
    alone = np.stack([embed(minilm, [s])[0] for s in SENTENCES])
    assert np.allclose(batch, alone, atol=1e-5)


def test_results_come_back_in_input_order_across_sub_batches(minilm: OnnxEmbeddingRuntime) -> None:
    texts = [f"sentence number {i} " + "word " * (i % 7) for i in range(40)]  # > one 32-batch
    many = embed(minilm, texts)
    assert np.allclose(many[33], embed(minilm, [texts[33]])[0], atol=1e-5)
    assert np.allclose(many[5], embed(minilm, [texts[5]])[0], atol=1e-5)


def test_usage_counts_model_tokens_and_long_inputs_are_truncated(
    minilm: OnnxEmbeddingRuntime,
) -> None:
    result = minilm.embed(["Hello world", "word " * 1000]).result(timeout=60)
    assert result.token_counts == (4, 256)  # [CLS] hello world [SEP]; max_seq_length 256
    assert result.prompt_tokens == 260 and minilm.info.n_ctx == 256


def test_a_full_queue_refuses_with_retry_after() -> None:
    model = resolve_model("all-minilm-l6-v2")
    assert model.tokenizer is not None
    tiny = OnnxEmbeddingRuntime(model.path, model.tokenizer, name="q", threads=1, max_queue=1)
    gate, held = threading.Event(), threading.Event()
    embed = tiny._embed

    def hold_the_worker(texts: list[str]) -> Embeddings:
        held.set()
        gate.wait(30)
        return embed(texts)

    try:
        tiny._embed = hold_the_worker  # type: ignore[method-assign]
        first = tiny.embed(["first"])  # holds the only worker, so the next request waits
        assert held.wait(30)
        tiny._embed = embed  # type: ignore[method-assign]
        waiting = tiny.embed(["queued"])
        assert tiny.stats().queued == 1
        with pytest.raises(QueueFullError) as excinfo:
            tiny.embed(["one too many"])
        assert excinfo.value.retry_after > 0
        gate.set()
        first.result(timeout=30)
        assert waiting.result(timeout=30).vectors.shape == (1, 384)
        assert tiny.embed(["room again"]).result(timeout=30).prompt_tokens == 4
    finally:
        gate.set()
        tiny.close()


def test_requests_arriving_together_at_an_idle_worker_are_not_counted_as_waiting() -> None:
    model = resolve_model("all-minilm-l6-v2")
    assert model.tokenizer is not None
    tiny = OnnxEmbeddingRuntime(model.path, model.tokenizer, name="q", threads=1, max_queue=1)
    try:
        # Holding the queue's lock keeps the idle worker from taking the first request before
        # the second arrives: the first is about to run, only the second waits.
        with tiny._queue.cond:
            first, second = tiny.embed(["first"]), tiny.embed(["second"])
            with pytest.raises(QueueFullError):
                tiny.embed(["one too many"])
        assert first.result(timeout=30).prompt_tokens == second.result(timeout=30).prompt_tokens
    finally:
        tiny.close()


def test_mean_pool_ignores_padding() -> None:
    batch = pad_batch([[1, 2, 3], [4]], [[0, 0, 0], [0]])
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    hidden = np.arange(18, dtype=np.float32).reshape(2, 3, 3)
    pooled = mean_pool(hidden, batch["attention_mask"])
    assert pooled.tolist() == [[3.0, 4.0, 5.0], [9.0, 10.0, 11.0]]
    assert np.allclose(np.linalg.norm(normalise(pooled), axis=1), 1.0)


def test_open_model_serves_an_onnx_file_as_an_embedder_on_a_cpu_box() -> None:
    from edgebox.runtimes.base import BackendError
    from edgebox.runtimes.open import open_model
    from edgebox.runtimes.select import Installed
    from tests.runtimes.test_select import CPU

    model = resolve_model("minilm")
    box = (CPU, Installed(frozenset({"onnx"}), onnx_providers=("CPUExecutionProvider",)))
    runtime, chosen = open_model(model.path, name="mini", box=box, tokenizer=model.tokenizer)
    try:
        assert chosen.runtime == "onnx" and isinstance(runtime, OnnxEmbeddingRuntime)
        assert runtime.capabilities.embeddings and not runtime.capabilities.chat
    finally:
        runtime.close()
    with pytest.raises(BackendError, match=r"tokenizer\.json"):
        open_model(model.path, name="mini", box=box)
