"""SVG snapshots of the monitor over the fixed fleet (update with `pytest --snapshot-update`)."""

from __future__ import annotations

from typing import Any

from textual.pilot import Pilot

from edgebox.tui.app import FleetApp
from edgebox.tui.source import ReplaySource
from tests.tui.fleet import T0, fleet


async def _polled(pilot: Pilot[None]) -> None:
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def _app() -> FleetApp:
    snaps = [fleet(T0, rate) for rate in (5.0, 20.0, 35.0, 41.5)]
    return FleetApp(ReplaySource(snaps), interval=3600)


def test_fleet_table_with_spark_selected(snap_compare: Any) -> None:
    async def select_spark(pilot: Pilot[None]) -> None:
        await _polled(pilot)
        for _ in range(3):
            await pilot.press("r")
            await _polled(pilot)
        await pilot.press("down", "down", "down")

    assert snap_compare(_app(), terminal_size=(150, 30), run_before=select_spark)


def test_filtered_by_model(snap_compare: Any) -> None:
    async def filter_qwen(pilot: Pilot[None]) -> None:
        await _polled(pilot)
        await pilot.press("slash", *"qwen")

    assert snap_compare(_app(), terminal_size=(150, 30), run_before=filter_qwen)
