"""`edgebox pull` from a local HTTP server (the "internet"): ranged parallel download with
resume, digest checks, the disk checked before downloading, and clear errors."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from edgebox.models import resolve_model
from edgebox.models.pull import Pull, PullError, plan_pull
from edgebox.models.store import ModelStore

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def model() -> Path:
    return resolve_model("smollm2-135m").path


@pytest.fixture(scope="module")
def internet(model: Path) -> Iterator[str]:
    """A file server on loopback with Range support; `/hf/...` answers as the Hugging Face
    hub does (`X-Linked-Etag` = the LFS sha256, `X-Linked-Size`)."""
    digest = hashlib.sha256(model.read_bytes()).hexdigest()

    async def file(request: Request) -> Response:
        if request.path_params["name"] != model.name:
            return Response(status_code=404)
        return FileResponse(model)

    async def hf(request: Request) -> Response:
        if request.path_params["file"] != model.name:
            return Response(status_code=404, headers={"x-error-code": "EntryNotFound"})
        headers = {"x-linked-etag": f'"{digest}"', "x-linked-size": str(model.stat().st_size)}
        return FileResponse(model, headers=headers)

    # a peer that lies consistently: another file's bytes and that file's own chunk list,
    # under the model's digest (every chunk checks out; only the whole-file sha256 does not)
    forged = model.read_bytes()[::-1]
    chunk = 8 << 20
    forged_chunks = [
        hashlib.sha256(forged[i : i + chunk]).hexdigest() for i in range(0, len(forged), chunk)
    ]

    async def liar_chunks(request: Request) -> Response:
        body = {"size": len(forged), "chunk_size": chunk, "chunks": forged_chunks}
        return Response(json.dumps(body), media_type="application/json")

    async def liar_blob(request: Request) -> Response:
        first, _, last = request.headers["range"].removeprefix("bytes=").partition("-")
        part = forged[int(first) : int(last) + 1]
        return Response(part, status_code=206, media_type="application/octet-stream")

    app = Starlette(
        routes=[
            Route("/liar/v1/blobs/{digest}/chunks", liar_chunks),
            Route("/liar/v1/blobs/{digest}", liar_blob),
            Route("/files/{name}", file, methods=["GET", "HEAD"]),
            Route("/{org}/{repo}/resolve/main/{file}", hf, methods=["GET", "HEAD"]),
        ]
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_pull_from_a_url_verifies_the_digest_and_resumes(
    tmp_path: Path, model: Path, internet: str
) -> None:
    store = ModelStore(tmp_path)
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    url = f"{internet}/files/{model.name}"
    first = Pull(store, plan_pull(url, sha256=digest), max_rate=30e6)
    failures: list[Exception] = []

    def run() -> None:
        try:
            first.run()
        except PullError as exc:
            failures.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    while first.progress.done < first.progress.total * 0.4:
        time.sleep(0.05)
    first.cancel()
    worker.join(20)
    assert first.state == "cancelled" and failures
    kept = len(store.partial_path(digest).with_suffix(".done").read_text().splitlines())
    assert kept >= 3
    second = Pull(store, plan_pull(url, sha256=digest))
    manifest = second.run()
    assert sum(second.progress.by_source.values()) <= model.stat().st_size - kept * (8 << 20)
    assert manifest.files[0].sha256 == digest and manifest.quantisation == "Q4_1"
    assert store.path_of(manifest).read_bytes() == model.read_bytes()


def test_peers_agreeing_on_a_forged_chunk_list_are_caught_by_the_whole_file_digest(
    tmp_path: Path, model: Path, internet: str
) -> None:
    from edgebox.models.transfer import Peer

    store = ModelStore(tmp_path)
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    url = f"{internet}/files/{model.name}"
    liar = Peer(f"{internet}/liar", "k")
    job = Pull(store, plan_pull(url, sha256=digest), peers=[liar])
    manifest = job.run()
    assert store.path_of(manifest).read_bytes() == model.read_bytes()
    assert any("not the file's sha256" in why for why in job.progress.rejected)
    host = internet.removeprefix("http://")
    assert job.progress.by_source[host] == model.stat().st_size
    assert job.progress.done == job.progress.total


def test_a_wrong_sha256_is_refused_and_nothing_is_kept(
    tmp_path: Path, model: Path, internet: str
) -> None:
    store = ModelStore(tmp_path)
    url = f"{internet}/files/{model.name}"
    with pytest.raises(PullError, match="expected 0000"):
        Pull(store, plan_pull(url, sha256="0" * 64)).run()
    assert store.list() == [] and store.disk_usage()["blobs_bytes"] == 0


def test_a_hugging_face_spec_takes_the_lfs_digest(
    tmp_path: Path, model: Path, internet: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", internet)
    monkeypatch.setenv("HF_TOKEN", "")
    plan = plan_pull(f"someorg/somerepo:{model.name}")
    assert plan.files[0].sha256 == hashlib.sha256(model.read_bytes()).hexdigest()
    manifest = Pull(ModelStore(tmp_path), plan).run()
    assert manifest.source == "huggingface" and manifest.aliases == [
        f"someorg/somerepo:{model.name}"
    ]
    with pytest.raises(PullError, match=r"not found \(404\)"):
        plan_pull("someorg/somerepo:missing.Q4_0.gguf")


def test_split_specs_name_every_part() -> None:
    from edgebox.models.pull import split_parts

    assert split_parts("m-00002-of-00003.gguf") == [
        "m-00001-of-00003.gguf",
        "m-00002-of-00003.gguf",
        "m-00003-of-00003.gguf",
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nonsense", "cannot pull 'nonsense'"),
        ("./missing.gguf", "no such file"),
        ("http://127.0.0.1:9/x.gguf", "offline: cannot reach"),
        ("", "1 to 2048"),
    ],
)
def test_bad_specs_are_clear_errors(spec: str, message: str) -> None:
    with pytest.raises(PullError, match=message):
        plan_pull(spec)


def test_a_full_disk_is_refused_before_downloading(
    tmp_path: Path, model: Path, internet: str
) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test mounts a small tmpfs: run it as root (CI does)")
    small = tmp_path / f"small-{uuid.uuid4().hex[:6]}"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(small)], check=True)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "edgebox", "pull", f"{internet}/files/{model.name}", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "EDGEBOX_MODELS_DIR": str(small)},
        )
        assert result.returncode == 1
        error = json.loads(result.stdout.splitlines()[-1])
        assert error["event"] == "error" and error["error"].startswith("disk full")
        assert "98.4 MB more" in error["error"]
        assert not any((small / "partial").glob("*")) if (small / "partial").exists() else True
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_the_cli_pulls_and_serve_names_resolve_from_the_store(
    tmp_path: Path, model: Path, internet: str
) -> None:
    env = {**os.environ, "EDGEBOX_MODELS_DIR": str(tmp_path / "store")}
    url = f"{internet}/files/{model.name}"
    pulled = subprocess.run(
        [sys.executable, "-m", "edgebox", "pull", url, "--name", "tiny", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert pulled.returncode == 0, pulled.stderr
    assert json.loads(pulled.stdout.splitlines()[-1])["name"] == "tiny"
    listed = subprocess.run(
        [sys.executable, "-m", "edgebox", "models", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    row = next(r for r in json.loads(listed.stdout) if r["name"] == "tiny")
    assert (
        row["size_bytes"] == model.stat().st_size
        and row["source"] == "127.0.0.1:" + internet.rsplit(":", 1)[1]
    )
    code = (
        "from edgebox.models import resolve_model; r = resolve_model('tiny'); "
        "print(r.source, r.path.stat().st_size)"
    )
    resolved = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert resolved.stdout.split() == ["store", str(model.stat().st_size)]
    removed = subprocess.run(
        [sys.executable, "-m", "edgebox", "models", "rm", "tiny"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert removed.returncode == 0 and httpx.URL(url)  # and the blob went with it:
    assert not any((tmp_path / "store" / "blobs" / "sha256").iterdir())
