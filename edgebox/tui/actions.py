"""What `edgebox top` can do to a node: drain/undrain, load/unload models and read its recent
requests over its admin API, ssh into it, and the y/n confirmation that destructive actions ask
for first."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label

from edgebox.tui.snapshot import NodeSnapshot

ADMIN_TIMEOUT = httpx.Timeout(5.0, connect=2.0)
LOAD_TIMEOUT = httpx.Timeout(600.0, connect=2.0)  # a load opens (maybe fetches) a model
NOT_SUPPORTED = "loading and unloading models is not supported by this node (no admin endpoint)"
# The node's admin key, or its inference (API) key on a node without one (loopback only).
WANTS_KEY = (
    "the node wants its admin key ($EDGEBOX_ADMIN_KEY), or its API key ($EDGEBOX_API_KEY) "
    "on a node without one"
)
RECENT_LIMIT = 15


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
        return f"{path}: {WANTS_KEY}"
    if r.status_code == 403:  # /admin from afar on a node without an admin key
        return f"{path}: the node takes /admin only on loopback (start it with --admin-key)"
    if r.status_code != 200:
        return f"{path} failed: HTTP {r.status_code}"
    return f"{'draining' if drain else 'undrained'}: new requests {'refused' if drain else 'taken'}"


def unreachable_reason(node: NodeSnapshot) -> str:
    """Why the admin API of a node that is not online, or has no URL, cannot be used."""
    if node.url is None:
        return f"{node.name} is known through the hub only; its admin API is not reachable"
    return f"{node.name} is {node.status}"


def ssh_command(node: NodeSnapshot) -> list[str]:
    """`edgebox ssh NAME` with this interpreter, so it works from a venv without PATH."""
    return [sys.executable, "-m", "edgebox", "ssh", node.name]


def run_ssh(node: NodeSnapshot) -> int:
    """Run ssh in the foreground terminal (the app is suspended meanwhile)."""
    return subprocess.call(ssh_command(node))


@dataclass(frozen=True)
class NodeModels:
    """`GET /admin/models`: what a node serves and what it could load."""

    loaded: tuple[str, ...]
    loadable: tuple[str, ...]  # not loaded yet


async def _admin(
    method: str,
    url: str,
    path: str,
    api_key: str | None,
    *,
    body: dict[str, Any] | None = None,
    timeout: httpx.Timeout = ADMIN_TIMEOUT,
) -> Any:
    """The JSON answer of one admin call, or one line saying why there is none (never the key)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
            r = await client.request(method, url.rstrip("/") + path, headers=headers, json=body)
        answer = r.json()
    except httpx.HTTPError as exc:
        return f"{path} failed: {type(exc).__name__}"
    except ValueError:
        return f"{path} failed: HTTP {r.status_code}, not JSON"
    error = answer.get("error") if isinstance(answer, dict) else None
    if r.status_code == 401:
        return f"{path}: {WANTS_KEY}"
    if r.status_code == 404 and not (isinstance(error, dict) and error.get("param")):
        return NOT_SUPPORTED
    if r.status_code != 200:
        message = error.get("message") if isinstance(error, dict) else None
        return f"{path}: HTTP {r.status_code}" + (f": {message}" if message else "")
    return answer


async def node_models(url: str, api_key: str | None) -> NodeModels | str:
    answer = await _admin("GET", url, "/admin/models", api_key)
    if isinstance(answer, str):
        return answer
    loaded = tuple(str(m["id"]) for m in answer.get("data", []))
    loadable = tuple(str(m["name"]) for m in answer.get("loadable", []) if not m.get("loaded"))
    return NodeModels(loaded, loadable)


async def load_model(url: str, model: str, api_key: str | None) -> str:
    answer = await _admin(
        "POST", url, "/admin/models/load", api_key, body={"model": model}, timeout=LOAD_TIMEOUT
    )
    if isinstance(answer, str):
        return answer
    return f"loaded {answer['id']} ({answer.get('fast_path') or answer.get('runtime')})"


async def unload_model(url: str, model: str, api_key: str | None) -> str:
    answer = await _admin(
        "POST", url, "/admin/models/unload", api_key, body={"model": model}, timeout=LOAD_TIMEOUT
    )
    return answer if isinstance(answer, str) else f"unloaded {answer['id']}"


async def recent_requests(url: str, api_key: str | None) -> list[dict[str, Any]] | str:
    """The node's last requests, newest first, or a notice saying why there are none."""
    answer = await _admin("GET", url, f"/admin/requests?limit={RECENT_LIMIT}", api_key)
    if isinstance(answer, str):
        return answer.replace(NOT_SUPPORTED, "recent requests: not reported by this node")
    return [r for r in answer.get("data", []) if isinstance(r, dict)]
