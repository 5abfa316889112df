"""`edgebox serve --runtime`: MLX served for real over HTTP to the openai SDK, TensorRT-LLM
through its supervised stand-in child, and refusals that say what to do."""

from __future__ import annotations

import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import uvicorn

from edgebox.node.app import create_app
from edgebox.node.state import NodeState
from edgebox.runtimes.base import BackendError
from edgebox.runtimes.open import TRTLLM_SERVE_ENV, RuntimeOptions, gguf_model_size, open_model
from edgebox.runtimes.select import Installed, ModelSize
from edgebox.runtimes.trtllm import TrtllmRuntime
from tests.conftest import NodeProcess, free_port, start_node
from tests.runtimes.test_select import CPU, RTX
from tests.runtimes.test_trtllm import STANDIN, write_engine_dir
from tests.runtimes.tiny_mlx import write_tiny_mlx_model

QUESTION = [{"role": "user", "content": "Hello there, how are you?"}]


@pytest.fixture(scope="module")
def mlx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_mlx_model(tmp_path_factory.mktemp("mlx") / "tiny-mlx")


@pytest.fixture(scope="module")
def mlx_node(mlx_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    node = start_node(
        tmp_path_factory.mktemp("mlx-node"),
        "--model",
        str(mlx_dir),
        "--runtime",
        "mlx",
        "--ctx",
        "256",
        startup_s=180,  # mlx-lm imports transformers: slow on a busy CI box
    )
    yield node
    assert node.stop() == 0, node.log.read_text()


def test_an_mlx_model_is_served_to_the_openai_sdk(mlx_node: NodeProcess) -> None:
    client = openai.OpenAI(base_url=mlx_node.base_url, api_key="unused", max_retries=0)
    listed = client.models.list().data
    assert [m.id for m in listed if m.model_extra["status"] == "loaded"] == ["tiny-mlx"]  # type: ignore[index]
    whole = client.chat.completions.create(
        model="tiny-mlx",
        messages=QUESTION,
        temperature=0,
        max_tokens=9,  # type: ignore[arg-type]
    )
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage is not None and whole.usage.completion_tokens == 9
    stream = client.chat.completions.create(
        model="tiny-mlx",
        messages=QUESTION,
        temperature=0,
        max_tokens=9,
        stream=True,  # type: ignore[arg-type]
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len([p for p in pieces if p]) > 1  # tokens arrive as separate chunks
    assert "".join(pieces) == whole.choices[0].message.content  # greedy: the same text twice
    meta = client.models.retrieve("tiny-mlx").model_extra["meta"]  # type: ignore[index]
    assert meta["runtime"] == "MlxRuntime" and meta["context_length"] == 256
    assert "runtime mlx: mlx-lm on its CPU backend" in mlx_node.log.read_text()


def _serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgebox", "serve", "--port", str(free_port()), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_runtime_that_cannot_load_the_format_is_refused(mlx_dir: Path, tmp_path: Path) -> None:
    done = _serve(tmp_path, "--model", str(mlx_dir), "--runtime", "llamacpp")
    assert done.returncode == 1
    said = " ".join(done.stderr.split())  # rich wraps long lines
    assert "runtime llamacpp loads gguf models, not mlx; use --runtime auto or mlx" in said
    assert "Traceback" not in done.stderr


def test_a_directory_that_is_no_model_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    with pytest.raises(BackendError, match="not a model edgebox can serve"):
        open_model(tmp_path / "notes", name="x")


def test_an_engine_on_a_cpu_box_names_the_missing_gpu(tmp_path: Path) -> None:
    engine = write_engine_dir(tmp_path / "engine")
    box = (CPU, Installed(frozenset({"llamacpp", "trtllm"})))
    with pytest.raises(BackendError, match="needs an NVIDIA GPU"):
        open_model(engine, name="e", requested="auto", box=box)


def test_an_engine_on_an_nvidia_box_is_served_through_trtllm_serve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = write_engine_dir(tmp_path / "engine")
    monkeypatch.setenv(
        TRTLLM_SERVE_ENV, f"{shlex.quote(sys.executable)} {shlex.quote(str(STANDIN))}"
    )
    box = (RTX, Installed(frozenset({"llamacpp", "trtllm"}), llama_gpu_offload=True))
    runtime, chosen = open_model(engine, name="engine", options=RuntimeOptions(), box=box)
    assert isinstance(runtime, TrtllmRuntime) and chosen.runtime == "trtllm"
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(NodeState({"engine": runtime})), port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.02)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        stream = client.chat.completions.create(
            model="engine",
            messages=QUESTION,
            max_tokens=4,
            stream=True,  # type: ignore[arg-type]
        )
        pieces = [
            c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content
        ]
        assert len(pieces) == 4 and all(p.startswith(" w") for p in pieces)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        runtime.close()


def test_the_gguf_header_gives_the_layer_count(smollm2_path: Path, tmp_path: Path) -> None:
    size = gguf_model_size(smollm2_path)
    assert size == ModelSize(smollm2_path.stat().st_size, 30)  # SmolLM2-135M has 30 blocks
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 8)  # truncated header
    assert gguf_model_size(junk) is None
