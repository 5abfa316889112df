"""`serve -m A -m B --memory-budget X` checks the models it names at start against the
budget, as loads on demand are checked: a model over the whole budget stops the start with
both sizes; models that fit alone but not together load in the order given, and the rest stay
on disk (listed as available, loaded on first request)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from edgebox.models import resolve_model
from edgebox.models.footprint import model_footprint
from tests.conftest import start_node

pytestmark = pytest.mark.timeout(180)
CTX = ["--ctx", "512", "--parallel", "1", "--no-mdns", "--no-tunnel"]


def _need(name: str) -> int:
    return model_footprint(resolve_model(name).path).need(512, 1)


def test_a_model_over_the_whole_budget_stops_the_start_with_both_sizes(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "edgebox", "serve", "-m", "smollm2-135m", *CTX]
    done = subprocess.run(
        [*argv, "--memory-budget", "50MB", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    text = done.stdout + done.stderr
    assert "smollm2-135m needs about 110 MB" in text and "budget is 50 MB" in text, text
    assert "Traceback" not in text


def test_models_that_do_not_fit_together_leave_the_later_one_on_disk(tmp_path: Path) -> None:
    small, big = _need("smollm2-135m"), _need("gemma3-270m")
    budget = str(max(small, big) + 1_000_000)  # either alone, not both
    args = ["-m", "smollm2-135m", "-m", "gemma3-270m", *CTX, "--memory-budget", budget]
    node = start_node(tmp_path, *args)
    try:
        health = httpx.get(node.url + "/health", timeout=10).json()
        assert list(health["models"]) == ["smollm2-135m"], health["models"]
        available = {m["name"] for m in health["available"]}
        assert "gemma3-270m" in available, health["available"]
        log = node.log.read_text()
        assert "gemma3-270m: left on disk" in log, log
        r = httpx.post(  # the first request loads it, evicting the idle smollm2
            node.url + "/v1/chat/completions",
            json={
                "model": "gemma3-270m",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 4,
            },
            timeout=120,
        )
        assert r.status_code == 200, r.text
        models = httpx.get(node.url + "/health", timeout=10).json()["models"]
        assert list(models) == ["gemma3-270m"], models
    finally:
        node.stop()
