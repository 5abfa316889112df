"""`edgebox telemetry`: how this box is doing now (CPU, RAM, load, accelerators)."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from edgebox.hardware.telemetry import Telemetry, TelemetrySampler

_GIB = 1 << 30


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}%"


def _gib(used: int | None, total: int | None, unified: bool = False) -> str:
    suffix = " (unified)" if unified else ""
    if total is None:
        return "n/a" + suffix
    left = "?" if used is None else f"{used / _GIB:.1f}"
    return f"{left} / {total / _GIB:.1f} GiB{suffix}"


def render(sample: Telemetry) -> Table:
    """One sample as a table: the host first, then one row per accelerator."""
    stamp = time.strftime("%H:%M:%S", time.localtime(sample.timestamp))
    load = " ".join(f"{x:.2f}" for x in sample.load_avg)
    table = Table("device", "util", "memory", "temp", "power", title=f"{stamp}  load {load}")
    table.add_row(
        f"CPU ({sample.cpu_count} threads)",
        _pct(sample.cpu_pct),
        _gib(sample.memory_used, sample.memory_total),
        "",
        "",
    )
    for a in sample.accelerators:
        table.add_row(
            f"{a.kind}:{a.index} {a.name}",
            _pct(a.utilization_pct),
            _gib(a.memory_used, a.memory_total, a.unified),
            "n/a" if a.temperature_c is None else f"{a.temperature_c:.0f} °C",
            "n/a" if a.power_w is None else f"{a.power_w:.0f} W",
        )
    return table


def telemetry(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per sample (JSON lines).")
    ] = False,
    watch: Annotated[
        float | None,
        typer.Option(help="Keep sampling every SECONDS (Ctrl-C to stop).", min=0.1),
    ] = None,
    count: Annotated[
        int | None,
        typer.Option(help="Stop after N samples (default: 1, or endless with --watch).", min=1),
    ] = None,
) -> None:
    """CPU, RAM and load of this box, and each GPU's utilisation, memory, temperature and
    power ("n/a"/null where the hardware does not say)."""
    out = Console()
    total = count if count is not None else (None if watch else 1)
    sampler = TelemetrySampler()
    taken = 0
    try:
        while total is None or taken < total:
            if taken:
                time.sleep(watch or 1.0)
            sample = sampler.sample()
            taken += 1
            if as_json:
                print(json.dumps(sample.to_dict()), flush=True)
            else:
                out.print(render(sample))
    except KeyboardInterrupt:
        pass
    finally:
        sampler.close()


def register(app: typer.Typer) -> None:
    app.command()(telemetry)
