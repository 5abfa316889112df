"""What `edgebox top` shows: one frozen snapshot of the fleet, built by a `FleetSource`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

NodeStatus = Literal["online", "offline", "unreachable"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class ModelLoad(_Frozen):
    """One model served by a node and the requests it holds right now."""

    name: str
    running: int = 0
    queued: int = 0
    slots: int | None = None
    tokens_per_s: float | None = None  # generated tokens per second between two polls
    size_bytes: int | None = None  # the weights: decode reads them once per step
    runtime: str | None = None  # the runtime class serving it
    fast_path: str | None = None  # "runtime: why it was chosen" (edgebox serve's selection)


class NodeSnapshot(_Frozen):
    """One node as last seen. Figures a node does not report are None, never guessed."""

    name: str
    id: str
    url: str | None = None
    status: NodeStatus
    via: Literal["direct", "hub"] = "direct"
    error: str | None = None  # why the node is unreachable, in one line
    draining: bool = False  # online, but refusing new requests (POST /admin/drain)
    version: str | None = None
    hw_class: str | None = None
    accelerators: tuple[str, ...] = ()
    memory_used: int | None = None  # bytes
    memory_total: int | None = None
    memory_unified: bool = False
    utilization_pct: float | None = None  # accelerator utilisation (max over devices)
    temperature_c: float | None = None
    power_w: float | None = None
    cpu_pct: float | None = None
    bandwidth_gbps: float | None = None  # the probe's memory bandwidth (spec or measured)
    models: tuple[ModelLoad, ...] = ()
    available: tuple[str, ...] = ()  # models on its disk, not loaded (a request loads them)
    loading: tuple[str, ...] = ()
    model_budget: int | None = None  # bytes its models may take (load on demand)
    model_memory: int | None = None  # bytes its models hold
    # its latest model loads and unloads, newest last: "12:03:04 loaded m (on-demand, 1.2 s)"
    model_events: tuple[str, ...] = ()
    tokens_per_s: float | None = None
    p50_ttft_s: float | None = None  # median time to first token since the previous poll
    last_seen: float | None = None  # unix time of the last answer
    # SHA256 fingerprints of the keys that identify the node (its sshd host key, its node key):
    # how one node seen both directly and in the hub's list is recognised as one
    key_fingerprints: tuple[str, ...] = ()

    @property
    def running(self) -> int:
        return sum(m.running for m in self.models)

    @property
    def queued(self) -> int:
        return sum(m.queued for m in self.models)

    @property
    def bandwidth_pct(self) -> float | None:
        """Decode speed as a share of the bandwidth-bound limit (bandwidth / model bytes
        tokens/s per model), summed over models. Batched decode reads the weights once per step
        for every sequence in the batch, so this can pass 100 %."""
        if not self.bandwidth_gbps:
            return None
        shares = [
            m.tokens_per_s * m.size_bytes / (self.bandwidth_gbps * 1e9)
            for m in self.models
            if m.tokens_per_s is not None and m.size_bytes
        ]
        return 100 * sum(shares) if shares else None


class FleetSnapshot(_Frozen):
    """Every node at one moment (`taken_at`, unix time)."""

    taken_at: float
    nodes: tuple[NodeSnapshot, ...] = ()

    @property
    def online(self) -> int:
        return sum(1 for n in self.nodes if n.status == "online")

    @property
    def tokens_per_s(self) -> float:
        return sum(n.tokens_per_s or 0.0 for n in self.nodes if n.status == "online")

    @property
    def memory_used(self) -> int:
        return sum(n.memory_used or 0 for n in self.nodes if n.status == "online")

    @property
    def memory_total(self) -> int:
        return sum(n.memory_total or 0 for n in self.nodes if n.status == "online")

    def to_json(self) -> dict[str, object]:
        """The `--json` form: the snapshot plus fleet totals."""
        return {
            "taken_at": self.taken_at,
            "totals": {
                "nodes": len(self.nodes),
                "online": self.online,
                "tokens_per_s": round(self.tokens_per_s, 2),
                "memory_used": self.memory_used,
                "memory_total": self.memory_total,
            },
            "nodes": [n.model_dump(mode="json") for n in self.nodes],
        }
