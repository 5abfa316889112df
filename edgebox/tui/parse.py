"""Pure parsing: a node's /health report, /metrics text and a hub's node list → `NodeSnapshot`.

Nodes of different edgebox versions report different fields (`hardware`, `telemetry`, `load`
arrived later than `models`); `edgebox.api.health.HealthReport` reads any of them, and a
figure a node does not report stays None here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from edgebox.api.health import HealthReport, ModelEvent, NodeIdentity, models_by_name
from edgebox.tui.snapshot import ModelLoad, NodeSnapshot


@dataclass
class MetricsSample:
    """The counters of one /metrics scrape that `top` turns into rates, per model."""

    generated: dict[str, float] = field(default_factory=dict)  # tokens generated so far
    ttft_buckets: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # (le, n)
    gauges: dict[str, dict[str, float]] = field(default_factory=dict)  # model → name → value


_GAUGES = {
    "edgebox_running_requests": "running",
    "edgebox_queue_depth": "queued",
    "edgebox_sequence_slots": "slots",
    "edgebox_decode_tokens_per_second": "decode_tokens_per_s",
}

_WANTED = (
    "edgebox_generated_tokens_total{",
    "edgebox_time_to_first_token_seconds_bucket{",
    *(name + "{" for name in _GAUGES),
)


def parse_metrics(text: str) -> MetricsSample:
    """Read the figures `top` needs from Prometheus text exposition; unknown series are ignored."""
    sample = MetricsSample()
    # Parse only the series used here: a scrape holds many more, and parsing is the poll's cost.
    wanted = "\n".join(line for line in text.splitlines() if line.startswith(_WANTED))
    for family in text_string_to_metric_families(wanted):
        for s in family.samples:
            model = s.labels.get("model")
            if model is None:
                continue
            if s.name == "edgebox_generated_tokens_total":
                sample.generated[model] = s.value
            elif s.name == "edgebox_time_to_first_token_seconds_bucket":
                le = float(s.labels["le"])
                sample.ttft_buckets.setdefault(model, []).append((le, s.value))
            elif s.name in _GAUGES:
                sample.gauges.setdefault(model, {})[_GAUGES[s.name]] = s.value
    for buckets in sample.ttft_buckets.values():
        buckets.sort()
    return sample


def histogram_median(buckets: list[tuple[float, float]]) -> float | None:
    """Median of a cumulative histogram, interpolated inside its bucket (as PromQL does)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    target = buckets[-1][1] / 2
    lower, below = 0.0, 0.0
    for le, count in buckets:
        if count >= target:
            if math.isinf(le):
                return lower  # past the last finite bound: report that bound
            if count == below:
                return le
            return lower + (le - lower) * (target - below) / (count - below)
        lower, below = le, count
    return None


def _delta_buckets(
    now: list[tuple[float, float]], before: list[tuple[float, float]] | None
) -> list[tuple[float, float]]:
    if not before or len(before) != len(now):
        return now
    return [(le, c - b) for (le, c), (_, b) in zip(now, before, strict=True)]


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _first(mapping: Mapping[str, Any], *keys: str) -> float | None:
    for key in keys:
        if (value := _num(mapping.get(key))) is not None:
            return value
    return None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    return str(value) if isinstance(value, str) and value else None


@dataclass(frozen=True)
class Resources:
    """Hardware and telemetry figures, whichever a node or hub reported."""

    hw_class: str | None = None
    accelerators: tuple[str, ...] = ()
    memory_used: int | None = None
    memory_total: int | None = None
    memory_unified: bool = False
    utilization_pct: float | None = None
    temperature_c: float | None = None
    power_w: float | None = None
    cpu_pct: float | None = None
    bandwidth_gbps: float | None = None


def _unified(gpu: dict[str, Any]) -> bool:
    return bool(gpu.get("unified") or gpu.get("memory_unified"))  # telemetry / NVML sample keys


def parse_resources(hardware: Any, telemetry: Any) -> Resources:
    """Accelerator memory when the devices report it, else system memory (unified on GB10/Apple)."""
    hw, tel = _dict(hardware), _dict(telemetry)
    accels = tuple(str(a.get("name")) for a in hw.get("accelerators") or [] if isinstance(a, dict))
    gpus = [g for g in tel.get("gpus") or tel.get("accelerators") or [] if isinstance(g, dict)]
    unified = bool(hw.get("unified_memory"))
    used = _first(tel, "memory_used")
    total = _first(tel, "memory_total") or _first(hw, "memory_total")
    if used is None and (avail := _first(tel, "memory_available")) is not None and total:
        used = total - avail
    gpu_totals = [_num(g.get("memory_total")) for g in gpus]
    if (
        gpus
        and all(t is not None for t in gpu_totals)
        and not any(g.get("memory_unified") for g in gpus)
    ):
        total = sum(t or 0.0 for t in gpu_totals)
        used = sum(_num(g.get("memory_used")) or 0.0 for g in gpus)
        unified = False
    elif any(map(_unified, gpus)):
        unified = True

    def most(key: str) -> float | None:
        values = [v for g in gpus if (v := _num(g.get(key))) is not None]
        return max(values) if values else None

    power = [v for g in gpus if (v := _num(g.get("power_w"))) is not None]
    if not accels:
        accels = tuple(str(g["name"]) for g in gpus if g.get("name"))
    return Resources(
        hw_class=str(hw["hw_class"]) if hw.get("hw_class") else None,
        accelerators=accels,
        memory_used=int(used) if used is not None else None,
        memory_total=int(total) if total is not None else None,
        memory_unified=unified,
        utilization_pct=most("utilization_pct"),
        temperature_c=most("temperature_c"),
        power_w=sum(power) if power else None,
        cpu_pct=_first(tel, "cpu_pct", "cpu_percent"),
        bandwidth_gbps=_first(hw, "bandwidth_gbps") or None,  # 0: not measured
    )


def node_from_health(
    *,
    url: str,
    health: HealthReport | Mapping[str, Any],
    metrics: MetricsSample | None,
    previous: MetricsSample | None,
    elapsed_s: float | None,
    seen_at: float,
) -> NodeSnapshot:
    """A reachable node: /health gives models and load, /metrics the counters for rates."""
    report = health if isinstance(health, HealthReport) else HealthReport.parse(health)
    res = parse_resources(report.hardware, report.telemetry)
    if not res.bandwidth_gbps and report.bandwidth is not None and report.bandwidth.gbps:
        res = replace(res, bandwidth_gbps=report.bandwidth.gbps)  # measured at the node's start
    node = report.node or NodeIdentity()
    name = str(node.name or (report.hardware or {}).get("hostname") or url)
    models = []
    total_rate: float | None = None
    ttft_now: list[tuple[float, float]] = []
    for alias, figures in report.models.items():
        gauges = metrics.gauges.get(alias, {}) if metrics else {}
        rate = None
        if metrics and previous and elapsed_s:  # a counter appears with its first token
            delta = metrics.generated.get(alias, 0.0) - previous.generated.get(alias, 0.0)
            rate = max(delta, 0.0) / elapsed_s
        if rate is not None:
            total_rate = (total_rate or 0.0) + rate
        if metrics and alias in metrics.ttft_buckets:
            before = previous.ttft_buckets.get(alias) if previous else None
            delta_b = _delta_buckets(metrics.ttft_buckets[alias], before)
            ttft_now = delta_b if not ttft_now else _sum_buckets(ttft_now, delta_b)
        models.append(
            ModelLoad(
                name=alias,
                running=int(figures.running or gauges.get("running") or 0),
                queued=int(figures.queued or gauges.get("queued") or 0),
                slots=figures.slots,
                tokens_per_s=rate,
                size_bytes=figures.size_bytes or None,
                runtime=figures.runtime or None,
                fast_path=figures.fast_path or None,
            )
        )
    if total_rate is None and report.load is not None:
        total_rate = report.load.tokens_per_s
    return NodeSnapshot(
        name=name,
        id=str(node.id or url),
        url=url,
        status="online",
        draining=report.status == "draining",
        version=report.version or None,
        **vars(res),
        models=tuple(models),
        available=tuple(m.name for m in report.available),
        loading=report.loading,
        model_budget=report.memory_budget,
        model_memory=report.memory_used,
        model_events=tuple(event_line(e) for e in report.model_events[-EVENTS_SHOWN:]),
        tokens_per_s=total_rate,
        p50_ttft_s=histogram_median(ttft_now),
        last_seen=seen_at,
        key_fingerprints=_fingerprints(node.ssh_host_key_fingerprint),
    )


EVENTS_SHOWN = 5


def event_line(event: ModelEvent) -> str:
    """One load/unload as `edgebox top` shows it: time, what, which model, why."""
    at = time.strftime("%H:%M:%S", time.localtime(event.at)) if event.at else "--:--:--"
    took = f", {event.seconds:.1f} s" if event.seconds is not None else ""
    return f"{at} {event.event} {event.model} ({event.reason or '-'}{took})"


def _sum_buckets(
    a: list[tuple[float, float]], b: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    if len(a) != len(b):
        return a
    return [(le, x + y) for (le, x), (_, y) in zip(a, b, strict=True)]


def unreachable_node(url: str, error: str, *, last_seen: float | None = None) -> NodeSnapshot:
    return NodeSnapshot(
        name=url, id=url, url=url, status="unreachable", error=error, last_seen=last_seen
    )


def node_from_hub(entry: Mapping[str, Any]) -> NodeSnapshot:
    """One node of the hub's `GET /v1/hub/nodes` (its hardware is `profile`, its telemetry the
    last heartbeat's); anything but "online" shows as offline."""
    res = parse_resources(entry.get("hardware") or entry.get("profile"), entry.get("telemetry"))
    tel, load = _dict(entry.get("telemetry")), _dict(entry.get("load"))
    models = tuple(
        ModelLoad(
            name=name,
            running=int(_first(f, "running", "active") or 0),
            queued=int(_first(f, "queued") or 0),
            slots=int(s) if (s := _first(f, "slots")) is not None else None,
            tokens_per_s=_first(f, "tokens_per_s"),
            runtime=_text(f.get("runtime")),
            fast_path=_text(f.get("fast_path")),
        )
        for name, f in models_by_name(entry.get("models")).items()
    )
    ident = str(entry.get("id") or entry.get("name") or "?")
    return NodeSnapshot(
        name=str(entry.get("name") or ident),
        id=ident,
        url=str(entry["api_url"]) if entry.get("api_url") else None,
        status="online" if entry.get("status") == "online" else "offline",
        via="hub",
        **vars(res),
        models=models,
        tokens_per_s=_first(load, "tokens_per_s") or _first(tel, "tokens_per_s"),
        last_seen=_timestamp(entry.get("last_heartbeat")),
        key_fingerprints=_fingerprints(*_key_fingerprints(entry)),
    )


def _key_fingerprints(entry: Mapping[str, Any]) -> list[str | None]:
    """A hub entry's sshd host key and node key, as the fingerprints a node advertises."""
    from edgebox.fleet.identity import ssh_fingerprint

    found: list[str | None] = []
    for line in (entry.get("host_key"), entry.get("ssh_public_key")):
        try:
            found.append(ssh_fingerprint(str(line)) if line else None)
        except ValueError:  # not a key line: nothing to recognise the node by
            found.append(None)
    return found


def _fingerprints(*values: object) -> tuple[str, ...]:
    return tuple(v for v in values if isinstance(v, str) and v.startswith("SHA256:"))


def _timestamp(value: Any) -> float | None:
    """Unix seconds from a number or an ISO-8601 string."""
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    return _num(value)
