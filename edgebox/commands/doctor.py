"""`edgebox doctor`: what this box is, which runtimes it can use, how to enable the rest."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgebox.commands._hubopts import AsJson

out = Console()
_GIB = 1 << 30

Measure = Annotated[
    bool,
    typer.Option(
        help="Measure memory bandwidth when the device is not in the known table, and probe "
        "llama.cpp's repacked/AMX CPU weights when no answer is cached."
    ),
]


def doctor(as_json: AsJson = False, measure: Measure = True) -> None:
    """What this box is, which runtimes it can use, and how to enable the missing ones."""
    from edgebox.hardware import probe
    from edgebox.runtimes.doctor import report

    result = report(probe(measure=measure), probe_cpu=measure)
    if as_json:
        out.print_json(data=result)
        return
    _print_hardware(result["hardware"])
    table = Table("runtime", "usable", "detail", "to enable or speed up")
    for check in result["runtimes"]:
        usable = "yes" if check["usable"] else "no"
        enable = escape(check["enable"] or "")
        table.add_row(check["runtime"], usable, escape(check["detail"]), enable)
    out.print(table)
    paths = Table("model format", "runtime", "why")
    for path in result["fast_paths"]:
        paths.add_row(path["model_format"], path["runtime"] or "-", escape(path["reason"]))
    out.print(paths)
    extra = result["cpu_extra_buffers"]
    if extra:
        line = f"llama.cpp CPU extra buffers (repacked/AMX weights): {_extra_line(extra)}"
        out.print(line, highlight=False)


def _print_hardware(hw: dict[str, Any]) -> None:
    out.print(
        f"[bold]{hw['hostname']}[/]: {hw['hw_class']}, {hw['cpu_model']} "
        f"({hw['cores_physical']} cores / {hw['cores_logical']} threads; "
        f"{' '.join(hw['simd']) or 'no SIMD flags read'})",
        highlight=False,
    )
    out.print(
        f"memory {hw['memory_total'] / _GIB:.1f} GiB, {hw['memory_available'] / _GIB:.1f} GiB "
        f"free{' (unified)' if hw['unified_memory'] else ''}; bandwidth "
        f"{hw['bandwidth_gbps']} GB/s ({hw['bandwidth_source']})",
        highlight=False,
    )
    for accel in hw["accelerators"]:
        out.print(f"accelerator: {accel['kind']} {accel['name']}", highlight=False)


def _extra_line(extra: dict[str, object]) -> str:
    state = {True: "on", False: "off"}.get(extra["enabled"], "?")  # type: ignore[call-overload]
    if extra["status"] == "not probed":
        first = "`edgebox serve` probes at its first start, `edgebox doctor` unless --no-measure"
        return f"{state} (not probed yet: {first})"
    if extra["fallback"]:
        return f"off (faulted: {extra['detail']}; --cpu-extra-buffers on to force)"
    detail = f": {extra['detail']}" if extra["detail"] else ""
    return f"{state} ({extra['status']}{detail})"


def register(app: typer.Typer) -> None:
    app.command()(doctor)
