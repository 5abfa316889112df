"""Pure presentation: snapshot → table cells, sort orders, filters and text. No Textual here."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from rich.text import Text

from edgebox.models.footprint import format_size
from edgebox.tui.snapshot import FleetSnapshot, NodeSnapshot

# Column → fixed width: measuring every cell of a large fleet on every refresh costs more than
# the rest of a frame; longer text is cropped here and shown whole in the detail pane.
COLUMNS = {
    "node": 18,
    "status": 11,
    "class": 16,
    "accel": 14,
    "util": 4,
    "memory": 11,
    "temp": 4,
    "power": 5,
    "cpu": 4,
    "models": 18,
    "run/q": 6,
    "tok/s": 7,
    "bw%": 4,
    "ttft": 6,
}
_VENDORS = ("NVIDIA GeForce ", "NVIDIA ", "Apple ", "AMD ", "Intel ")

# The status column says how a live node is reached: LAN (the monitor polls it itself: mDNS,
# --node, nodes.json) or hub (only the hub's record); else draining, offline or unreachable.
STATUS_STYLE = {
    "LAN": "bold green",
    "hub": "bold green",
    "offline": "dim",
    "unreachable": "bold red",
    "draining": "bold yellow",
}
_STATUS_RANK = {"online": 0, "unreachable": 1, "offline": 2}

SORTS: dict[str, Callable[[NodeSnapshot], Any]] = {
    "name": lambda n: n.name.lower(),
    "status": lambda n: (_STATUS_RANK[n.status], n.name.lower()),
    "tok/s": lambda n: (-(n.tokens_per_s or 0.0), n.name.lower()),
    "memory": lambda n: (-(n.memory_used or 0), n.name.lower()),
    "queue": lambda n: (-(n.running + n.queued), n.name.lower()),
}
SORT_ORDER = tuple(SORTS)


def next_sort(current: str) -> str:
    return SORT_ORDER[(SORT_ORDER.index(current) + 1) % len(SORT_ORDER)]


def visible_nodes(
    nodes: Sequence[NodeSnapshot], *, sort: str = "name", needle: str = ""
) -> list[NodeSnapshot]:
    """Nodes whose name, class, accelerator or model contains `needle`, in `sort` order."""
    needle = needle.strip().lower()

    def matches(n: NodeSnapshot) -> bool:
        words = [n.name, n.id, n.status, n.hw_class or "", *n.accelerators]
        words += [m.name for m in n.models]
        return not needle or any(needle in w.lower() for w in words)

    return sorted((n for n in nodes if matches(n)), key=SORTS[sort])


def gib(n: int | None) -> str:
    return "-" if n is None else f"{n / (1 << 30):.1f}"


def _num(value: float | None, fmt: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{fmt}}{unit}"


def memory_text(node: NodeSnapshot) -> str:
    if node.memory_total is None:
        return "-"
    mark = " U" if node.memory_unified else ""  # U: unified CPU/GPU memory
    return f"{gib(node.memory_used)}/{gib(node.memory_total)} GiB{mark}"


def short_memory(node: NodeSnapshot) -> str:
    if node.memory_total is None:
        return "-"
    used = "-" if node.memory_used is None else f"{node.memory_used / (1 << 30):.0f}"
    return f"{used}/{node.memory_total / (1 << 30):.0f}G{' U' if node.memory_unified else ''}"


@functools.lru_cache(maxsize=1024)
def short_accelerators(names: tuple[str, ...]) -> str:
    """'NVIDIA RTX PRO 6000' → 'RTX PRO 6000'; several devices of one kind → '2x ...'."""
    short = [next((n[len(v) :] for v in _VENDORS if n.startswith(v)), n) for n in names]
    if not short:
        return "-"
    if len(set(short)) == 1 and len(short) > 1:
        return f"{len(short)}x {short[0]}"
    return ", ".join(short)


def short_models(node: NodeSnapshot) -> str:
    if not node.models:
        return "-"
    first = node.models[0].name
    return first if len(node.models) == 1 else f"{first} +{len(node.models) - 1}"


def row_plain(node: NodeSnapshot) -> tuple[str, ...]:
    """One table row as plain strings (cheap to compare; `cell_style` styles a cell)."""
    return (
        node.name,
        status_word(node),
        node.hw_class or "-",
        short_accelerators(node.accelerators),
        _num(node.utilization_pct, ".0f", "%"),
        short_memory(node),
        _num(node.temperature_c, ".0f", "°"),
        _num(node.power_w, ".0f", "W"),
        _num(node.cpu_pct, ".0f", "%"),
        short_models(node),
        f"{node.running}/{node.queued}" if node.status == "online" else "-",
        _num(node.tokens_per_s, ".1f"),
        _num(node.bandwidth_pct, ".0f", "%"),
        _num(node.p50_ttft_s * 1000 if node.p50_ttft_s is not None else None, ".0f", "ms"),
    )


def cell_style(column: int, row: tuple[str, ...]) -> str:
    """A cell's style: offline and unreachable rows are dimmed so the live ones stand out."""
    status = row[1]
    if column == 1:
        return STATUS_STYLE[status]
    return "" if status in ("LAN", "hub", "draining") else "dim"


def row_cells(node: NodeSnapshot) -> list[Text]:
    plain = row_plain(node)
    return [Text(cell, style=cell_style(i, plain)) for i, cell in enumerate(plain)]


def status_word(node: NodeSnapshot) -> str:
    if node.status != "online":
        return node.status
    if node.draining:
        return "draining"
    return "hub" if node.via == "hub" else "LAN"


def totals_text(snap: FleetSnapshot, *, sort: str, needle: str) -> Text:
    text = Text()
    text.append("edgebox fleet  ", style="bold")
    text.append(f"{snap.online}/{len(snap.nodes)} online", style="green")
    text.append(f"   {snap.tokens_per_s:.1f} tok/s")
    text.append(f"   memory {gib(snap.memory_used)}/{gib(snap.memory_total)} GiB")
    text.append(f"   sort: {sort}", style="dim")
    if needle:
        text.append(f"   filter: {needle}", style="yellow")
    return text


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def detail_text(node: NodeSnapshot, *, now: float) -> Text:
    """The selected node: how it is reached, its resources and each model's load."""
    text = Text()
    text.append(node.name, style="bold")
    word = status_word(node)
    shown = "online" if word in ("LAN", "hub") else word
    text.append(f"  {shown}", style=STATUS_STYLE[word])
    text.append(f"  via {'the hub' if node.via == 'hub' else 'LAN (polled directly)'}")
    if node.url:
        text.append(f"  {node.url}", style="dim")
    text.append("\n")
    if node.error:
        text.append(f"error: {node.error}\n", style="red")
    if node.last_seen is not None:
        text.append(f"last seen {_ago(max(now - node.last_seen, 0.0))}", style="dim")
        text.append(f"   version {node.version}\n" if node.version else "\n", style="dim")
    if node.hw_class or node.accelerators:
        accel = ", ".join(node.accelerators) or "no accelerator"
        text.append(f"{node.hw_class or 'unknown class'}: {accel}\n")
    if node.bandwidth_gbps:
        pct = node.bandwidth_pct
        share = f", decode at {pct:.0f}% of the bandwidth bound" if pct is not None else ""
        text.append(f"memory bandwidth {node.bandwidth_gbps:.0f} GB/s{share}\n")
    if node.p50_ttft_s is not None:
        text.append(f"median time to first token {node.p50_ttft_s * 1000:.0f} ms\n")
    text.append(f"memory {memory_text(node)}   ")
    text.append(f"util {_num(node.utilization_pct, '.0f', '%')}   ")
    text.append(f"temp {_num(node.temperature_c, '.0f', '°C')}   ")
    text.append(f"power {_num(node.power_w, '.0f', ' W')}   cpu {_num(node.cpu_pct, '.0f', '%')}\n")
    if not node.models:
        text.append("no models reported\n", style="dim")
    for m in node.models:
        slots = f"/{m.slots} slots" if m.slots is not None else ""
        limit = ""
        if node.bandwidth_gbps and m.size_bytes:
            limit = f" of ~{node.bandwidth_gbps * 1e9 / m.size_bytes:.0f} bound"
        text.append(f"  {m.name}", style="bold cyan")
        text.append(
            f"  running {m.running}{slots}  queued {m.queued}"
            f"  {_num(m.tokens_per_s, '.1f')} tok/s{limit}\n"
        )
        if m.fast_path or m.runtime:
            text.append(f"    {m.fast_path or m.runtime}\n", style="dim")
    _residency_text(text, node)
    return text


def _residency_text(text: Text, node: NodeSnapshot) -> None:
    """Load on demand: models on disk, loads under way, the budget, the latest events."""
    for name in node.loading:
        text.append(f"  {name}", style="bold yellow")
        text.append("  loading…\n")
    if node.available:
        text.append("on disk: " + ", ".join(node.available) + "\n", style="dim")
    if node.model_budget:
        used = format_size(node.model_memory) if node.model_memory is not None else "-"
        budget = format_size(node.model_budget)
        text.append(f"model memory {used} of a {budget} budget\n", style="dim")
    for line in node.model_events:
        text.append(f"  {line}\n", style="dim")


# Sparkline series in the detail pane: key → (label, unit).
SERIES = {
    "tokens": ("tok/s", ""),
    "util": ("util", "%"),
    "memory": ("memory", " GiB"),
    "queue": ("run+queue", ""),
}


def series_values(node: NodeSnapshot) -> dict[str, float]:
    """This poll's sample of each sparkline series (unknown figures count as 0)."""
    return {
        "tokens": node.tokens_per_s or 0.0,
        "util": node.utilization_pct or 0.0,
        "memory": (node.memory_used or 0) / (1 << 30),
        "queue": float(node.running + node.queued),
    }


def series_label(key: str, samples: Sequence[float]) -> str:
    label, unit = SERIES[key]
    if not samples:
        return label
    return f"{label} {samples[-1]:.1f}{unit}, max {max(samples):.1f}"
