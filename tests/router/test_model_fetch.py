"""The router brings a model to a node before sending it a request, on real processes: node
a has a model on disk but a memory budget too small for it, node b has room and not the model,
so b pulls it from a (one pull for concurrent requests) and serves it; a Hugging Face spec no
node has is a 404 naming the option, and with `--allow-internet-pull` a node downloads it from
a local server playing Hugging Face; a pull that fails is a 503 and the router keeps serving."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from edgebox.models.store import ModelStore
from tests.conftest import NodeProcess, start_node, wait_until
from tests.router.conftest import start_router

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]

TAG = f"{os.getpid()}"
ON_A = f"gemma-on-a-{TAG}"  # gemma's weights (253 MB) over a's 200 MB budget
HF_FILE = f"SmolX-{TAG}.Q4_1.gguf"  # SmolLM2 with one metadata byte changed: a new digest
HF_SPEC = f"fakeorg{TAG}/fakerepo:{HF_FILE}"
ON_C = f"gemma-on-c-{TAG}"  # gemma with one metadata byte changed, on node c only
ADMIN, PULL = f"sk-admin-{TAG}", f"sk-pull-{TAG}"  # b's: the router gets the pull key only
B_PULL = {"authorization": f"Bearer {PULL}"}


@dataclass
class Fleet:
    a: NodeProcess
    b: NodeProcess
    c: NodeProcess  # a holder the peer-vanishes test kills
    router: NodeProcess  # internet pulls off (the default)
    open_router: NodeProcess  # --allow-internet-pull
    keyless_router: NodeProcess  # --allow-internet-pull, without b's pull key
    tmp: Path
    hf_file: Path


def _hugging_face(model: Path) -> tuple[uvicorn.Server, threading.Thread, str]:
    """A loopback server answering as the Hugging Face hub does for one file."""
    digest = hashlib.sha256(model.read_bytes()).hexdigest()

    async def resolve(request: Request) -> Response:
        if request.path_params["file"] != model.name:
            return Response(status_code=404, headers={"x-error-code": "EntryNotFound"})
        headers = {"x-linked-etag": f'"{digest}"', "x-linked-size": str(model.stat().st_size)}
        return FileResponse(model, headers=headers)

    app = Starlette(
        routes=[Route("/{org}/{repo}/resolve/main/{file}", resolve, methods=["GET", "HEAD"])]
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, smollm2_path: Path, gemma_path: Path
) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("fetch")
    ModelStore(tmp / "store-a").add_local(gemma_path, ON_A)  # linked, not copied
    hf_file = tmp / "hf" / HF_FILE
    hf_file.parent.mkdir()
    data = bytearray(smollm2_path.read_bytes())
    at = data.index(b"Smollm2 135M")
    data[at : at + 12] = b"Smollm2 135X"
    hf_file.write_bytes(data)
    other = bytearray(gemma_path.read_bytes())  # a new digest: b must copy every byte
    at = other.index(b"Gemma 3 270m")
    other[at : at + 12] = b"Gemma 3 270X"
    (tmp / "gemma-c.gguf").write_bytes(other)
    ModelStore(tmp / "store-c").add_local(tmp / "gemma-c.gguf", ON_C)
    server, thread, hf_url = _hugging_face(hf_file)
    started: list[NodeProcess] = []
    try:
        env = {"HF_ENDPOINT": hf_url, "HF_TOKEN": "", "HF_HUB_OFFLINE": "0"}
        common = ("--model", "smollm2-135m", "--ctx", "512", "--parallel", "1", "--no-mdns")
        a = start_node(
            tmp,
            *common,
            *("--no-tunnel", "--memory-budget", "200MB"),
            env={**env, "EDGEBOX_MODELS_DIR": str(tmp / "store-a")},
        )
        started.append(a)
        b = start_node(
            tmp,
            *common,
            *("--no-tunnel", "--admin-key", ADMIN, "--pull-key", PULL),
            env={**env, "EDGEBOX_MODELS_DIR": str(tmp / "store-b")},
        )
        started.append(b)
        c = start_node(
            tmp,
            *common,
            *("--no-tunnel", "--memory-budget", "200MB"),
            env={**env, "EDGEBOX_MODELS_DIR": str(tmp / "store-c")},
        )
        started.append(c)
        nodes = ("--node", a.url, "--node", b.url, "--node", c.url)
        keyed = (*nodes, "--node-pull-key", PULL)
        router = start_router(tmp, *keyed, ready_models=3)
        started.append(router)
        open_router = start_router(tmp, *keyed, "--allow-internet-pull", ready_models=3)
        started.append(open_router)
        keyless = start_router(tmp, *nodes, "--allow-internet-pull", ready_models=3)
        started.append(keyless)
        yield Fleet(a, b, c, router, open_router, keyless, tmp, hf_file)
    finally:
        for proc in reversed(started):
            proc.stop()
        server.should_exit = True
        thread.join(10)


def _sees(router: NodeProcess, model: str) -> bool:
    listed = httpx.get(router.base_url + "/models", timeout=5).json()["data"]
    return model in {m["id"] for m in listed}


def _chat(router: NodeProcess, model: str) -> openai.types.chat.ChatCompletion:
    client = openai.OpenAI(base_url=router.base_url, api_key="x", max_retries=0, timeout=180)
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "Say hi"}], max_tokens=3
    )
    completion = raw.parse()
    completion.route = raw.headers["x-edgebox-route"]  # type: ignore[attr-defined]
    return completion


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def test_a_model_a_holder_cannot_load_is_pulled_by_a_node_with_room_once(
    fleet: Fleet, gemma_path: Path
) -> None:
    wait_until(lambda: _sees(fleet.router, ON_A), 30, "the router to see the model on a's disk")
    a_host, b_host = (n.url.removeprefix("http://") for n in (fleet.a, fleet.b))
    with ThreadPoolExecutor(2) as pool:  # both during the one transfer
        answers = list(pool.map(lambda _: _chat(fleet.router, ON_A), range(2)))
    for answer in answers:
        node, _, reason = answer.route.partition(";")  # type: ignore[attr-defined]
        assert node == b_host
        assert f"reason=load:peer-transfer+from={a_host}" in reason
        assert answer.choices[0].message is not None
    jobs = httpx.get(fleet.b.url + "/admin/models/pull", headers=B_PULL, timeout=5).json()["data"]
    assert len(jobs) == 1 and jobs[0]["state"] == "done"
    assert jobs[0]["sources"] == {fleet.a.url: gemma_path.stat().st_size}  # all from a
    assert httpx.get(fleet.router.base_url.removesuffix("/v1") + "/health").json()["pulls"] == {
        "started": 1
    }
    manifest = ModelStore(fleet.tmp / "store-b").get(ON_A)
    assert manifest is not None and manifest.files[0].sha256 == _sha256(gemma_path)
    assert _sha256(ModelStore(fleet.tmp / "store-b").path_of(manifest)) == _sha256(gemma_path)
    assert ON_A in httpx.get(fleet.b.url + "/health", timeout=5).json()["models"]
    assert ON_A not in httpx.get(fleet.a.url + "/health", timeout=5).json()["models"]


def test_a_spec_nowhere_is_a_404_naming_the_option_unless_internet_pulls_are_allowed(
    fleet: Fleet,
) -> None:
    r = httpx.post(
        fleet.router.base_url + "/chat/completions",
        json={"model": HF_SPEC, "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert r.status_code == 404
    error = r.json()["error"]
    assert error["param"] == "model" and "--allow-internet-pull" in error["message"]
    assert "edgebox deploy" in error["message"]
    answer = _chat(fleet.open_router, HF_SPEC)
    node, _, reason = answer.route.partition(";")  # type: ignore[attr-defined]
    assert node == fleet.b.url.removeprefix("http://")  # the node with the most room
    assert reason.startswith("reason=load:internet")
    stored = ModelStore(fleet.tmp / "store-b").get(HF_SPEC)
    assert stored is not None and stored.files[0].sha256 == _sha256(fleet.hf_file)
    jobs = httpx.get(fleet.b.url + "/admin/models/pull", headers=B_PULL, timeout=5).json()["data"]
    (job,) = [j for j in jobs if j["spec"] == HF_SPEC]
    assert sum(job["sources"].values()) == fleet.hf_file.stat().st_size  # downloaded, all of it


def test_a_peer_that_vanishes_mid_transfer_is_a_503_and_the_router_keeps_serving(
    fleet: Fleet,
) -> None:
    wait_until(lambda: _sees(fleet.router, ON_C), 30, "the router to see the model on c's disk")
    body = {"model": ON_C, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    with ThreadPoolExecutor(1) as pool:
        sent = pool.submit(
            httpx.post, fleet.router.base_url + "/chat/completions", json=body, timeout=120
        )

        def copying() -> bool:
            jobs = httpx.get(fleet.b.url + "/admin/models/pull", headers=B_PULL, timeout=5)
            return any(j["spec"] == ON_C and j["bytes_done"] > 0 for j in jobs.json()["data"])

        wait_until(copying, 60, "b to start copying from c")
        fleet.c.proc.kill()  # the only holder vanishes mid-way
        r = sent.result(timeout=120)
    assert r.status_code == 503, r.text
    error = r.json()["error"]
    assert error["code"] == "model_pull_failed"
    c_host = fleet.c.url.removeprefix("http://")
    assert ON_C in error["message"] and f"peer transfer from {c_host}" in error["message"]
    assert "the pull failed" in error["message"]
    assert _chat(fleet.router, "smollm2-135m").choices[0].message is not None


def test_a_failed_pull_is_a_503_naming_the_model_and_the_router_keeps_serving(
    fleet: Fleet,
) -> None:
    missing = f"fakeorg{TAG}/fakerepo:missing-{TAG}.Q4_0.gguf"
    r = httpx.post(
        fleet.open_router.base_url + "/chat/completions",
        json={"model": missing, "messages": [{"role": "user", "content": "hi"}]},
        timeout=60,
    )
    assert r.status_code == 503
    error = r.json()["error"]
    assert error["code"] == "model_pull_failed" and error["type"] == "server_error"
    assert missing in error["message"] and "404" in error["message"]
    answer = _chat(fleet.open_router, "smollm2-135m")
    assert answer.choices[0].message is not None
    # b takes its pull key or its admin key on /admin/models/pull: the router's inference
    # credential (none here) is not enough
    r = httpx.post(
        fleet.keyless_router.base_url + "/chat/completions",
        json={"model": missing, "messages": [{"role": "user", "content": "hi"}]},
        timeout=60,
    )
    assert r.status_code == 503 and "--pull-key" in r.json()["error"]["message"]
    assert PULL not in r.text and ADMIN not in r.text
