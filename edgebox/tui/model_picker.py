"""The small modal `edgebox top` opens on `l` (load) and `u` (unload): pick a model from a list,
or (for loading) type a name the node resolves as `serve --model` does."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList


class ModelPicker(ModalScreen[str | None]):
    """Dismisses with the chosen model name, or None on Esc."""

    DEFAULT_CSS = """
    ModelPicker { align: center middle; }
    ModelPicker > Vertical { width: 70; height: auto; max-height: 80%; padding: 1 2;
                             border: thick $accent; background: $surface; }
    ModelPicker OptionList { height: auto; max-height: 12; }
    ModelPicker #hint { color: $text-muted; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, names: Sequence[str], *, free_entry: bool) -> None:
        super().__init__()
        self.title_text = title
        self.names = list(names)
        self.free_entry = free_entry  # an Input for a name not in the list (a path, ORG/REPO:F)

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.title_text, id="title")
            if self.free_entry:
                yield Input(placeholder="model name, path or ORG/REPO:FILE.gguf", id="name")
            if self.names:
                yield OptionList(*self.names, id="choices")
            else:
                yield Label("(nothing to pick)", id="empty")
            hint = "Enter choose   Esc cancel" + ("   Tab to the list" if self.free_entry else "")
            yield Label(hint, id="hint")

    def on_mount(self) -> None:
        focus = "#name" if self.free_entry else ("#choices" if self.names else None)
        if focus:
            self.query_one(focus).focus()

    @on(OptionList.OptionSelected, "#choices")
    def _picked(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.names[event.option_index])

    @on(Input.Submitted, "#name")
    def _typed(self, event: Input.Submitted) -> None:
        name = event.value.strip()
        if name:
            self.dismiss(name)

    def action_cancel(self) -> None:
        self.dismiss(None)
