"""What one running node holds: its runtimes by alias, metrics and limits."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from edgebox import __version__
from edgebox.api.body import DEFAULT_MAX_BODY
from edgebox.api.health import (
    HEALTH_VERSION,
    AvailableModel,
    HealthReport,
    Load,
    MemoryBandwidth,
    ModelEvent,
    ModelHealth,
    ModelLoad,
    NodeIdentity,
)
from edgebox.api.response_store import ResponseStore
from edgebox.hardware.bandwidth import Bandwidth, node_bandwidth, speed_of_light
from edgebox.hardware.probe import cpu_model, probe
from edgebox.hardware.telemetry import CachedTelemetry
from edgebox.models.footprint import cached_footprint
from edgebox.models.store import ModelStore
from edgebox.models.transfer import Peer
from edgebox.node.blob_pacing import DEFAULT_SHARE_RATE, BlobPacer
from edgebox.node.catalog import Available, ModelCatalog
from edgebox.node.generation import STREAM_INTERVAL_S
from edgebox.node.kv_transfer import KVStore
from edgebox.node.metrics import NodeMetrics
from edgebox.node.recent import RecentRequests
from edgebox.runtimes.base import EmbeddingRuntime, Runtime
from edgebox.runtimes.open import RuntimeOptions

if TYPE_CHECKING:
    from edgebox.node.ondemand import ModelResidency

log = logging.getLogger(__name__)
HEALTH_EVENTS = 20  # model load/unload events /health carries (newest)


@dataclass
class NodeState:
    runtimes: dict[str, Runtime]  # chat and completion models
    embedders: dict[str, EmbeddingRuntime] = field(default_factory=dict)
    max_body: int = DEFAULT_MAX_BODY
    request_timeout: float | None = None  # per-request override of the runtimes' default
    max_tokens: int | None = None  # `serve --max-tokens`: output cap where a request sets none
    temperature: float = 1.0  # `serve --temperature`: where a request sets none
    kv_store: KVStore = field(default_factory=KVStore)
    started: float = field(default_factory=time.time)
    telemetry: CachedTelemetry = field(default_factory=CachedTelemetry)
    hardware: dict[str, Any] | None = None  # the probe profile, taken on first /health
    node: dict[str, Any] | None = None  # this node's public identity (id, name, host key)
    draining: bool = False  # set by POST /admin/drain: new generation requests get 503
    runtime_options: RuntimeOptions = field(default_factory=RuntimeOptions)  # for /admin loads
    default_runtime: str = "auto"  # `serve --runtime`, for chat models loaded later
    fast_paths: dict[str, str] = field(default_factory=dict)  # model id → "runtime: why"
    recent: RecentRequests = field(default_factory=RecentRequests)
    responses: ResponseStore = field(default_factory=ResponseStore)  # stored /v1/responses
    loading: dict[str, str] = field(default_factory=dict)  # model id → what is being loaded
    # Called on the event loop after a model was loaded or unloaded (the mDNS advertiser).
    on_models_changed: list[Callable[[list[str]], Awaitable[None]]] = field(default_factory=list)
    memory_budget: int | None = None  # bytes for models (`serve --memory-budget`); None: probe's
    keep_alive_s: float = 300.0  # idle seconds before a model loaded on demand is unloaded
    catalog: ModelCatalog = field(default_factory=ModelCatalog)  # what is on disk to load
    residency: ModelResidency = field(init=False)
    bandwidth: Bandwidth | None = None  # what bounds decode here; set by measure_bandwidth
    store: ModelStore | None = None  # the node's model store (serves /v1/blobs, takes pulls)
    pulls: dict[str, Any] = field(default_factory=dict)  # pull job id → PullJob
    find_peers: Callable[[], list[Peer]] | None = None  # the agent's: hub registry, mDNS
    peer_key: str | None = None  # the key this node sends to peers' /v1/blobs (fleet key)
    share_rate: float = DEFAULT_SHARE_RATE  # blob bytes/s while generating (0: unlimited)
    stream_interval: float = STREAM_INTERVAL_S  # s between streamed hand-offs to the loop
    blob_pacer: BlobPacer = field(init=False)
    pull_private: bool = False  # admin URL pulls may reach private addresses (a LAN mirror)
    metrics: NodeMetrics = field(init=False)
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        both = set(self.runtimes) & set(self.embedders)
        if both:
            raise ValueError(f"model ids must be unique; served twice: {', '.join(sorted(both))}")
        self.metrics = NodeMetrics(lambda: {a: r.stats() for a, r in self.all_models().items()})
        self._refresh_fingerprint()
        from edgebox.node.ondemand import ModelResidency

        self.residency = ModelResidency(self)
        self.blob_pacer = BlobPacer(lambda: self.share_rate, self.generating)

    def remember_served(self, specs: dict[str, str]) -> None:
        """The models loaded at start (id → spec): loadable again by id once unloaded."""
        for alias, spec in specs.items():
            kind = "embeddings" if alias in self.embedders else "chat"
            size = self.all_models()[alias].info.size_bytes if alias in self.all_models() else None
            self.catalog.remember(Available(alias, spec, kind, "served", size))

    def _refresh_fingerprint(self) -> None:
        # Changes when the served models or edgebox change, as OpenAI's system_fingerprint does.
        digest = hashlib.sha256(__version__.encode())
        for alias, runtime in sorted(self.all_models().items()):
            digest.update(f"{alias}={runtime.info.path}:{runtime.info.size_bytes}".encode())
        self.fingerprint = "fp_" + digest.hexdigest()[:12]

    async def add_model(self, alias: str, runtime: Runtime | EmbeddingRuntime) -> None:
        """Serve `runtime` as `alias` from now on (called on the event loop)."""
        if alias in self.all_models():
            raise ValueError(f"model ids must be unique; {alias} is served already")
        if runtime.capabilities.embeddings:
            self.embedders[alias] = cast(EmbeddingRuntime, runtime)
        else:
            self.runtimes[alias] = cast(Runtime, runtime)
        await self._models_changed()

    async def remove_model(self, alias: str) -> Runtime | EmbeddingRuntime:
        """Stop serving `alias`; closing the returned runtime stays with the caller."""
        runtime = self.runtimes.pop(alias, None) or self.embedders.pop(alias)
        await self._models_changed()
        return runtime

    async def _models_changed(self) -> None:
        self._refresh_fingerprint()
        models = list(self.all_models())
        for listener in self.on_models_changed:
            try:
                await listener(models)
            except Exception:  # mDNS is a hint: a failed update must not fail the load
                log.exception("model change listener failed")

    def all_models(self) -> dict[str, Runtime | EmbeddingRuntime]:
        """Every served model by id, chat models first."""
        return {**self.runtimes, **self.embedders}

    def model_card(self, alias: str) -> dict[str, Any]:
        runtime = self.all_models()[alias]
        info = runtime.info
        card: dict[str, Any] = {
            "id": alias,
            "object": "model",
            "created": int(self.started),
            "owned_by": "edgebox",
            "status": "loaded",
            "meta": {
                "runtime": type(runtime).__name__,
                "architecture": info.architecture,
                "context_length": info.n_ctx,
                "context_length_trained": info.n_ctx_train,
                "parameters": info.n_params,
                "size_bytes": info.size_bytes,
                "description": info.description,
                "chat_template": info.metadata.get("chat_template"),
                "tool_format": info.metadata.get("tool_format"),
                "capabilities": [k for k, v in vars(runtime.capabilities).items() if v],
            },
        }
        if alias in self.embedders:
            card["meta"]["dimensions"] = self.embedders[alias].dimensions
            card["meta"]["providers"] = info.metadata.get("providers")
        return card

    def available_card(self, entry: Available) -> dict[str, Any]:
        """A model on disk, not loaded, as /v1/models lists it."""
        return {
            "id": entry.name,
            "object": "model",
            "created": int(self.started),
            "owned_by": "edgebox",
            "status": "available",
            "meta": {"kind": entry.kind, "source": entry.source, "size_bytes": entry.size_bytes},
        }

    def measure_bandwidth(self) -> None:
        """Find the memory bandwidth decode is bound by (NVML, or a short copy probe cached per
        CPU model in edgebox's cache dir); blocking, so the caller runs it in a thread."""
        from edgebox.models.bundled import cache_dir

        try:
            self.bandwidth = node_bandwidth(cache_dir() / "bandwidth.json", cpu_model())
        except Exception:  # a figure for dashboards: never worth failing the node
            log.exception("memory bandwidth probe failed")

    def _speed_fields(self, size_bytes: int, decode_rate: float) -> dict[str, Any]:
        """Decode against the speed of light (bandwidth ÷ weight bytes), once it is known."""
        bound = speed_of_light(self.bandwidth.gbps, size_bytes) if self.bandwidth else None
        fields: dict[str, Any] = {"decode_tokens_per_s": round(decode_rate, 1)}
        if bound:
            fields["speed_of_light_tok_s"] = round(bound, 1)
            fields["decode_sol_pct"] = round(100 * decode_rate / bound, 1)
        return fields

    def health(self) -> HealthReport:
        """What /health reports without touching the hardware: status, version, models, load."""
        models: dict[str, ModelHealth] = {}
        for alias, runtime in self.all_models().items():
            stats = runtime.stats()
            fields: dict[str, Any] = {
                "slots": stats.slots,
                "running": stats.running,
                "queued": stats.queued,
                "n_ctx": runtime.info.n_ctx,
                "size_bytes": runtime.info.size_bytes,
                **self._kv_fields(runtime.info.path),
                "runtime": type(runtime).__name__,
                "fast_path": self.fast_paths.get(alias),
                **self._speed_fields(runtime.info.size_bytes, stats.decode_tokens_per_s),
            }
            if "cpu_extra_buffers" in runtime.info.metadata:  # llama.cpp: repacked/AMX weights
                fields["cpu_extra_buffers"] = runtime.info.metadata["cpu_extra_buffers"]
            if hasattr(runtime, "prefix_cache"):  # block hashes of cached prompts, for routers
                fields.update(runtime.prefix_cache())
            if hasattr(runtime, "health"):  # {"status": "degraded", "reason": ...} after a fault
                fields.update(runtime.health())
            models[alias] = ModelHealth(**fields)
        load = {a: ModelLoad(active=m.running, queued=m.queued) for a, m in models.items()}
        report = HealthReport(
            health_version=HEALTH_VERSION,
            status=self._status(models),
            version=__version__,
            uptime_s=round(time.time() - self.started, 1),
            models=models,
            load=Load(
                active=sum(m.active for m in load.values()),
                queued=sum(m.queued for m in load.values()),
                models=load,
            ),
            max_tokens=self.max_tokens,
            **self._residency_fields(),
        )
        if self.node is not None:
            report = report.model_copy(update={"node": NodeIdentity(**self.node)})
        if self.bandwidth is not None:
            report = report.model_copy(
                update={"bandwidth": MemoryBandwidth(**self.bandwidth.to_dict())}
            )
        return report

    @staticmethod
    def _kv_fields(path: str | None) -> dict[str, Any]:
        """A loaded model's KV bytes per token and trained context (`edgebox deploy` sizes
        other nodes' loads from them)."""
        found = cached_footprint(Path(path)) if path else None
        if found is None or not found.kv_bytes_per_token:
            return {}
        return {
            "kv_bytes_per_token": found.kv_bytes_per_token,
            "context_length": found.context_length,
        }

    def _residency_fields(self) -> dict[str, Any]:
        """What /health says of load on demand: models on disk, loads, memory, events."""
        available = self.available_models()
        events = list(self.residency.events)[-HEALTH_EVENTS:]
        fields: dict[str, Any] = {
            "available": tuple(AvailableModel.model_validate(e.to_json()) for e in available),
            "load_ctx": self.runtime_options.n_ctx,  # what a load on demand allocates
            "load_slots": self.runtime_options.parallel or 1,
            "loading": tuple(sorted(self.loading)),
            "memory_used": self.residency.used(),
            "model_events": tuple(ModelEvent(**e.to_json()) for e in events),
        }
        if self.memory_budget is not None or self.hardware is not None:
            fields["memory_budget"] = self.residency.budget
        return fields

    def available_models(self) -> list[Available]:
        """Models on disk that are not loaded (from the last catalog scan)."""
        loaded = self.all_models()
        return [e for e in self.catalog.entries() if e.name not in loaded]

    def _status(self, models: dict[str, ModelHealth]) -> str:
        """draining (set by an operator), degraded (a model's engine recently failed a decode
        or is rebuilding; its entry says why), or ok."""
        if self.draining:
            return "draining"
        if any(m.status == "degraded" for m in models.values()):
            return "degraded"
        return "ok"

    def load(self) -> dict[str, int]:
        """Requests running and queued over all models."""
        stats = [r.stats() for r in self.runtimes.values()]
        return {"running": sum(s.running for s in stats), "queued": sum(s.queued for s in stats)}

    def generating(self) -> bool:
        """Whether any chat model is running or queueing a request now."""
        return any(s.running or s.queued for s in (r.stats() for r in self.runtimes.values()))

    async def full_health(self) -> HealthReport:
        """`health()` plus the hardware profile (probed once) and a telemetry sample at most a
        second old; both are taken off the event loop."""
        if self.hardware is None:
            # No bandwidth measurement: it would copy 512 MiB next to a serving model.
            profile = await asyncio.to_thread(probe, measure=False)
            self.hardware = profile.to_dict()
        await self.catalog.refresh()
        report = self.health()
        if self.bandwidth is not None and self.hardware.get("bandwidth_source") == "unknown":
            self.hardware["bandwidth_gbps"] = self.bandwidth.gbps
            self.hardware["bandwidth_source"] = self.bandwidth.source
        try:
            telemetry: dict[str, Any] | None = (await self.telemetry.get()).to_dict()
        except Exception:  # a sensor failing must not take /health down
            log.exception("telemetry sample failed")
            telemetry = None
        return report.model_copy(update={"hardware": self.hardware, "telemetry": telemetry})
