"""Pure: a node's recent requests (`GET /admin/requests` records) as table rows and as the text
of `edgebox top`'s detail view."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from rich.text import Text

HEADER = ("age", "kind", "model", "status", "prompt", "completion", "ttft", "took")


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{max(seconds, 0):.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def _seconds(value: Any) -> str:
    return f"{value * 1000:.0f} ms" if isinstance(value, int | float) else "-"


def request_rows(
    records: Sequence[dict[str, Any]], now: float | None = None
) -> list[tuple[str, ...]]:
    """One row of strings per record, in the order given (the node sends newest first)."""
    clock = time.time() if now is None else now
    rows: list[tuple[str, ...]] = []
    for r in records:
        at = r.get("at")
        rows.append(
            (
                _age(clock - at) if isinstance(at, int | float) else "-",
                str(r.get("kind", "-")),
                str(r.get("model") or "-"),
                str(r.get("status", "-")),
                str(r.get("prompt_tokens", 0)),
                str(r.get("completion_tokens", 0)),
                _seconds(r.get("ttft_s")),
                _seconds(r.get("duration_s")),
            )
        )
    return rows


def recent_text(records: Sequence[dict[str, Any]] | str, now: float | None = None) -> Text:
    """The detail view's block: a notice (a string) or aligned columns of the records."""
    if isinstance(records, str):
        return Text(records, style="dim")
    if not records:
        return Text("recent requests: none yet", style="dim")
    rows = [HEADER, *request_rows(records, now)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    text = Text("recent requests\n", style="bold")
    for n, row in enumerate(rows):
        line = "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        failed = n > 0 and not row[3].startswith("2")
        text.append(line + "\n", style="dim" if n == 0 else ("red" if failed else ""))
    text.rstrip()
    return text
