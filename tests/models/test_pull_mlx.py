"""`edgebox pull ORG/REPO` for an MLX model directory, from a local fake of the Hugging Face
hub (its tree API and `resolve/main` with LFS headers): the files an MLX load reads land in
the store as one multi-file `mlx` manifest whose path is a folder. Loading it needs Apple
Silicon (mlx-lm), so it is not tried here."""

from __future__ import annotations

import hashlib
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edgebox.models.pull import Pull, PullError, plan_pull
from edgebox.models.store import ModelStore

pytestmark = pytest.mark.timeout(60)


def _safetensors() -> bytes:
    header = json.dumps({"w": {"dtype": "F16", "shape": [4, 4], "data_offsets": [0, 32]}})
    return struct.pack("<Q", len(header)) + header.encode() + bytes(range(32))


REPOS: dict[str, dict[str, bytes]] = {
    "mlx-community/tiny-4bit": {
        "config.json": b'{"model_type": "llama", "hidden_size": 4}',
        "model.safetensors": _safetensors(),
        "tokenizer.json": b'{"version": "1.0", "model": {"type": "BPE"}}',
        "tokenizer_config.json": b'{"chat_template": "{{ messages }}"}',
        "README.md": b"# tiny",
        ".gitattributes": b"*.safetensors filter=lfs",
    },
    "someorg/gguf-only": {"model-Q4_0.gguf": b"GGUF" + bytes(64), "README.md": b"# gguf"},
}
LFS = (".safetensors", ".gguf")


@pytest.fixture(scope="module")
def hub() -> Iterator[str]:
    async def tree(request: Request) -> Response:
        repo = f"{request.path_params['org']}/{request.path_params['repo']}"
        if repo not in REPOS:
            return JSONResponse({"error": "Repository not found"}, status_code=404)
        entries = [{"type": "file", "path": n, "size": len(b)} for n, b in REPOS[repo].items()]
        entries.append({"type": "directory", "path": "original", "size": 0})
        return JSONResponse(entries)

    async def resolve(request: Request) -> Response:
        repo = f"{request.path_params['org']}/{request.path_params['repo']}"
        body = REPOS.get(repo, {}).get(request.path_params["file"])
        if body is None:
            return Response(status_code=404, headers={"x-error-code": "EntryNotFound"})
        if request.path_params["file"].endswith(LFS):
            digest = hashlib.sha256(body).hexdigest()
            headers = {"x-linked-etag": f'"{digest}"', "x-linked-size": str(len(body))}
        else:  # a plain git file: its etag is the git blob's sha1, no sha256
            headers = {"etag": f'"{hashlib.sha1(body).hexdigest()}"'}
        if request.method == "HEAD":
            headers["content-length"] = str(len(body))
            return Response(headers=headers)
        start, _, end = (
            request.headers.get("range", "bytes=0-").removeprefix("bytes=").partition("-")
        )
        part = body[int(start) : int(end) + 1 if end else None]
        status = 206 if "range" in request.headers else 200
        return Response(part, status_code=status, headers=headers)

    app = Starlette(
        routes=[
            Route("/api/models/{org}/{repo}/tree/main", tree),
            Route("/{org}/{repo}/resolve/main/{file}", resolve, methods=["GET", "HEAD"]),
        ]
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def hf(hub: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("HF_ENDPOINT", hub)
    monkeypatch.setenv("HF_TOKEN", "")
    return hub


def test_an_mlx_repo_is_pulled_as_one_folder_model(hf: str, tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    plan = plan_pull("mlx-community/tiny-4bit")
    names = [f.path for f in plan.files]
    assert names == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    weights = plan.files[1]
    assert (
        weights.sha256
        == hashlib.sha256(REPOS["mlx-community/tiny-4bit"]["model.safetensors"]).hexdigest()
    )
    manifest = Pull(store, plan).run()
    assert manifest.format == "mlx" and manifest.name == "tiny-4bit"
    assert manifest.aliases == ["mlx-community/tiny-4bit"] and len(manifest.files) == 4
    folder = store.path_of(manifest)
    assert folder.is_dir()
    for name in names:
        assert (folder / name).read_bytes() == REPOS["mlx-community/tiny-4bit"][name]
    assert store.get("mlx-community/tiny-4bit") == manifest  # found by the spec it came from


def test_a_repo_that_is_not_mlx_says_what_to_pull_instead(hf: str) -> None:
    with pytest.raises(PullError, match=r"not an MLX model.*ORG/REPO:FILE\.gguf"):
        plan_pull("someorg/gguf-only")


def test_a_missing_repo_is_a_404(hf: str) -> None:
    with pytest.raises(PullError, match="not found \\(404\\): no Hugging Face repo nobody/none"):
        plan_pull("nobody/none")


def test_a_missing_local_file_is_not_taken_for_a_repo(hf: str) -> None:
    with pytest.raises(PullError, match=r"no such file: models/missing\.gguf"):
        plan_pull("models/missing.gguf")
