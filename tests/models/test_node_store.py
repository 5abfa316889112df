"""A real `edgebox serve` node: the model it serves lands in its store (by reference) and is
served to peers; a model pulled from it is then served by its store name on another node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from edgebox.models.store import digest_file
from tests.conftest import start_node, wait_until

pytestmark = pytest.mark.timeout(240)


def test_a_served_model_is_shared_and_a_pulled_one_serves_by_name(
    tmp_path: Path, smollm2_path: Path
) -> None:
    digest, _ = digest_file(smollm2_path)
    keys = ("--api-key", "fleet-k", "--admin-key", "admin-k", "--no-mdns")
    a_env = {"EDGEBOX_MODELS_DIR": str(tmp_path / "a")}
    a = start_node(tmp_path, "--model", "smollm2-135m", *keys, env=a_env)
    try:
        auth = {"Authorization": "Bearer fleet-k"}
        chunks = a.url + f"/v1/blobs/{digest}/chunks"

        def registered() -> bool:
            return httpx.get(chunks, headers=auth, timeout=5).status_code == 200

        wait_until(registered, timeout=60, what="the served model in the node's store")
        b_env = {**os.environ, "EDGEBOX_MODELS_DIR": str(tmp_path / "b")}
        pull = [sys.executable, "-m", "edgebox", "pull", "smollm2-135m", "--name", "smol"]
        pulled = subprocess.run(
            [*pull, "--peer", a.url, "--key", "fleet-k", "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            env=b_env,
        )
        assert pulled.returncode == 0, pulled.stdout + pulled.stderr
        done = json.loads(pulled.stdout.splitlines()[-1])
        assert done["sha256"] == [digest] and done["sources"] == {
            a.url: smollm2_path.stat().st_size
        }
    finally:
        assert a.stop() == 0
    b = start_node(
        tmp_path, "--model", "smol", "--no-mdns", env={"EDGEBOX_MODELS_DIR": str(tmp_path / "b")}
    )
    try:
        ids = [m["id"] for m in httpx.get(b.url + "/v1/models", timeout=10).json()["data"]]
        assert "smol" in ids
    finally:
        assert b.stop() == 0
