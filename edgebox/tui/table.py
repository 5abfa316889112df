"""The node table: a Line-API widget that redraws only the on-screen rows whose cells changed.

Textual's DataTable re-renders every visible cell after any `update_cell` (its render caches are
keyed on one table-wide update count), which cost most of a core's 10% budget at 200 nodes x
2 Hz. Here a row is one cached `Strip` built from fixed-width plain cells; `set_rows` compares
each row with the one it replaces and refreshes only the screen lines that changed, so rows off
screen cost nothing until they are scrolled into view. It looks like the DataTable it replaced:
a fixed header, zebra stripes, a row cursor; Enter posts `RowSelected`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

from rich.cells import set_cell_size
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

Row = tuple[str, ...]  # one row's cells as plain strings
CellStyle = Callable[[int, Row], str]  # (column, row) → a Rich style for that cell


class _RowMessage(Message):
    def __init__(self, table: NodeTable, row_key: str) -> None:
        super().__init__()
        self.table, self.row_key = table, row_key

    @property
    def control(self) -> NodeTable:
        return self.table


class NodeTable(ScrollView, can_focus=True):
    """Rows keyed by node id, fixed column widths; the cursor follows its node across updates."""

    DEFAULT_CSS = """
    NodeTable {
        height: auto;
        max-height: 100%;
        background: $surface;
        color: $foreground;
        &:focus {
            background-tint: $foreground 5%;
            & > .nodetable--cursor {
                background: $block-cursor-background;
                color: $block-cursor-foreground;
                text-style: $block-cursor-text-style;
            }
            & > .nodetable--header { background-tint: $foreground 5%; }
        }
        &:dark > .nodetable--even-row { background: $surface-darken-1 40%; }
        & > .nodetable--header { text-style: bold; background: $panel; color: $foreground; }
        & > .nodetable--even-row { background: $surface-lighten-1 50%; }
        & > .nodetable--odd-row { }
        & > .nodetable--cursor {
            background: $block-cursor-blurred-background;
            color: $block-cursor-blurred-foreground;
            text-style: $block-cursor-blurred-text-style;
        }
    }
    """
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "nodetable--header",
        "nodetable--even-row",
        "nodetable--odd-row",
        "nodetable--cursor",
    }
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "select_cursor", "Detail"),
        Binding("up", "cursor_up", "Cursor up", show=False),
        Binding("down", "cursor_down", "Cursor down", show=False),
        Binding("left", "scroll_left", "Scroll left", show=False),
        Binding("right", "scroll_right", "Scroll right", show=False),
        Binding("pageup", "page_up", "Page up", show=False),
        Binding("pagedown", "page_down", "Page down", show=False),
        Binding("home,ctrl+home", "first", "First", show=False),
        Binding("end,ctrl+end", "last", "Last", show=False),
    ]

    cursor_row: reactive[int] = reactive(0, repaint=False)

    class RowHighlighted(_RowMessage):
        """The cursor moved to another node (or the node under it changed)."""

    class RowSelected(_RowMessage):
        """Enter (or a click on the highlighted row)."""

    def __init__(
        self, columns: Mapping[str, int], cell_style: CellStyle, *, id: str | None = None
    ) -> None:
        super().__init__(id=id)
        self.columns = dict(columns)
        self.cell_style = cell_style
        self.row_keys: list[str] = []
        self.rows: list[Row] = []
        self._strips: dict[int, Strip] = {}  # row index → its cells, styled, no background
        self._styles: dict[str, Style] = {}
        self._header = self._strip(tuple(self.columns), lambda _column, _row: "")
        self._highlighted: str | None = None

    # --- data -----------------------------------------------------------------------------

    def set_rows(self, rows: Sequence[tuple[str, Row]]) -> None:
        """Show `rows` ((node id, cells) in order); only changed, visible lines are redrawn.

        The cursor stays on the node it was on when that node is still listed."""
        keys = [key for key, _ in rows]
        cells = [row for _, row in rows]
        keep = self.row_keys[self.cursor_row] if self.cursor_row < len(self.row_keys) else None
        if len(keys) != len(self.row_keys):
            self.virtual_size = Size(self._header.cell_length, len(keys) + 1)
        top, height = int(self.scroll_y), self.scrollable_content_region.height
        for index, (key, row) in enumerate(zip(keys, cells, strict=True)):
            if index < len(self.rows) and self.rows[index] == row and self.row_keys[index] == key:
                continue
            self._strips.pop(index, None)
            if top <= index < top + height:  # on screen (line 0 is the header)
                self.refresh_line(index + 1)
        for index in range(len(keys), len(self.rows)):  # rows that went away
            self._strips.pop(index, None)
            if top <= index < top + height:
                self.refresh_line(index + 1)
        self.row_keys, self.rows = keys, cells
        target = keys.index(keep) if keep in keys else min(self.cursor_row, len(keys) - 1)
        self.move_cursor(max(target, 0))
        self._announce()

    def get_row(self, key: str) -> Row:
        return self.rows[self.row_keys.index(key)]

    def get_row_at(self, index: int) -> Row:
        return self.rows[index]

    @property
    def row_count(self) -> int:
        return len(self.rows)

    # --- cursor ---------------------------------------------------------------------------

    def move_cursor(self, row: int) -> None:
        self.cursor_row = max(0, min(row, len(self.rows) - 1))
        self.call_after_refresh(self._scroll_to_cursor)  # after a new virtual size is laid out

    def _scroll_to_cursor(self) -> None:
        visible = self.scrollable_content_region.height - 1  # less the header
        if visible > 0:
            if self.cursor_row < self.scroll_y:
                self.scroll_to(y=self.cursor_row, animate=False)
            elif self.cursor_row >= self.scroll_y + visible:
                self.scroll_to(y=self.cursor_row - visible + 1, animate=False)

    def watch_cursor_row(self, old: int, new: int) -> None:
        self.refresh_line(old + 1)
        self.refresh_line(new + 1)
        self._announce()

    def _announce(self) -> None:
        """Post RowHighlighted when the node under the cursor is another one."""
        key = self.row_keys[self.cursor_row] if self.cursor_row < len(self.row_keys) else None
        if key != self._highlighted:
            self._highlighted = key
            if key is not None:
                self.post_message(self.RowHighlighted(self, key))

    def action_cursor_up(self) -> None:
        self.move_cursor(self.cursor_row - 1)

    def action_cursor_down(self) -> None:
        self.move_cursor(self.cursor_row + 1)

    def action_page_up(self) -> None:
        self.move_cursor(self.cursor_row - max(self.scrollable_content_region.height - 1, 1))

    def action_page_down(self) -> None:
        self.move_cursor(self.cursor_row + max(self.scrollable_content_region.height - 1, 1))

    def action_first(self) -> None:
        self.move_cursor(0)

    def action_last(self) -> None:
        self.move_cursor(len(self.rows) - 1)

    def action_select_cursor(self) -> None:
        if self.cursor_row < len(self.row_keys):
            self.post_message(self.RowSelected(self, self.row_keys[self.cursor_row]))

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None or offset.y < 1:  # the header
            return
        row = int(self.scroll_y) + offset.y - 1
        if row < len(self.rows):
            if row == self.cursor_row:
                self.action_select_cursor()
            self.move_cursor(row)

    # --- rendering ------------------------------------------------------------------------

    def _style(self, spec: str) -> Style:
        if spec not in self._styles:
            self._styles[spec] = Style.parse(spec)
        return self._styles[spec]

    def _strip(self, row: Row, cell_style: CellStyle) -> Strip:
        """One row: each cell cropped or padded to its column, one space either side; cells of
        one style share a segment (a row is 2-3 segments, not 42, for everything downstream)."""
        segments: list[Segment] = []
        text, style = "", Style.null()
        for column, (cell, width) in enumerate(zip(row, self.columns.values(), strict=True)):
            cell_style_ = self._style(cell_style(column, row))
            if cell_style_ != style and text:
                segments.append(Segment(text, style))
                text = ""
            text += f" {set_cell_size(cell, width)} "
            style = cell_style_
        segments.append(Segment(text, style))
        return Strip(segments, sum(self.columns.values()) + 2 * len(self.columns))

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.scrollable_content_region.width
        base = self.rich_style
        if y == 0:
            header = self._header.apply_style(
                base + self.get_component_rich_style("nodetable--header")
            )
            return header.crop_extend(scroll_x, scroll_x + width, base)
        index = scroll_y + y - 1
        if index >= len(self.rows):
            return Strip.blank(width, base)
        strip = self._strips.get(index)
        if strip is None:
            strip = self._strips[index] = self._strip(self.rows[index], self.cell_style)
        stripe = "nodetable--odd-row" if index % 2 else "nodetable--even-row"
        strip = strip.apply_style(base + self.get_component_rich_style(stripe))
        if index == self.cursor_row:  # the cursor's colours win over the cells' own
            cursor = self.get_component_rich_style("nodetable--cursor")
            strip = Strip(Segment(t, (s or Style()) + cursor) for t, s, _ in strip)
        return strip.crop_extend(scroll_x, scroll_x + width, base)
