"""Node actions from `edgebox top`: drain asks first (a real node on loopback answers), Enter
zooms the detail, and the status line reports (load/unload: test_model_picker.py)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from rich.text import Text
from textual.pilot import Pilot
from textual.widgets import Static

from edgebox.tui.actions import Confirm, ssh_command
from edgebox.tui.app import FleetApp
from edgebox.tui.source import DirectSource, ReplaySource
from edgebox.tui.table import NodeTable
from tests.conftest import NodeProcess, start_node
from tests.tui.fleet import fleet
from tests.tui.test_app import drive

KEY = "sk-edgebox-top-drain-9012"


@pytest.fixture(scope="module")
def keyed_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    node = start_node(
        tmp_path_factory.mktemp("top-drain"), "--ctx", "512", env={"EDGEBOX_API_KEY": KEY}
    )
    yield node
    node.stop()


def status_line(app: FleetApp) -> str:
    content = app.query_one("#status", Static).render()
    return content.plain if isinstance(content, Text) else str(content)


def health_status(node: NodeProcess) -> str:
    return str(httpx.get(node.url + "/health").json()["status"])


def test_drain_cancelled_does_nothing_confirmed_drains(keyed_node: NodeProcess) -> None:
    async def steps(app: FleetApp, pilot: Pilot[None]) -> None:
        app.api_key = KEY
        await pilot.press("d")
        assert isinstance(app.screen, Confirm) and "Drain" in app.screen.question
        await pilot.press("n")
        assert not isinstance(app.screen, Confirm)
        assert "cancelled" in status_line(app)
        assert health_status(keyed_node) == "ok"

        await pilot.press("d")
        await pilot.press("y")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert health_status(keyed_node) == "draining"
        assert "draining" in status_line(app)
        assert str(app.query_one("#nodes", NodeTable).get_row_at(0)[1]) == "draining"

        await pilot.press("d")  # a draining node offers undrain
        assert isinstance(app.screen, Confirm) and "Undrain" in app.screen.question
        await pilot.press("y")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert health_status(keyed_node) == "ok"

    drive(DirectSource([keyed_node.url]), steps)


def test_drain_without_the_key_is_refused_and_says_why(keyed_node: NodeProcess) -> None:
    async def steps(app: FleetApp, pilot: Pilot[None]) -> None:
        await pilot.press("d", "y")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert "API key" in status_line(app) and KEY not in status_line(app)
        assert health_status(keyed_node) == "ok"

    drive(DirectSource([keyed_node.url]), steps)


def test_enter_zooms_the_detail_and_escape_returns() -> None:
    async def steps(app: FleetApp, pilot: Pilot[None]) -> None:
        nodes = app.query_one("#nodes", NodeTable)
        await pilot.press("enter")
        assert app.has_class("zoom") and not nodes.display
        await pilot.press("escape")
        assert not app.has_class("zoom") and nodes.display

    drive(ReplaySource([fleet()]), steps)


def test_ssh_names_the_node() -> None:
    async def steps(app: FleetApp, pilot: Pilot[None]) -> None:
        await pilot.press("s")  # headless: no terminal to hand over, so it says what to run
        assert "edgebox ssh http://127.0.0.1:9" in status_line(app)

    drive(ReplaySource([fleet()]), steps)
    assert ssh_command(fleet().nodes[0])[-2:] == ["ssh", "spark"]
