"""Pilot tests of the fleet monitor over a fixed fleet, and once over a real node."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx
from rich.style import Style
from rich.text import Text
from textual.pilot import Pilot
from textual.strip import Strip
from textual.widgets import Sparkline, Static

from edgebox.tui.app import FleetApp
from edgebox.tui.router import RouterSource
from edgebox.tui.snapshot import FleetSnapshot
from edgebox.tui.source import DirectSource, FleetSource, ReplaySource
from edgebox.tui.table import NodeTable
from tests.conftest import NodeProcess, free_port
from tests.tui.fleet import T0, fleet


def drive(
    source: FleetSource,
    steps: Callable[[FleetApp, Pilot[None]], Awaitable[None]],
    router: RouterSource | None = None,
) -> FleetApp:
    app = FleetApp(source, interval=3600, router=router)

    async def run() -> None:
        async with app.run_test(size=(160, 40)) as pilot:
            await app.workers.wait_for_complete()
            await pilot.pause()
            await steps(app, pilot)

    asyncio.run(run())
    return app


def table(app: FleetApp) -> NodeTable:
    return app.query_one("#nodes", NodeTable)


def screen_rows(app: FleetApp) -> list[Strip]:
    """The table's lines as rendered now (header first), as the compositor gets them."""
    t = table(app)
    return [t.render_line(y) for y in range(t.scrollable_content_region.height)]


def cell_style(line: Strip, text: str) -> Style:
    """The style of the rendered segment that holds `text`."""
    return next(s.style or Style() for s in line if text in s.text)


def names(app: FleetApp) -> list[str]:
    t = table(app)
    return [str(t.get_row_at(i)[0]) for i in range(t.row_count)]


def detail(app: FleetApp) -> str:
    content = app.query_one("#detail-text", Static).render()
    return content.plain if isinstance(content, Text) else str(content)


def test_one_row_per_node_and_totals() -> None:
    async def steps(app: FleetApp, pilot: Pilot[None]) -> None:
        assert table(app).row_count == 4
        assert names(app) == ["http://127.0.0.1:9", "mac", "rtx", "spark"]
        totals = app.query_one("#totals", Static).render()
        assert "2/4 online" in str(totals) and "161.5 tok/s" in str(totals)

    drive(ReplaySource([fleet()]), steps)


def test_offline_and_unreachable_rows_are_marked_and_dimmed() -> None:
    async def steps(app: FleetApp, pilot: Pilot[None]) -> None:
        rows = {r[0]: r for r in (table(app).get_row_at(i) for i in range(4))}
        assert rows["mac"][1] == "offline" and rows["http://127.0.0.1:9"][1] == "unreachable"
        assert rows["spark"][1] == "LAN"  # online, polled directly
        assert rows["spark"][5] == "61/128G U"  # unified memory is marked
        await pilot.press("down", "down")  # the cursor (which restyles a row) off mac and spark
        lines = {line.text.split()[0]: line for line in screen_rows(app)[1:5]}
        assert cell_style(lines["mac"], "mac").dim and cell_style(lines["mac"], "offline").dim
        unreachable = cell_style(lines["http://127.0.0.1:9"], "unreachable")
        assert unreachable.color is not None and unreachable.color.name == "red"
        assert cell_style(lines["spark"], "LAN").color.name == "green"  # type: ignore[union-attr]
        assert not cell_style(lines["spark"], "spark").dim

    drive(ReplaySource([fleet()]), steps)


def test_selecting_a_row_shows_its_detail_and_sparkline() -> None:
    snaps = [fleet(T0, 10.0), fleet(T0 + 2, 20.0), fleet(T0 + 4, 30.0)]

    async def steps(app: FleetApp, pilot: Pilot[None]) -> None:
        for _ in range(2):
            await pilot.press("r")
            await app.workers.wait_for_complete()
        await pilot.pause()
        assert "cannot connect" in detail(app)  # first row (unreachable) selected at start
        await pilot.press("down", "down", "down")
        assert app.selected == "n-spark"
        text = detail(app)
        assert "spark" in text and "nvidia-dgx-spark: NVIDIA GB10" in text
        assert "llama-3.1-8b" in text and "running 3/4 slots  queued 2" in text
        assert "llamacpp: CUDA build, unified memory" in text  # runtime and fast path
        assert "last seen 1s ago" in text
        assert app.query_one("#spark-tokens", Sparkline).data == [10.0, 20.0, 30.0]
        assert app.query_one("#spark-queue", Sparkline).data == [5.0, 5.0, 5.0]
        await pilot.press("up")
        assert app.selected == "n-rtx" and "qwen2.5-7b" in detail(app)

    drive(ReplaySource(snaps), steps)


def test_sort_keeps_the_selected_node_and_filter_narrows_rows() -> None:
    async def steps(app: FleetApp, pilot: Pilot[None]) -> None:
        await pilot.press("down", "down")  # rtx
        await pilot.press("o")  # by status: online first
        assert app.sort == "status"
        assert names(app)[:2] == ["rtx", "spark"] and app.selected == "n-rtx"
        await pilot.press("o")  # by tokens/s, highest first
        assert names(app)[:2] == ["rtx", "spark"]
        await pilot.press("slash", *"llama")
        assert names(app) == ["spark"] and app.selected == "n-spark"
        await pilot.press("enter")
        assert names(app) == ["spark"]
        await pilot.press("escape")
        assert table(app).row_count == 4

    drive(ReplaySource([fleet()]), steps)


def test_q_quits() -> None:
    async def steps(app: FleetApp, pilot: Pilot[None]) -> None:
        await pilot.press("q")
        await pilot.pause()
        assert not app.is_running

    app = drive(ReplaySource([fleet()]), steps)
    assert app.return_code == 0


def test_live_node_and_a_dead_one_through_direct_source(node: NodeProcess) -> None:
    dead = f"http://127.0.0.1:{free_port()}"

    async def steps(app: FleetApp, pilot: Pilot[None]) -> None:
        identity = httpx.get(node.url + "/health").json()["node"]
        live, gone = table(app).get_row(identity["id"]), table(app).get_row(dead)  # by node id
        assert str(live[0]) == identity["name"]
        assert str(live[1]) == "LAN" and str(live[9]).startswith("smollm2-135m")  # + embeddings
        assert str(gone[0]) == dead and str(gone[1]) == "unreachable"
        if app.selected != identity["id"]:  # two rows, sorted by name
            await pilot.press("down")
        assert app.selected == identity["id"]
        assert "smollm2-135m  running 0/4 slots" in detail(app)

    drive(DirectSource([dead, node.url]), steps)


def test_rows_scrolled_into_view_show_the_latest_poll() -> None:
    """Only on-screen rows are redrawn per poll; the rest must show the latest when scrolled to."""
    base = fleet().nodes[1]

    def many(rate: float) -> FleetSnapshot:
        nodes = tuple(
            base.model_copy(update={"name": f"n{i:02d}", "id": f"n{i:02d}", "tokens_per_s": rate})
            for i in range(80)
        )
        return FleetSnapshot(taken_at=T0, nodes=nodes)

    async def steps(app: FleetApp, pilot: Pilot[None]) -> None:
        await pilot.press("r")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert (
            screen_rows(app)[1].text.split()[:1] == ["n00"] and " 7.0 " in screen_rows(app)[1].text
        )
        await pilot.press("ctrl+end")
        await pilot.pause()
        last = screen_rows(app)[-1].text
        assert last.split()[0] == "n79" and " 7.0 " in last

    drive(ReplaySource([many(1.0), many(7.0)]), steps)
