"""What `edgebox top` can do to a node: drain/undrain over its admin API, ssh into it, and the
y/n confirmation that destructive actions ask for first."""

from __future__ import annotations

import subprocess
import sys
from typing import ClassVar

import httpx
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label

from edgebox.tui.snapshot import NodeSnapshot

ADMIN_TIMEOUT = httpx.Timeout(5.0, connect=2.0)
NOT_SUPPORTED = "loading and unloading models is not supported by this node (no admin endpoint)"


class Confirm(ModalScreen[bool]):
    """A one-line question answered with y (True) or n / Esc (False)."""

    DEFAULT_CSS = """
    Confirm { align: center middle; }
    Confirm > Vertical { width: auto; height: auto; padding: 1 2; border: thick $warning;
                         background: $surface; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n", "answer(False)", "No"),
        Binding("escape", "answer(False)", "No", show=False),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.question, id="question")
            yield Label("[b]y[/b] yes   [b]n[/b] no", id="answers")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


async def set_draining(url: str, drain: bool, api_key: str | None) -> str:
    """POST /admin/drain or /admin/undrain; returns one line for the UI (never the key)."""
    path = "/admin/drain" if drain else "/admin/undrain"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with httpx.AsyncClient(timeout=ADMIN_TIMEOUT, trust_env=False) as client:
            r = await client.post(url.rstrip("/") + path, headers=headers)
    except httpx.HTTPError as exc:
        return f"{path} failed: {type(exc).__name__}"
    if r.status_code == 404:
        return "drain is not supported by this node (no /admin/drain; upgrade edgebox)"
    if r.status_code == 401:
        return f"{path}: the node wants an API key (set $EDGEBOX_API_KEY)"
    if r.status_code != 200:
        return f"{path} failed: HTTP {r.status_code}"
    return f"{'draining' if drain else 'undrained'}: new requests {'refused' if drain else 'taken'}"


def ssh_command(node: NodeSnapshot) -> list[str]:
    """`edgebox ssh NAME` with this interpreter, so it works from a venv without PATH."""
    return [sys.executable, "-m", "edgebox", "ssh", node.name]


def run_ssh(node: NodeSnapshot) -> int:
    """Run ssh in the foreground terminal (the app is suspended meanwhile)."""
    return subprocess.call(ssh_command(node))
