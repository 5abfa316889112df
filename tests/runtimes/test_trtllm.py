"""The TensorRT-LLM runtime's supervision and proxying, against a real stand-in child process
(tests/runtimes/trtllm_standin.py) since this machine has no GPU."""

from __future__ import annotations

import json
import os
import queue
import shlex
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgebox.runtimes.base import BackendError, Event, FinishEvent, GenerationRequest, TokenEvent
from edgebox.runtimes.trtllm import (
    SupervisorConfig,
    TrtllmConfig,
    TrtllmRuntime,
    trtllm_serve_command,
)
from edgebox.runtimes.trtllm.supervisor import next_backoff
from tests.runtimes.tiny_mlx import write_tokenizer
from tests.runtimes.trtllm_standin import words

STANDIN = Path(__file__).with_name("trtllm_standin.py")
FAST = SupervisorConfig(
    startup_timeout=20, health_interval=0.05, backoff_initial=0.1, backoff_max=0.4, stop_timeout=5
)


def write_engine_dir(directory: Path) -> Path:
    """The files of a TensorRT-LLM engine directory (the engine itself is empty bytes)."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = write_tokenizer(directory)
    config = {
        "version": "0.18.0",
        "pretrained_config": {
            "architecture": "LlamaForCausalLM",
            "vocab_size": vocab,
            "max_position_embeddings": 2048,
        },
        "build_config": {"max_batch_size": 4, "max_seq_len": 1024, "max_input_len": 512},
    }
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "rank0.engine").write_bytes(b"\0" * 64)
    return directory


def standin_config() -> TrtllmConfig:
    return TrtllmConfig(
        executable=f"{shlex.quote(sys.executable)} {shlex.quote(str(STANDIN))}",
        supervisor=FAST,
        restart_wait=10,
    )


@pytest.fixture
def engine_dir(tmp_path: Path) -> Path:
    return write_engine_dir(tmp_path / "engine")


@pytest.fixture
def runtime(engine_dir: Path, tmp_path: Path) -> Iterator[TrtllmRuntime]:
    rt = TrtllmRuntime(
        engine_dir, name="trt", config=standin_config(), log_path=tmp_path / "serve.log"
    )
    yield rt
    rt.close()


def run(rt: TrtllmRuntime, request: GenerationRequest) -> tuple[list[TokenEvent], FinishEvent]:
    events: queue.Queue[Event] = queue.Queue()
    rt.submit(request, events.put)
    tokens: list[TokenEvent] = []
    while not isinstance(event := events.get(timeout=30), FinishEvent):
        tokens.append(event)
    return tokens, event


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0): read its state
    state = (
        Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(f"/proc/{pid}").exists() else "X"
    )
    return state not in ("Z", "X")


def test_command_line_binds_loopback_and_names_the_engine(tmp_path: Path) -> None:
    argv = trtllm_serve_command(tmp_path / "e", tmp_path / "t", 8123, TrtllmConfig())
    assert argv == [
        "trtllm-serve",
        str(tmp_path / "e"),
        "--host",
        "127.0.0.1",
        "--port",
        "8123",
        "--tokenizer",
        str(tmp_path / "t"),
        "--backend",
        "tensorrt",
    ]
    old = trtllm_serve_command(tmp_path / "e", tmp_path / "t", 1, TrtllmConfig(backend=None))
    assert "--backend" not in old


def test_backoff_doubles_up_to_the_cap() -> None:
    waits = [0.0]
    for _ in range(5):
        waits.append(next_backoff(waits[-1], FAST))
    assert waits[1:] == [0.1, 0.2, 0.4, 0.4, 0.4]


def test_generation_streams_through_the_child(runtime: TrtllmRuntime) -> None:
    prompt = runtime.tokenize(runtime.render_chat([{"role": "user", "content": "Hello"}]))
    tokens, finish = run(runtime, GenerationRequest(prompt, max_tokens=5))
    assert [t.text for t in tokens] == words(prompt, 5)  # what the child computed, in order
    assert finish.reason == "length" and finish.completion_tokens == 5
    assert finish.prompt_tokens == len(prompt)
    assert runtime.info.n_ctx == 1024 and runtime.stats().slots == 4
    assert runtime.served_model == str(runtime.info.path)


def test_stop_strings_reach_the_server(runtime: TrtllmRuntime) -> None:
    prompt = runtime.tokenize("Hello world")
    expected = words(prompt, 6)
    tokens, finish = run(runtime, GenerationRequest(prompt, max_tokens=6, stop=(expected[3],)))
    assert [t.text for t in tokens] == expected[:3]
    assert finish.reason == "stop"


def test_a_dead_child_is_restarted_and_serves_again(runtime: TrtllmRuntime) -> None:
    first = runtime.supervisor.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)  # what a CUDA fault in the engine looks like from outside
    deadline = time.monotonic() + 20
    while runtime.supervisor.restarts == 0 or not runtime.supervisor.wait_ready(0):
        assert time.monotonic() < deadline, "the supervisor did not restart trtllm-serve"
        time.sleep(0.05)
    assert runtime.supervisor.pid != first and runtime.supervisor.last_exit == -signal.SIGKILL
    tokens, finish = run(runtime, GenerationRequest([5, 6, 7], max_tokens=3))
    assert finish.reason == "length" and len(tokens) == 3


def test_close_stops_the_child(engine_dir: Path) -> None:
    rt = TrtllmRuntime(engine_dir, name="trt", config=standin_config())
    pid = rt.supervisor.pid
    assert pid is not None and alive(pid)
    rt.close()
    assert not alive(pid)


def test_start_waits_for_health_and_restarts_after_failed_starts(
    engine_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fails = tmp_path / "fails"
    fails.write_text("0")
    monkeypatch.setenv("STANDIN_STARTUP_DELAY", "0.5")
    monkeypatch.setenv("STANDIN_FAIL_FILE", str(fails))
    started = time.monotonic()
    rt = TrtllmRuntime(engine_dir, name="trt", config=standin_config())
    try:
        assert time.monotonic() - started >= 0.5  # /health answered 503 until then
        fails.write_text("2")  # the next two starts crash at once
        pid = rt.supervisor.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while not (rt.supervisor.restarts >= 3 and rt.supervisor.wait_ready(0)):
            assert time.monotonic() < deadline, f"restarts={rt.supervisor.restarts}"
            time.sleep(0.05)
        assert fails.read_text() == "0"
        assert run(rt, GenerationRequest([1, 2], max_tokens=2))[1].completion_tokens == 2
    finally:
        rt.close()


def test_a_server_that_never_starts_is_a_clear_error(
    engine_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fails = tmp_path / "fails"
    fails.write_text("5")
    monkeypatch.setenv("STANDIN_FAIL_FILE", str(fails))
    with pytest.raises(BackendError, match=r"did not become healthy.*exit code 3.*serve\.log"):
        TrtllmRuntime(
            engine_dir, name="trt", config=standin_config(), log_path=tmp_path / "serve.log"
        )


def test_cancel_stops_a_streaming_request(
    engine_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_TOKEN_DELAY", "0.05")
    rt = TrtllmRuntime(engine_dir, name="trt", config=standin_config())
    try:
        events: queue.Queue[Event] = queue.Queue()
        handle = rt.submit(GenerationRequest([1, 2, 3], max_tokens=200), events.put)
        assert isinstance(events.get(timeout=10), TokenEvent)
        handle.cancel()
        while not isinstance(event := events.get(timeout=10), FinishEvent):
            pass
        assert event.reason == "cancelled"
    finally:
        rt.close()
