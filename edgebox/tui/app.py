"""The Textual app behind `edgebox top`: totals, a node table and the selected node's detail.

The app only renders snapshots from a `FleetSource`; polling runs in a worker so a slow or dead
node never blocks the UI, and tests drive the app with a `ReplaySource`.
"""

from __future__ import annotations

from collections import deque
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.widgets import DataTable, Footer, Input, Label, Sparkline, Static

from edgebox.tui import view
from edgebox.tui.snapshot import FleetSnapshot, NodeSnapshot
from edgebox.tui.source import FleetSource

HISTORY = 120  # samples per node and series kept for the sparklines


class FleetApp(App[None]):
    """Live fleet monitor; `interval` is seconds between polls."""

    TITLE = "edgebox top"
    CSS = """
    #totals { height: 1; padding: 0 1; background: $boost; }
    #nodes { height: 1fr; }
    #detail { height: auto; max-height: 50%; border-top: solid $accent; padding: 0 1; }
    #sparks { height: 4; }
    #sparks > Vertical { width: 1fr; padding-right: 2; }
    #sparks Label { color: $text-muted; }
    #sparks Sparkline { height: 3; }
    #filter { dock: bottom; display: none; }
    #filter.visible { display: block; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("r", "refresh_now", "Refresh"),
        Binding("s", "cycle_sort", "Sort"),
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    def __init__(self, source: FleetSource, *, interval: float = 2.0) -> None:
        super().__init__()
        self.source = source
        self.interval = interval
        self.snapshot = FleetSnapshot(taken_at=0.0)
        self.sort = "name"
        self.needle = ""
        self.selected: str | None = None  # node id
        self.history: dict[str, dict[str, deque[float]]] = {}  # node id → series → samples
        self._rows: dict[str, list[Text]] = {}  # the table's cells by node id, in table order

    def compose(self) -> ComposeResult:
        yield Static(id="totals")
        yield DataTable[Text](id="nodes", cursor_type="row", zebra_stripes=True)
        with Vertical(id="detail"):
            yield Static("waiting for the first poll…", id="detail-text")
            with Horizontal(id="sparks"):
                for key in view.SERIES:
                    with Vertical():
                        yield Label(key, id=f"label-{key}")
                        yield Sparkline([], id=f"spark-{key}")
        yield Input(placeholder="filter by name, class, accelerator or model", id="filter")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#nodes", DataTable)
        for column, width in view.COLUMNS.items():
            table.add_column(column, key=column, width=width)
        self.poll_fleet()
        self.set_interval(self.interval, self.poll_fleet)

    @work(exclusive=True, group="poll")
    async def poll_fleet(self) -> None:
        snap = await self.source.poll()
        try:
            self.show(snap)
        except NoMatches:  # the app is closing and its widgets are gone: drop the snapshot
            return

    async def on_unmount(self) -> None:
        await self.source.aclose()

    def show(self, snap: FleetSnapshot) -> None:
        """Render one snapshot: totals, table rows (cursor kept on the same node), detail."""
        self.snapshot = snap
        for node in snap.nodes:
            history = self.history.setdefault(node.id, {})
            for key, value in view.series_values(node).items():
                history.setdefault(key, deque(maxlen=HISTORY)).append(value)
        self._render()

    def _render(self) -> None:
        snap = self.snapshot
        self.query_one("#totals", Static).update(
            view.totals_text(snap, sort=self.sort, needle=self.needle)
        )
        table: DataTable[Text] = self.query_one("#nodes", DataTable)
        nodes = view.visible_nodes(snap.nodes, sort=self.sort, needle=self.needle)
        keep = self.selected
        ids = [n.id for n in nodes]
        rows = {n.id: view.row_cells(n) for n in nodes}
        if ids == list(self._rows):
            self._update_changed_cells(table, rows)
        else:  # rows came, went or moved: rebuild
            table.clear()
            for node_id, cells in rows.items():
                table.add_row(*cells, key=node_id)
        self._rows = rows
        if keep in ids:
            table.move_cursor(row=ids.index(keep), animate=False)
        self._show_detail(self._node(keep) if keep in ids else (nodes[0] if nodes else None))

    def _update_changed_cells(self, table: DataTable[Text], rows: dict[str, list[Text]]) -> None:
        """Same rows in the same order: touch only the cells whose text or style changed.

        Columns have fixed widths, so nothing is re-measured (Textual would re-measure a whole
        column for every shrinking cell).
        """
        for node_id, cells in rows.items():
            before = self._rows[node_id]
            for column, cell, old in zip(view.COLUMNS, cells, before, strict=True):
                if cell.plain != old.plain or cell.style != old.style:
                    table.update_cell(node_id, column, cell)

    def _node(self, node_id: str | None) -> NodeSnapshot | None:
        return next((n for n in self.snapshot.nodes if n.id == node_id), None)

    def _show_detail(self, node: NodeSnapshot | None) -> None:
        text = self.query_one("#detail-text", Static)
        if node is None:
            self.selected = None
            text.update("no nodes match" if self.needle else "no nodes")
        else:
            self.selected = node.id
            text.update(view.detail_text(node, now=self.snapshot.taken_at))
        history = self.history.get(node.id, {}) if node else {}
        for key in view.SERIES:
            series = list(history.get(key, ()))
            self.query_one(f"#spark-{key}", Sparkline).data = series
            self.query_one(f"#label-{key}", Label).update(view.series_label(key, series))

    @on(DataTable.RowHighlighted, "#nodes")
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key.value is not None:
            self._show_detail(self._node(event.row_key.value))

    def action_refresh_now(self) -> None:
        self.poll_fleet()

    def action_cycle_sort(self) -> None:
        self.sort = view.next_sort(self.sort)
        self._render()

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("visible")
        box.value = self.needle
        box.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.remove_class("visible")
        self.needle = ""
        self.query_one("#nodes", DataTable).focus()
        self._render()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.needle = event.value
        self._render()

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        self.query_one("#filter", Input).remove_class("visible")
        self.query_one("#nodes", DataTable).focus()
