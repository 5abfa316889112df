"""NodeTable on its own: rows by key, the cursor following its node, messages, keys, rendering."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from textual.app import App, ComposeResult
from textual.pilot import Pilot
from textual.widgets import Footer
from textual.widgets._footer import FooterKey

from edgebox.tui.app import FleetApp
from edgebox.tui.source import ReplaySource
from edgebox.tui.table import NodeTable
from tests.tui.fleet import fleet

COLUMNS = {"name": 6, "load": 4}


def style(column: int, row: tuple[str, ...]) -> str:
    return "dim" if row[1] == "-" else ""


class TableApp(App[None]):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, str]] = []

    def compose(self) -> ComposeResult:
        yield NodeTable(COLUMNS, style, id="t")
        yield Footer()

    def on_node_table_row_highlighted(self, event: NodeTable.RowHighlighted) -> None:
        self.events.append(("highlighted", event.row_key))

    def on_node_table_row_selected(self, event: NodeTable.RowSelected) -> None:
        self.events.append(("selected", event.row_key))


def run(
    steps: Callable[[TableApp, NodeTable, Pilot[None]], Awaitable[None]], width: int = 40
) -> None:
    async def go() -> None:
        app = TableApp()
        async with app.run_test(size=(width, 8)) as pilot:
            await steps(app, app.query_one(NodeTable), pilot)

    asyncio.run(go())


def lines(table: NodeTable) -> list[str]:
    return [table.render_line(y).text for y in range(table.scrollable_content_region.height)]


def test_rows_render_cropped_to_their_columns_under_a_header() -> None:
    async def steps(app: TableApp, table: NodeTable, pilot: Pilot[None]) -> None:
        table.set_rows([("a", ("alpha-long-name", "1.0")), ("b", ("beta", "-"))])
        await pilot.pause()
        shown = lines(table)
        assert shown[0].startswith(" name    load ")
        assert shown[1].startswith(" alpha-  1.0  ") and shown[2].startswith(" beta    -    ")
        assert all(len(line) == table.scrollable_content_region.width for line in shown)
        beta = table.render_line(2)
        assert next(s for s in beta if "beta" in s.text).style.dim  # type: ignore[union-attr]

    run(steps)


def test_cursor_follows_its_node_when_rows_reorder_and_changes_redraw() -> None:
    async def steps(app: TableApp, table: NodeTable, pilot: Pilot[None]) -> None:
        table.set_rows([("a", ("a", "1")), ("b", ("b", "2")), ("c", ("c", "3"))])
        await pilot.press("down")
        await pilot.pause()
        assert table.cursor_row == 1 and app.events[-1] == ("highlighted", "b")
        table.set_rows([("c", ("c", "9")), ("a", ("a", "1")), ("b", ("b", "2"))])
        await pilot.pause()
        assert table.cursor_row == 2 and app.events[-1] == ("highlighted", "b")
        assert lines(table)[1].startswith(" c       9 ")  # the cached line was replaced
        table.set_rows([("a", ("a", "1"))])  # b went away: the cursor stays in range
        await pilot.pause()
        assert table.cursor_row == 0 and app.events[-1] == ("highlighted", "a")
        assert [line.split() for line in lines(table)] == [["name", "load"], ["a", "1"]]

    run(steps)


def test_keys_scroll_with_the_cursor_and_enter_selects() -> None:
    async def steps(app: TableApp, table: NodeTable, pilot: Pilot[None]) -> None:
        table.set_rows([(f"n{i}", (f"n{i}", str(i))) for i in range(30)])
        await pilot.press("end")
        await pilot.pause()
        assert table.cursor_row == 29 and lines(table)[-1].startswith(" n29 ")
        await pilot.press("home", "pagedown", "enter")
        await pilot.pause()
        assert table.cursor_row > 0 and app.events[-1] == ("selected", f"n{table.cursor_row}")
        await pilot.press("right")  # the table is wider than the screen: scrolls sideways
        await pilot.wait_for_scheduled_animations()
        assert table.scroll_x > 0 and lines(table)[0].startswith("name"[int(table.scroll_x) - 1 :])
        await pilot.press("left")
        await pilot.wait_for_scheduled_animations()
        assert table.scroll_x == 0
        await pilot.click(NodeTable, offset=(2, 2))  # the second row on screen
        await pilot.pause()
        assert app.events[-1][0] == "highlighted" and table.cursor_row == int(table.scroll_y) + 1

    run(steps, width=12)


def test_enter_is_listed_in_the_footer_of_the_fleet_app() -> None:
    async def go() -> None:
        app = FleetApp(ReplaySource([fleet()]), interval=3600)
        async with app.run_test(size=(160, 40)) as pilot:
            await app.workers.wait_for_complete()
            await pilot.pause()
            keys = {k.key: k.description for k in app.query(FooterKey)}
            assert keys.get("enter") == "Detail"
            await pilot.press("enter")
            assert app.has_class("zoom")

    asyncio.run(go())
