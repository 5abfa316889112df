"""Peer transfers do not starve inference: while a node generates, its blob responses share
one bucket of `serve --share-rate`; idle, they go at full speed."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from edgebox.node.blob_pacing import BURST_S, BlobPacer
from tests.conftest import NodeProcess, start_node, wait_until

MB = 1_000_000


def test_the_pacer_books_bytes_at_the_rate_while_busy_and_nothing_when_idle() -> None:
    busy = [True]
    pacer = BlobPacer(lambda: 2 * MB, lambda: busy[0])
    now, waits = 100.0, []
    for _ in range(6):  # 6 MB at 2 MB/s: the last chunk leaves 2.5 s (less the burst) later
        waits.append(pacer.delay(MB, now))
    assert waits[0] == 0.0
    assert waits[-1] == pytest.approx(5 * 0.5 - BURST_S)
    busy[0] = False
    assert pacer.delay(100 * MB, now) == 0.0
    assert BlobPacer(lambda: 0, lambda: True).delay(100 * MB, now) == 0.0  # 0: unlimited


def test_a_long_idle_spell_does_not_bank_a_burst() -> None:
    pacer = BlobPacer(lambda: 1 * MB, lambda: True)
    assert pacer.delay(MB, 0.0) == 0.0
    assert pacer.delay(MB, 1000.0) == 0.0  # a new transfer starts fresh
    assert pacer.delay(MB, 1000.0) == pytest.approx(1.0 - BURST_S)


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _timed_range(node: NodeProcess, digest: str, size: int) -> float:
    started = time.monotonic()
    r = httpx.get(
        f"{node.url}/v1/blobs/{digest}", headers={"Range": f"bytes=0-{size - 1}"}, timeout=60
    )
    assert r.status_code == 206 and len(r.content) == size, r.status_code
    return time.monotonic() - started


def _generate(node: NodeProcess, first: threading.Event, stop: threading.Event) -> None:
    body = {
        "model": "smollm2-135m",
        "messages": [{"role": "user", "content": "Count from one to a thousand in words."}],
        "max_tokens": 1800,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream("POST", f"{node.url}/v1/chat/completions", json=body, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"]:
                first.set()
            if stop.is_set():
                return  # the client goes away: the node cancels the generation


def _running(node: NodeProcess) -> int:
    models = httpx.get(node.url + "/health", timeout=5).json()["models"]
    return sum(m.get("running", 0) + m.get("queued", 0) for m in models.values())


@pytest.mark.timeout(180)
def test_a_blob_is_paced_during_a_generation_and_full_speed_when_idle(
    tmp_path: Path, smollm2_path: Path
) -> None:
    args = ["-m", "smollm2-135m", "--ctx", "2048", "--parallel", "1", "--share-rate", "2"]
    env = {"EDGEBOX_MODELS_DIR": str(tmp_path / "store")}
    node = start_node(tmp_path, *args, "--no-mdns", "--no-tunnel", env=env)
    try:
        digest, size = _digest(smollm2_path), 6 * MB
        wait_until(
            lambda: httpx.head(f"{node.url}/v1/blobs/{digest}", timeout=5).status_code == 200,
            timeout=60,
            what="the served model registered in the store",
            interval=0.2,
        )
        first, stop = threading.Event(), threading.Event()
        gen = threading.Thread(target=_generate, args=(node, first, stop), daemon=True)
        gen.start()
        assert first.wait(60), "the generation did not start"
        paced = _timed_range(node, digest, size)
        assert gen.is_alive(), "the generation ended before the download did: not measured"
        stop.set()
        gen.join(60)
        wait_until(lambda: _running(node) == 0, timeout=60, what="the node to be idle")
        idle = _timed_range(node, digest, size)
    finally:
        node.stop()
    print(f"6 MB blob range: {paced:.2f} s while generating at --share-rate 2, {idle:.3f} s idle")
    # 6 MB at 2 MB/s: ~2.5 s less the burst and the first chunk; idle: loopback speed
    assert 1.5 <= paced <= 20, f"paced download took {paced:.2f} s"
    assert idle < min(1.2, paced / 2), f"idle download took {idle:.2f} s (paced {paced:.2f} s)"
