"""`edgebox serve` with a CPU whose repacked/AMX weights fault: the node falls back, says so in
its banner, /health and `edgebox doctor`, and keeps answering; `--cpu-extra-buffers` and
$EDGEBOX_CPU_EXTRA_BUFFERS override the probe.

This machine has no AMX, so the fault is the probe child's test hook (a real SIGSEGV in the
child, see `cpu_probe.FAULT_HOOK_ENV`). Whether llama.cpp really loaded repacked weights is read
from its own log (`--verbose`): Gemma 3 270M's Q4_K weights get a `CPU_REPACK` buffer on this
AVX2 CPU when extra buffers are on, and none when they are off.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from edgebox.runtimes.llamacpp import cpu_probe
from tests.conftest import NodeProcess, start_node

NOTICE = "AMX/repacked weights fault on this CPU; serving without them"
NO_LAN = ("--no-mdns", "--no-tunnel", "--ctx", "512", "--parallel", "1", "--verbose")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One user cache for the module: the first node's probe result is what later ones read."""
    return tmp_path_factory.mktemp("cache")


def serve(tmp: Path, cache: Path, *args: str, **env: str) -> NodeProcess:
    clean = {cpu_probe.MODE_ENV: "", cpu_probe.FAULT_HOOK_ENV: ""}
    return start_node(tmp, *NO_LAN, *args, env={**clean, "EDGEBOX_CACHE_DIR": str(cache), **env})


def extra_buffers(node: NodeProcess) -> dict[str, str]:
    models = httpx.get(node.url + "/health").json()["models"]
    return {alias: m.get("cpu_extra_buffers") for alias, m in models.items()}


def chat(node: NodeProcess, model: str) -> str:
    client = openai.OpenAI(base_url=node.base_url, api_key="none", max_retries=0)
    answer = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Name three colours of the rainbow, please."}],
        max_tokens=12,
    )
    return answer.choices[0].message.content or ""


def doctor(cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGEBOX_CACHE_DIR": str(cache)}
    env.pop(cpu_probe.MODE_ENV, None)
    env.pop(cpu_probe.FAULT_HOOK_ENV, None)
    cmd = [sys.executable, "-m", "edgebox", "doctor", "--no-measure", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, check=True)


def test_a_faulting_probe_turns_them_off_and_the_node_serves(
    tmp_path: Path, cache: Path, smollm2_path: Path, gemma_path: Path
) -> None:
    node = serve(
        tmp_path,
        cache,
        "--model",
        str(smollm2_path),
        "--model",
        str(gemma_path),
        "--alias",
        "chat",
        **{cpu_probe.FAULT_HOOK_ENV: "1"},
    )
    try:
        assert chat(node, "chat")  # a real request on the fallback path
        states = extra_buffers(node)
    finally:
        assert node.stop() == 0
    log = node.log.read_text()
    assert NOTICE in log and "--cpu-extra-buffers on to force" in log
    assert (
        "CPU_REPACK" not in log and "AMX model buffer" not in log
    )  # Gemma's weights were loaded without repacking
    assert "model buffer size" in log  # (the log was there to be read)
    assert all(s.startswith("off (faulted: the probe died by SIGSEGV") for s in states.values())
    report = json.loads(doctor(cache, "--json").stdout)["cpu_extra_buffers"]
    assert report["status"] == "faulted" and report["fallback"] and report["enabled"] is False
    assert "off (faulted" in doctor(cache).stdout


def test_the_cached_answer_is_reused_without_a_new_probe(
    tmp_path: Path, cache: Path, gemma_path: Path
) -> None:
    before = cpu_probe_entries(cache)
    assert before, "the first test leaves a faulted answer in the cache"
    node = serve(tmp_path, cache, "--model", str(gemma_path))  # no fault hook this time
    node.stop()
    log = node.log.read_text()
    # a new probe would have passed (no hook) and rewritten the entry; the cached fault holds
    assert NOTICE in log and "CPU_REPACK" not in log and "AMX model buffer" not in log
    assert cpu_probe_entries(cache) == before


def cpu_probe_entries(cache: Path) -> dict[str, object]:
    path = cache / cpu_probe.cache_path().name
    return json.loads(path.read_text()) if path.is_file() else {}


def test_on_forces_repacked_weights_despite_a_cached_fault(
    tmp_path: Path, cache: Path, gemma_path: Path
) -> None:
    assert cpu_probe_entries(cache)
    node = serve(tmp_path, cache, "--model", str(gemma_path), "--cpu-extra-buffers", "on")
    try:
        assert set(extra_buffers(node).values()) == {"on (forced on)"}
    finally:
        node.stop()
    log = node.log.read_text()
    repacked = "AMX" if "amx_tile" in cpu_probe.cpu_identity()[1] else "CPU_REPACK"
    assert f"{repacked} model buffer size" in log and NOTICE not in log


def test_off_from_the_environment_serves_and_applies_to_runtime_loads(
    tmp_path: Path, smollm2_path: Path, gemma_path: Path
) -> None:
    fresh = tmp_path / "cache"  # nothing cached: off must not need the probe
    node = serve(
        tmp_path,
        fresh,
        "--model",
        str(smollm2_path),
        "--alias",
        "chat",
        **{cpu_probe.MODE_ENV: "off"},
    )
    try:
        assert chat(node, "chat")
        r = httpx.post(
            node.url + "/admin/models/load", json={"model": str(gemma_path)}, timeout=120
        )
        assert r.status_code == 200, r.text
        assert set(extra_buffers(node).values()) == {"off (forced off)"}
    finally:
        node.stop()
    log = node.log.read_text()
    assert "CPU_REPACK" not in log and "AMX model buffer" not in log and NOTICE not in log
    assert not cpu_probe_entries(fresh)


def test_a_bad_mode_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "edgebox", "serve", "--cpu-extra-buffers", "maybe"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "--cpu-extra-buffers must be auto, on or off" in done.stderr
