"""The Textual app behind `edgebox top`: totals, a node table and the selected node's detail.

The app only renders snapshots from a `FleetSource`; polling runs in a worker so a slow or dead
node never blocks the UI, and tests drive the app with a `ReplaySource`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult, SuspendNotSupported
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.widgets import DataTable, Footer, Input, Label, Sparkline, Static

from edgebox.tui import actions, view
from edgebox.tui.model_picker import ModelPicker
from edgebox.tui.requests_view import recent_text
from edgebox.tui.router import RouterSource, RouterStats, router_text
from edgebox.tui.snapshot import FleetSnapshot, NodeSnapshot
from edgebox.tui.source import FleetSource

HISTORY = 120  # samples per node and series kept for the sparklines
SPARK_MIN_S = 1.0  # sparklines redraw at most this often for the same node


class FleetApp(App[None]):
    """Live fleet monitor; `interval` is seconds between polls."""

    TITLE = "edgebox top"
    CSS = """
    #totals { height: 1; padding: 0 1; background: $boost; }
    #router { height: 1; padding: 0 1; display: none; }
    #router.visible { display: block; }
    #nodes { height: 1fr; }
    #detail { height: auto; max-height: 50%; border-top: solid $accent; padding: 0 1; }
    #sparks { height: 4; }
    #sparks > Vertical { width: 1fr; padding-right: 2; }
    #sparks Label { color: $text-muted; }
    #sparks Sparkline { height: 3; }
    #filter { dock: bottom; display: none; }
    #filter.visible { display: block; }
    #status { height: 1; padding: 0 1; color: $text-muted; }
    FleetApp.zoom #nodes { display: none; }
    FleetApp.zoom #detail { height: 1fr; max-height: 100%; }
    FleetApp.zoom #sparks { height: 1fr; }
    FleetApp.zoom #sparks Sparkline { height: 1fr; }
    #recent { height: auto; display: none; }
    FleetApp.zoom #recent { display: block; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("r", "refresh_now", "Refresh"),
        Binding("o", "cycle_sort", "Order"),
        Binding("enter", "zoom", "Detail", show=True, priority=False),
        Binding("s", "ssh", "SSH"),
        Binding("d", "drain", "Drain"),
        Binding("l", "model(True)", "Load"),
        Binding("u", "model(False)", "Unload"),
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("escape", "clear_filter", "Back", show=False),
    ]

    def __init__(
        self,
        source: FleetSource,
        *,
        interval: float = 2.0,
        api_key: str | None = None,
        router: RouterSource | None = None,
    ) -> None:
        super().__init__()
        self.router = router
        self.router_stats: RouterStats | None = None
        self.source = source
        self.interval = interval
        self.api_key = api_key  # sent to nodes' /admin routes (drain), never shown
        self.message = ""  # the last action's outcome, on the status line
        self.snapshot = FleetSnapshot(taken_at=0.0)
        self.sort = "name"
        self.needle = ""
        self.selected: str | None = None  # node id
        self.history: dict[str, dict[str, deque[float]]] = {}  # node id → series → samples
        self._rows: dict[str, tuple[str, ...]] = {}  # the table's cells by node id, in order
        self._want: dict[str, tuple[str, ...]] = {}  # the latest poll's cells (rows off screen
        # are updated when they scroll into view)
        self._columns = tuple(view.COLUMNS)
        self._shown: dict[str, Text | str] = {}  # what each Static shows now
        self._spark_node: str | None = None
        self._spark_at = 0.0  # monotonic time of the last sparkline redraw

    def compose(self) -> ComposeResult:
        yield Static(id="totals")
        yield Static(id="router", classes="visible" if self.router else "")
        yield DataTable[Text](id="nodes", cursor_type="row", zebra_stripes=True)
        with Vertical(id="detail"):
            yield Static("waiting for the first poll…", id="detail-text")
            yield Static("", id="recent")  # the node's recent requests, in the zoomed detail
            with Horizontal(id="sparks"):
                for key in view.SERIES:
                    with Vertical():
                        yield Label(key, id=f"label-{key}")
                        yield Sparkline([], id=f"spark-{key}")
        yield Input(placeholder="filter by name, class, accelerator or model", id="filter")
        yield Static(id="status")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#nodes", DataTable)
        for column, width in view.COLUMNS.items():
            table.add_column(column, key=column, width=width)
        self.watch(table, "scroll_y", self._sync_visible, init=False)
        self.poll_fleet()
        self.set_interval(self.interval, self.poll_fleet)

    @work(exclusive=True, group="poll")
    async def poll_fleet(self) -> None:
        started = time.monotonic()
        snap = await self.source.poll()
        if self.router is not None:
            self.router_stats = await self.router.poll()
        self.poll_s = time.monotonic() - started
        try:
            if self.router is not None:
                self._update("#router", router_text(self.router_stats))
            self.show(snap)
        except NoMatches:  # the app is closing and its widgets are gone: drop the snapshot
            return

    async def on_unmount(self) -> None:
        await self.source.aclose()
        if self.router is not None:
            await self.router.aclose()

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
        self._update("#totals", view.totals_text(snap, sort=self.sort, needle=self.needle))
        table: DataTable[Text] = self.query_one("#nodes", DataTable)
        nodes = view.visible_nodes(snap.nodes, sort=self.sort, needle=self.needle)
        keep = self.selected
        ids = [n.id for n in nodes]
        rows = {n.id: view.row_plain(n) for n in nodes}
        if ids == list(self._rows):
            self._want = rows
            self._sync_visible()
        else:  # rows came, went or moved: rebuild
            table.clear()
            for node_id, plain in rows.items():
                cells = [view.cell_text(i, c, plain[1]) for i, c in enumerate(plain)]
                table.add_row(*cells, key=node_id)
            self._rows, self._want = dict(rows), rows
        if keep in ids and table.cursor_row != ids.index(keep):
            table.move_cursor(row=ids.index(keep), animate=False)
        self._show_detail(self._node(keep) if keep in ids else (nodes[0] if nodes else None))
        self._show_status()

    def _update(self, selector: str, content: Text | str) -> None:
        """Static.update re-lays the screen out, so skip it when the content is unchanged."""
        if self._shown.get(selector) != content:
            self._shown[selector] = content
            self.query_one(selector, Static).update(content)

    def _show_status(self) -> None:
        line = (
            f"{len(self.snapshot.nodes)} nodes, last poll took {getattr(self, 'poll_s', 0.0):.1f} s"
        )
        if self.message:
            line += f"   {self.message}"
        self._update("#status", line)

    def say(self, message: str) -> None:
        self.message = message
        self._show_status()

    def _sync_visible(self) -> None:
        """Bring the rows on screen up to date: only the cells whose text changed (all of a
        row's cells when its status, hence its style, changed), a Text built only for those.

        Rows scrolled out of view are brought up to date when they scroll in: every
        `update_cell` costs a refresh, so updating 200 rows to show 40 was most of a frame.
        Columns have fixed widths, so nothing is re-measured.
        """
        table: DataTable[Text] = self.query_one("#nodes", DataTable)
        order = list(self._want)
        top = int(table.scroll_offset.y)
        for node_id in order[max(top - 1, 0) : top + table.size.height + 1]:
            plain, before = self._want[node_id], self._rows.get(node_id)
            if before is None or plain == before:
                continue
            restyle = plain[1] != before[1]
            for i, (column, cell, old) in enumerate(zip(self._columns, plain, before, strict=True)):
                if restyle or cell != old:
                    table.update_cell(node_id, column, view.cell_text(i, cell, plain[1]))
            self._rows[node_id] = plain

    def _node(self, node_id: str | None) -> NodeSnapshot | None:
        return next((n for n in self.snapshot.nodes if n.id == node_id), None)

    def _show_detail(self, node: NodeSnapshot | None) -> None:
        if node is None:
            self.selected = None
            self._update("#detail-text", "no nodes match" if self.needle else "no nodes")
        else:
            self.selected = node.id
            self._update("#detail-text", view.detail_text(node, now=self.snapshot.taken_at))
        # Sparklines redraw at most once a second (and at once for another node or on `r`).
        clock = time.monotonic()
        shown = node.id if node else None
        if shown == self._spark_node and clock - self._spark_at < SPARK_MIN_S:
            return
        self._spark_node, self._spark_at = shown, clock
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
        self._spark_at = 0.0  # `r` redraws the sparklines too
        self.poll_fleet()

    @on(DataTable.RowSelected, "#nodes")
    def _row_selected(self) -> None:  # Enter on a row
        self.action_zoom()

    def action_zoom(self) -> None:
        """Enter: the selected node's detail, sparklines and recent requests fill the screen
        (Esc/Enter back); the recent requests are fetched in a worker at each poll interval."""
        self.toggle_class("zoom")
        if not self.has_class("zoom"):
            self.query_one("#nodes", DataTable).focus()
            return
        self._update("#recent", recent_text("recent requests: fetching…"))
        self.fetch_recent()
        if getattr(self, "_recent_timer", None) is None:
            self._recent_timer = self.set_interval(self.interval, self.fetch_recent)

    @work(exclusive=True, group="recent")
    async def fetch_recent(self) -> None:
        if not self.has_class("zoom"):
            return
        node = self._node(self.selected)
        if node is None:
            return
        if node.url is None or node.status != "online":
            text = recent_text(f"recent requests: {actions.unreachable_reason(node)}")
        else:
            text = recent_text(await actions.recent_requests(node.url, self.api_key))
        try:
            self._update("#recent", text)
        except NoMatches:  # closing
            return

    def _selected_node(self) -> NodeSnapshot | None:
        node = self._node(self.selected)
        if node is None:
            self.say("no node selected")
        return node

    def action_ssh(self) -> None:
        node = self._selected_node()
        if node is None:
            return
        try:
            with self.suspend():
                code = actions.run_ssh(node)
        except SuspendNotSupported:
            self.say(f"cannot suspend here: run `edgebox ssh {node.name}` in a terminal")
            return
        self.say(f"ssh {node.name} exited with {code}")

    def action_drain(self) -> None:
        node = self._selected_node()
        if node is None or node.url is None or node.status != "online":
            if node is not None:
                self.say(f"{node.name} is not reachable directly: cannot drain it")
            return
        drain = not node.draining
        verb = "Drain" if drain else "Undrain"
        question = f"{verb} {node.name}? " + (
            "It finishes running requests and refuses new ones."
            if drain
            else "It takes requests again."
        )

        def answered(yes: bool | None) -> None:
            if yes and node.url is not None:
                self._set_draining(node.url, drain)
            else:
                self.say(f"{verb.lower()} cancelled")

        self.push_screen(actions.Confirm(question), answered)

    @work(group="admin")
    async def _set_draining(self, url: str, drain: bool) -> None:
        self.say(await actions.set_draining(url, drain, self.api_key))
        self.poll_fleet()

    def action_model(self, load: bool) -> None:
        """l: pick (or type) a model the node can load and load it; u: pick a loaded model,
        confirm (y/n) and unload it. The node is asked in workers."""
        node = self._selected_node()
        if node is None:
            return
        if node.url is None or node.status != "online":
            verb = "load" if load else "unload"
            self.say(f"cannot {verb} models: {actions.unreachable_reason(node)}")
            return
        self._pick_model(node.url, node.name, load=load)

    @work(group="admin")
    async def _pick_model(self, url: str, name: str, *, load: bool) -> None:
        listing = await actions.node_models(url, self.api_key)
        if isinstance(listing, str):
            self.say(listing)
            return
        if load:
            title = f"Load a model on {name}"
            picker = ModelPicker(title, listing.loadable, free_entry=True)
        else:
            picker = ModelPicker(f"Unload a model from {name}", listing.loaded, free_entry=False)

        def picked(model: str | None) -> None:
            if model is None:
                self.say(f"{'load' if load else 'unload'} cancelled")
            elif load:
                self._change_model(url, model, load=True)
            else:
                question = f"Unload {model} from {name}? Requests for it will get 404."
                self.push_screen(actions.Confirm(question), confirmed(model))

        def confirmed(model: str) -> Callable[[bool | None], None]:
            def answered(yes: bool | None) -> None:
                if yes:
                    self._change_model(url, model, load=False)
                else:
                    self.say("unload cancelled")

            return answered

        self.push_screen(picker, picked)

    @work(group="admin")
    async def _change_model(self, url: str, model: str, *, load: bool) -> None:
        self.say(f"{'loading' if load else 'unloading'} {model}…")
        if load:
            self.say(await actions.load_model(url, model, self.api_key))
        else:
            self.say(await actions.unload_model(url, model, self.api_key))
        self.poll_fleet()
        self.fetch_recent()

    def action_cycle_sort(self) -> None:
        self.sort = view.next_sort(self.sort)
        self._render()

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("visible")
        box.value = self.needle
        box.focus()

    def action_clear_filter(self) -> None:
        self.remove_class("zoom")
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
