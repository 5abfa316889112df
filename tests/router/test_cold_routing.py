"""The router with models in mind, on real processes: a model loaded nowhere goes to the node
that has it on disk (its model store), which loads it and answers, and the route header says
`load:on-disk`; a model that exists nowhere is a 404 listing the models that do."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from edgebox.models.store import ModelStore
from tests.conftest import NodeProcess, start_node, wait_until
from tests.router.conftest import start_router

ONLY_ON_A = "smol-only-on-a"


@pytest.fixture(scope="module")
def cold_fleet(
    tmp_path_factory: pytest.TempPathFactory, smollm2_path: Path
) -> Iterator[dict[str, NodeProcess]]:
    tmp = tmp_path_factory.mktemp("cold")
    ModelStore(tmp / "store-a").add_local(smollm2_path, ONLY_ON_A)  # linked, not copied
    started: dict[str, NodeProcess] = {}
    try:
        for name in ("a", "b"):
            started[name] = start_node(
                tmp,
                *("--model", "smollm2-135m", "--ctx", "512", "--parallel", "1"),
                *("--no-mdns", "--no-tunnel"),
                env={"EDGEBOX_MODELS_DIR": str(tmp / f"store-{name}")},
            )
        nodes = [arg for n in ("a", "b") for arg in ("--node", started[n].url)]
        started["router"] = start_router(tmp, *nodes, ready_models=2)
        yield started
    finally:
        for proc in started.values():
            proc.stop()


def test_a_model_loaded_nowhere_is_loaded_where_it_is_on_disk(
    cold_fleet: dict[str, NodeProcess],
) -> None:
    router = cold_fleet["router"]
    wait_until(
        lambda: (
            ONLY_ON_A in {m["id"] for m in httpx.get(router.base_url + "/models").json()["data"]}
        ),
        20,
        "the router to see the model on node a's disk",
    )
    client = openai.OpenAI(base_url=router.base_url, api_key="x", max_retries=0, timeout=120)
    raw = client.completions.with_raw_response.create(
        model=ONLY_ON_A, prompt="One, two,", max_tokens=3, temperature=0
    )
    node, _, reason = raw.headers["x-edgebox-route"].partition(";")
    assert node == cold_fleet["a"].url.removeprefix("http://")
    assert "load:on-disk" in reason
    assert raw.parse().choices[0].text
    assert ONLY_ON_A in httpx.get(cold_fleet["a"].url + "/health").json()["models"]
    assert ONLY_ON_A not in httpx.get(cold_fleet["b"].url + "/health").json()["models"]


def test_a_model_nowhere_in_the_fleet_is_a_404_listing_what_exists(
    cold_fleet: dict[str, NodeProcess],
) -> None:
    r = httpx.post(
        cold_fleet["router"].base_url + "/completions",
        json={"model": "no-such-model", "prompt": "x", "max_tokens": 1},
        timeout=30,
    )
    assert r.status_code == 404
    error = r.json()["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert "smollm2-135m" in error["message"] and ONLY_ON_A in error["message"]
