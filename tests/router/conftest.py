"""Start real `edgebox router` processes on loopback in front of real nodes; always stop them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import NodeProcess, free_port


def start_router(
    tmp_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
    ready_models: int = 1,
    api_key: str | None = None,
) -> NodeProcess:
    """An `edgebox router` subprocess, returned once /v1/models lists `ready_models` models."""
    port = free_port()
    log = tmp_path / f"router-{port}.log"
    cmd = [sys.executable, "-m", "edgebox", "router", "--port", str(port), "--no-mdns", *args]
    full_env = {**os.environ, "EDGEBOX_HOME": str(tmp_path / "home"), **(env or {})}
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=full_env)
    router = NodeProcess(f"http://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"router exited early:\n{log.read_text()}")
        try:
            auth = {"authorization": f"Bearer {api_key}"} if api_key else {}
            models = httpx.get(router.base_url + "/models", headers=auth, timeout=1)
            if models.status_code == 200 and len(models.json()["data"]) >= ready_models:
                return router
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    router.stop()
    raise RuntimeError(f"router did not become ready:\n{log.read_text()}")


def running_on(node: NodeProcess, model: str = "smollm2-135m") -> int:
    """Requests holding a sequence slot on `node` right now (its /health)."""
    return int(httpx.get(node.url + "/health", timeout=5).json()["models"][model]["running"])
