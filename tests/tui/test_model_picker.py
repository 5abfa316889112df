"""`l` and `u` in `edgebox top` against a real node with an API key: the picker lists what the
node can load or has loaded, y/n guards the unload, Esc and n cancel; Enter's detail view lists
the node's recent requests."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest
from rich.text import Text
from textual.pilot import Pilot
from textual.widgets import Input, OptionList, Static

from edgebox.tui.actions import Confirm
from edgebox.tui.app import FleetApp
from edgebox.tui.model_picker import ModelPicker
from edgebox.tui.source import DirectSource, ReplaySource
from tests.conftest import NodeProcess, start_node
from tests.tui.fleet import fleet
from tests.tui.test_actions import status_line
from tests.tui.test_app import drive

KEY = "sk-edgebox-top-models-2718"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def keyed_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    node = start_node(
        tmp_path_factory.mktemp("top-models"),
        "--model",
        "smollm2-135m",
        "--ctx",
        "512",
        "--no-mdns",
        env={"EDGEBOX_API_KEY": KEY},
    )
    yield node
    node.stop()


def served(node: NodeProcess) -> list[str]:
    models = httpx.get(node.base_url + "/models", headers=AUTH).json()["data"]
    return [m["id"] for m in models if m.get("status", "loaded") == "loaded"]  # not on-disk ones


def text_of(app: FleetApp, selector: str) -> str:
    content = app.query_one(selector, Static).render()
    return content.plain if isinstance(content, Text) else str(content)


async def settle(app: FleetApp, pilot: Pilot[None]) -> None:
    await app.workers.wait_for_complete()
    await pilot.pause()


def test_load_picks_from_the_nodes_list_and_unload_asks_first(keyed_node: NodeProcess) -> None:
    async def steps(app: FleetApp, pilot: Pilot[None]) -> None:
        app.api_key = KEY
        await pilot.press("l")
        await settle(app, pilot)
        picker = app.screen
        assert isinstance(picker, ModelPicker) and "all-minilm-l6-v2" in picker.names
        assert "smollm2-135m" not in picker.names  # loaded already: not offered
        await pilot.press("escape")
        assert not isinstance(app.screen, ModelPicker) and "load cancelled" in status_line(app)

        await pilot.press("l")
        await settle(app, pilot)
        app.screen.query_one("#name", Input).value = "minilm"  # typed: resolved by the node
        await pilot.press("enter")
        await settle(app, pilot)
        assert "loaded all-minilm-l6-v2" in status_line(app)
        assert served(keyed_node) == ["smollm2-135m", "all-minilm-l6-v2"]

        await pilot.press("u")
        await settle(app, pilot)
        picker = app.screen
        assert isinstance(picker, ModelPicker)
        assert picker.names == ["smollm2-135m", "all-minilm-l6-v2"]
        picker.query_one(OptionList).highlighted = 1
        await pilot.press("enter")
        assert isinstance(app.screen, Confirm) and "all-minilm-l6-v2" in app.screen.question
        await pilot.press("n")
        assert "unload cancelled" in status_line(app)
        assert "all-minilm-l6-v2" in served(keyed_node)

        await pilot.press("u")
        await settle(app, pilot)
        app.screen.query_one(OptionList).highlighted = 1
        await pilot.press("enter", "y")
        await settle(app, pilot)
        assert "unloaded all-minilm-l6-v2" in status_line(app)
        assert served(keyed_node) == ["smollm2-135m"]

    drive(DirectSource([keyed_node.url]), steps)


def test_without_the_key_the_picker_does_not_open_and_says_why(keyed_node: NodeProcess) -> None:
    async def steps(app: FleetApp, pilot: Pilot[None]) -> None:
        await pilot.press("l")
        await settle(app, pilot)
        assert not isinstance(app.screen, ModelPicker)
        assert "API key" in status_line(app) and KEY not in status_line(app)

    drive(DirectSource([keyed_node.url]), steps)


def test_detail_view_lists_the_nodes_recent_requests(keyed_node: NodeProcess) -> None:
    client = openai.OpenAI(base_url=keyed_node.base_url, api_key=KEY, max_retries=0)
    out = client.completions.create(model="smollm2-135m", prompt="The sky is", max_tokens=3)
    assert out.usage is not None

    async def steps(app: FleetApp, pilot: Pilot[None]) -> None:
        app.api_key = KEY
        assert not app.query_one("#recent", Static).display
        await pilot.press("enter")
        await settle(app, pilot)
        assert app.query_one("#recent", Static).display
        recent = text_of(app, "#recent")
        assert recent.startswith("recent requests")
        newest = recent.splitlines()[2].split()  # title, header, then the newest request
        assert newest[1:4] == ["completion", "smollm2-135m", "200"]
        assert newest[4:6] == [str(out.usage.prompt_tokens), str(out.usage.completion_tokens)]
        assert newest[7] == "ms"  # the time to first token is shown

    drive(DirectSource([keyed_node.url]), steps)


def test_unreachable_and_hub_nodes_say_why_nothing_can_be_done() -> None:
    async def steps(app: FleetApp, pilot: Pilot[None]) -> None:
        await pilot.press("l")  # the selected row is a dead node
        assert "cannot load models: http://127.0.0.1:9 is unreachable" in status_line(app)
        await pilot.press("u")
        assert "cannot unload models" in status_line(app)
        app.selected = "n-mac"  # known through the hub only: no API address
        await pilot.press("enter")
        await settle(app, pilot)
        assert "hub only" in text_of(app, "#recent")

    drive(ReplaySource([fleet()]), steps)
