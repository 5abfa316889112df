"""`edgebox node models|load|unload|requests` against a real node with an API key."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from edgebox.cli import app
from tests.conftest import NodeProcess, start_node

KEY = "sk-edgebox-cli-models-1618"


@pytest.fixture(scope="module")
def keyed_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    node = start_node(
        tmp_path_factory.mktemp("cli-models"),
        "--model",
        "smollm2-135m",
        "--ctx",
        "512",
        "--no-mdns",
        env={"EDGEBOX_API_KEY": KEY},
    )
    yield node
    node.stop()


def edgebox(*args: str, key: str | None = KEY) -> tuple[int, str]:
    env = {"EDGEBOX_API_KEY": key} if key else {"EDGEBOX_API_KEY": ""}
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.output


def test_load_list_requests_unload(keyed_node: NodeProcess) -> None:
    url = keyed_node.url
    code, out = edgebox("node", "load", "minilm", "--node", url)
    assert code == 0 and "loaded all-minilm-l6-v2 (onnx: " in out, out

    code, out = edgebox("node", "models", "--node", url, "--json")
    listing = json.loads(out)
    assert [m["id"] for m in listing["data"]] == ["smollm2-135m", "all-minilm-l6-v2"]
    assert "gemma3-270m" in {m["name"] for m in listing["loadable"]}

    code, out = edgebox("node", "requests", "--node", url, "--json")
    assert code == 0 and isinstance(json.loads(out)["data"], list)

    code, out = edgebox("node", "unload", "all-minilm-l6-v2", "--node", url)
    assert code == 0 and "unloaded all-minilm-l6-v2" in out
    code, out = edgebox("node", "unload", "all-minilm-l6-v2", "--node", url)
    assert code == 1 and "HTTP 404" in out and "not served here" in out


def test_without_the_key_it_fails_without_echoing_anything_secret(keyed_node: NodeProcess) -> None:
    code, out = edgebox("node", "models", "--node", keyed_node.url, key=None)
    assert code == 1 and "HTTP 401" in out and KEY not in out
