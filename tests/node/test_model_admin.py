"""Loading and unloading models on a real running node (SmolLM2 served, the bundled MiniLM and
Gemma 3 270M loaded at runtime), behind its API key; /v1/models, /health and the node's mDNS
model digest follow; bad input is a 4xx naming the field."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from edgebox.fleet.advert import model_digest
from edgebox.fleet.interfaces import LanInterface
from edgebox.fleet.mdns import NodeBrowser
from tests.conftest import NodeProcess, start_node

KEY = "sk-edgebox-models-test-3141"
AUTH = {"Authorization": f"Bearer {KEY}"}
LOOPBACK = [LanInterface("lo", "127.0.0.1", "255.0.0.0")]


@pytest.fixture(scope="module")
def keyed_node(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path) -> Iterator[NodeProcess]:
    tmp = tmp_path_factory.mktemp("models")
    node = start_node(
        tmp,
        "--model",
        "smollm2-135m",
        "--ctx",
        "512",
        "--mdns",
        # a home of its own: a node id no other test node advertises on loopback
        env={"EDGEBOX_API_KEY": KEY, "EDGEBOX_MDNS_INTERFACES": "lo", "EDGEBOX_HOME": str(tmp)},
    )
    yield node
    node.stop()


def admin(node: NodeProcess, method: str, path: str, body: object = None) -> httpx.Response:
    return httpx.request(method, node.url + path, headers=AUTH, json=body, timeout=120)


def served(node: NodeProcess) -> list[str]:
    r = httpx.get(node.base_url + "/models", headers=AUTH)
    return [m["id"] for m in r.json()["data"] if m["status"] == "loaded"]


def client(node: NodeProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=node.base_url, api_key=KEY, max_retries=0)


def test_admin_models_need_the_key(keyed_node: NodeProcess) -> None:
    for method, path in (
        ("GET", "/admin/models"),
        ("POST", "/admin/models/load"),
        ("POST", "/admin/models/unload"),
        ("GET", "/admin/requests"),
    ):
        r = httpx.request(method, keyed_node.url + path, json={"model": "minilm"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert served(keyed_node) == ["smollm2-135m"]


def test_lists_loaded_with_fast_path_and_the_loadable_ones(keyed_node: NodeProcess) -> None:
    body = admin(keyed_node, "GET", "/admin/models").json()
    (loaded,) = body["data"]
    assert loaded["id"] == "smollm2-135m" and loaded["runtime"] == "LlamaCppRuntime"
    assert loaded["fast_path"].startswith("llamacpp: ")
    loadable = {m["name"]: m for m in body["loadable"]}
    assert loadable["smollm2-135m"]["loaded"] is True
    assert loadable["all-minilm-l6-v2"] == {
        "name": "all-minilm-l6-v2",
        "kind": "embeddings",
        "source": "bundled",
        "loaded": False,
    }
    assert loadable["gemma3-270m"]["loaded"] is False


def test_load_embed_unload_then_404(keyed_node: NodeProcess) -> None:
    loaded = admin(keyed_node, "POST", "/admin/models/load", {"model": "minilm"})
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["id"] == "all-minilm-l6-v2" and loaded.json()["kind"] == "embeddings"
    assert served(keyed_node) == ["smollm2-135m", "all-minilm-l6-v2"]
    assert "all-minilm-l6-v2" in httpx.get(keyed_node.url + "/health").json()["models"]
    vectors = client(keyed_node).embeddings.create(model="all-minilm-l6-v2", input="hello")
    assert len(vectors.data[0].embedding) == 384

    again = admin(keyed_node, "POST", "/admin/models/load", {"model": "all-minilm-l6-v2"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "model_already_loaded"

    gone = admin(keyed_node, "POST", "/admin/models/unload", {"model": "all-minilm-l6-v2"})
    assert gone.status_code == 200 and gone.json() == {
        "status": "unloaded",
        "id": "all-minilm-l6-v2",
    }
    assert served(keyed_node) == ["smollm2-135m"]
    assert "all-minilm-l6-v2" not in httpx.get(keyed_node.url + "/health").json()["models"]
    # still on disk: the next request loads it again (load on demand), a model nowhere is a 404
    again_vectors = client(keyed_node).embeddings.create(model="all-minilm-l6-v2", input="hello")
    assert again_vectors.data[0].embedding == vectors.data[0].embedding
    assert served(keyed_node) == ["smollm2-135m", "all-minilm-l6-v2"]
    assert admin(keyed_node, "POST", "/admin/models/unload", {"model": "all-minilm-l6-v2"})
    with pytest.raises(openai.NotFoundError) as excinfo:
        client(keyed_node).embeddings.create(model="no-such-embedder", input="hello")
    assert excinfo.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_a_chat_model_loads_while_the_node_serves_and_the_mdns_digest_follows(
    keyed_node: NodeProcess,
) -> None:
    node_id = httpx.get(keyed_node.url + "/health").json()["node"]["id"]
    result: list[httpx.Response] = []
    loader = threading.Thread(
        target=lambda: result.append(
            admin(keyed_node, "POST", "/admin/models/load", {"model": "gemma3-270m"})
        )
    )
    loader.start()
    seen_loading = False
    while loader.is_alive():  # the node answers its admin and OpenAI routes during the load
        listing = admin(keyed_node, "GET", "/admin/models").json()
        seen_loading = seen_loading or listing["loading"] == ["gemma3-270m"]
        time.sleep(0.02)
    loader.join()
    assert seen_loading
    assert result[0].status_code == 200, result[0].text
    assert result[0].json()["fast_path"].startswith("llamacpp: ")
    out = client(keyed_node).completions.create(
        model="gemma3-270m", prompt="One, two,", max_tokens=3, temperature=0
    )
    assert out.usage is not None and out.usage.completion_tokens > 0
    both = model_digest(["smollm2-135m", "gemma3-270m"])
    try:  # the re-announced record reaches the browser after its cached one: wait for it
        assert digest_of(node_id, both) == both
    finally:  # the module's other tests expect only smollm2 served
        gone = admin(keyed_node, "POST", "/admin/models/unload", {"model": "gemma3-270m"})
    assert gone.status_code == 200
    cards = httpx.get(keyed_node.base_url + "/models", headers=AUTH).json()["data"]
    assert {c["id"]: c["status"] for c in cards}["gemma3-270m"] == "available"  # on disk still
    assert digest_of(node_id, model_digest(["smollm2-135m"])) == model_digest(["smollm2-135m"])


def digest_of(node_id: str, want: str | None = None, timeout: float = 10) -> str | None:
    """The model digest our node advertises over mDNS on loopback (waiting for `want`)."""

    async def browse() -> str | None:
        browser = NodeBrowser(LOOPBACK)
        await browser.start()
        try:
            deadline = time.monotonic() + timeout
            digest = None
            while time.monotonic() < deadline:
                ours = [n for n in browser.nodes.values() if n.node_id == node_id]
                digest = ours[0].model_digest if ours else None
                if digest is not None and (want is None or digest == want):
                    return digest
                await asyncio.sleep(0.1)
            return digest
        finally:
            await browser.stop()

    return asyncio.run(browse())


def test_unload_refuses_a_model_with_running_requests(keyed_node: NodeProcess) -> None:
    stream = client(keyed_node).completions.create(  # counting on: it does not stop early
        model="smollm2-135m",
        prompt="1, 2, 3, 4, 5, 6, 7, 8, 9, 10,",
        max_tokens=200,
        temperature=0,
        stream=True,
    )
    next(iter(stream))
    busy = admin(keyed_node, "POST", "/admin/models/unload", {"model": "smollm2-135m"})
    stream.close()
    assert busy.status_code == 409, busy.text
    assert busy.json()["error"]["code"] == "model_busy" and busy.headers["retry-after"] == "5"
    assert served(keyed_node) == ["smollm2-135m"]


@pytest.mark.parametrize(
    ("path", "body", "status", "param", "code"),
    [
        ("load", {"model": 3}, 400, "model", "invalid_value"),
        ("load", {}, 400, "model", "missing_required_parameter"),
        ("load", {"model": "minilm", "runtime": "tpu"}, 400, "runtime", "invalid_value"),
        ("load", {"model": "minilm", "modle": "x"}, 400, "modle", "invalid_value"),
        ("load", {"model": "no-such-model"}, 404, "model", "model_not_found"),
        ("load", {"model": "smollm2-135m"}, 409, "model", "model_already_loaded"),
        ("load", {"model": "minilm", "runtime": "llamacpp"}, 400, "runtime", "model_not_loadable"),
        ("unload", {"model": "no-such-model"}, 404, "model", "model_not_found"),
        ("unload", {"model": ["smollm2-135m"]}, 400, "model", "invalid_value"),
    ],
)
def test_bad_input_names_the_field(
    keyed_node: NodeProcess, path: str, body: object, status: int, param: str, code: str
) -> None:
    r = admin(keyed_node, "POST", f"/admin/models/{path}", body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param and r.json()["error"]["code"] == code
    assert served(keyed_node) == ["smollm2-135m"]


def test_recent_requests_record_a_real_request_without_its_text(keyed_node: NodeProcess) -> None:
    out = client(keyed_node).chat.completions.create(
        model="smollm2-135m",
        messages=[{"role": "user", "content": "Say zebra-secret."}],
        max_tokens=4,
    )
    missing = httpx.post(
        keyed_node.base_url + "/chat/completions",
        headers=AUTH,
        json={"model": "nope", "messages": [{"role": "user", "content": "x"}]},
    )
    assert missing.status_code == 404
    r = admin(keyed_node, "GET", "/admin/requests?limit=2")
    assert r.status_code == 200 and "zebra" not in r.text and KEY not in r.text
    refused, done = r.json()["data"]
    assert refused["kind"] == "chat" and refused["status"] == 404 and refused["model"] == "nope"
    assert out.usage is not None
    assert done["kind"] == "chat" and done["status"] == 200 and done["model"] == "smollm2-135m"
    assert done["prompt_tokens"] == out.usage.prompt_tokens
    assert done["completion_tokens"] == out.usage.completion_tokens
    assert 0 < done["ttft_s"] <= done["duration_s"]
    bad = admin(keyed_node, "GET", "/admin/requests?limit=many")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "limit"


def test_load_errors_name_the_spec_never_the_files_behind_it(
    keyed_node: NodeProcess, tmp_path: Path
) -> None:
    hidden = tmp_path / "private-store" / "blob-target-7f3e.gguf"
    hidden.parent.mkdir()
    hidden.write_bytes(b"GGUF but not really a model" * 100)
    link = tmp_path / "innocent.gguf"
    link.symlink_to(hidden)
    for spec, status in (
        (str(link), 400),
        ("~/no-such-model.gguf", 404),
        (str(tmp_path / "missing" / "x.gguf"), 404),
    ):
        r = admin(keyed_node, "POST", "/admin/models/load", {"model": spec})
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert error["param"] == "model" and spec in error["message"], error
        for secret in ("private-store", "blob-target", str(Path.home()) + "/no-such"):
            assert secret not in error["message"], error
    assert served(keyed_node) == ["smollm2-135m"]


def test_a_spec_python_cannot_open_is_a_400_not_a_500(keyed_node: NodeProcess) -> None:
    for spec in ("model\x00.gguf", "x" * 5000 + ".gguf"):
        r = admin(keyed_node, "POST", "/admin/models/load", {"model": spec})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "model"
    assert served(keyed_node) == ["smollm2-135m"]


def test_an_uncached_hugging_face_spec_without_network_fails_fast(
    keyed_node: NodeProcess,
) -> None:
    """This box has no route to huggingface.co (huggingface_hub alone retried for ~25 s)."""
    spec = "edgebox-test-org/never-cached:model.Q4_K_M.gguf"
    started = time.monotonic()
    r = admin(keyed_node, "POST", "/admin/models/load", {"model": spec})
    took = time.monotonic() - started
    assert r.status_code == 404 and r.json()["error"]["param"] == "model", r.text
    assert spec in r.json()["error"]["message"]
    assert took < 3.0, took
