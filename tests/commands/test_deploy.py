"""`edgebox deploy MODEL --all --load` from a laptop to three real nodes on loopback (found
through their local runtime records, as `edgebox nodes` finds them), one with a memory budget
too small for the model: that one is refused with the numbers, the others end with it loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edgebox.models.store import ModelStore
from tests.conftest import NodeProcess, start_node

MODEL = "gemma3-270m"


@pytest.fixture(scope="module")
def three_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    tmp = tmp_path_factory.mktemp("deploy")
    home = {"EDGEBOX_HOME": str(tmp / "home")}  # their records: no other test's nodes
    nodes: list[NodeProcess] = []
    try:
        for budget in (None, None, "150MB"):  # holds its smollm2 (110 MB), not gemma (263 MB)
            args = ["--model", "smollm2-135m", "--ctx", "512", "--parallel", "1"]
            args += ["--no-mdns", "--no-tunnel"]
            if budget:
                args += ["--memory-budget", budget]
            nodes.append(start_node(tmp, *args, env=home))
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def deploy(*args: str, home: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgebox", "deploy", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "EDGEBOX_HOME": home},
    )


def test_deploy_all_loads_where_it_fits_and_refuses_the_small_node(
    three_nodes: list[NodeProcess], tmp_path_factory: pytest.TempPathFactory
) -> None:
    home = str(three_nodes[0].log.parent / "home")
    done = deploy(MODEL, "--all", "--load", "--json", "--wait", "0", home=home)
    assert done.returncode == 0, done.stdout + done.stderr  # --all: a refusal is no failure
    report = {r["node"]: r for r in json.loads(done.stdout)}
    assert set(report) == {n.url for n in three_nodes}
    big, other, small = (report[n.url] for n in three_nodes)
    assert big["result"] == other["result"] == "loaded"
    assert small["result"] == "refused"
    assert "needs about 263 MB" in small["why"] and "budget is 150 MB" in small["why"]
    for node in three_nodes[:2]:
        assert MODEL in httpx.get(node.url + "/health").json()["models"]
    assert MODEL not in httpx.get(three_nodes[2].url + "/health").json()["models"]


def test_deploy_to_a_named_node_that_is_too_small_fails(three_nodes: list[NodeProcess]) -> None:
    home = str(three_nodes[0].log.parent / "home")
    done = deploy(MODEL, "--to", three_nodes[2].url, "--load", home=home)
    assert done.returncode == 1
    assert "refused" in done.stdout and "budget" in done.stdout


def test_deploy_pulls_from_the_peer_that_has_it_then_loads(
    tmp_path_factory: pytest.TempPathFactory, smollm2_path: Path
) -> None:
    tmp = tmp_path_factory.mktemp("deploy-pull")
    ModelStore(tmp / "store-a").add_local(smollm2_path, "smol-copy")
    nodes: list[NodeProcess] = []
    try:
        for name in ("a", "b"):
            args = ["--model", "smollm2-135m", "--ctx", "512", "--parallel", "1"]
            env = {"EDGEBOX_MODELS_DIR": str(tmp / f"store-{name}"), "EDGEBOX_HOME": str(tmp)}
            nodes.append(start_node(tmp, *args, "--no-mdns", "--no-tunnel", env=env))
        urls = ",".join(n.url for n in nodes)
        done = deploy("smol-copy", "--to", urls, "--load", "--json", home=str(tmp / "laptop"))
        assert done.returncode == 0, done.stdout + done.stderr
        report = {r["node"]: r for r in json.loads(done.stdout)}
        assert report[nodes[1].url]["result"] == "loaded"
        assert "peer" in report[nodes[1].url]["why"]
        for node in nodes:
            assert "smol-copy" in httpx.get(node.url + "/health").json()["models"]
    finally:
        for node in nodes:
            node.stop()
