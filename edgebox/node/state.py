"""What one running node holds: its runtimes by alias, metrics and limits."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from edgebox import __version__
from edgebox.hardware.probe import probe
from edgebox.hardware.telemetry import CachedTelemetry
from edgebox.node.kv_transfer import KVStore
from edgebox.node.metrics import NodeMetrics
from edgebox.runtimes.base import EmbeddingRuntime, Runtime

DEFAULT_MAX_BODY = 16 * 1024 * 1024
log = logging.getLogger(__name__)


@dataclass
class NodeState:
    runtimes: dict[str, Runtime]  # chat and completion models
    embedders: dict[str, EmbeddingRuntime] = field(default_factory=dict)
    max_body: int = DEFAULT_MAX_BODY
    request_timeout: float | None = None  # per-request override of the runtimes' default
    kv_store: KVStore = field(default_factory=KVStore)
    started: float = field(default_factory=time.time)
    telemetry: CachedTelemetry = field(default_factory=CachedTelemetry)
    hardware: dict[str, Any] | None = None  # the probe profile, taken on first /health
    node: dict[str, Any] | None = None  # this node's public identity (id, name, host key)
    draining: bool = False  # set by POST /admin/drain: new generation requests get 503
    metrics: NodeMetrics = field(init=False)
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        both = set(self.runtimes) & set(self.embedders)
        if both:
            raise ValueError(f"model ids must be unique; served twice: {', '.join(sorted(both))}")
        self.metrics = NodeMetrics(lambda: {a: r.stats() for a, r in self.all_models().items()})
        # Changes when the served models or edgebox change, as OpenAI's system_fingerprint does.
        digest = hashlib.sha256(__version__.encode())
        for alias, runtime in sorted(self.all_models().items()):
            digest.update(f"{alias}={runtime.info.path}:{runtime.info.size_bytes}".encode())
        self.fingerprint = "fp_" + digest.hexdigest()[:12]

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
            "meta": {
                "runtime": type(runtime).__name__,
                "architecture": info.architecture,
                "context_length": info.n_ctx,
                "context_length_trained": info.n_ctx_train,
                "parameters": info.n_params,
                "size_bytes": info.size_bytes,
                "description": info.description,
                "chat_template": info.metadata.get("chat_template"),
                "capabilities": [k for k, v in vars(runtime.capabilities).items() if v],
            },
        }
        if alias in self.embedders:
            card["meta"]["dimensions"] = self.embedders[alias].dimensions
            card["meta"]["providers"] = info.metadata.get("providers")
        return card

    def health(self) -> dict[str, Any]:
        """What /health reports without touching the hardware: status, version, models, load."""
        models, load_models = {}, {}
        for alias, runtime in self.all_models().items():
            stats = runtime.stats()
            models[alias] = {
                "slots": stats.slots,
                "running": stats.running,
                "queued": stats.queued,
                "n_ctx": runtime.info.n_ctx,  # tokens one sequence may hold
                "size_bytes": runtime.info.size_bytes,  # bounds decode: bandwidth / size
            }
            if hasattr(runtime, "prefix_cache"):  # block hashes of cached prompts, for routers
                models[alias].update(runtime.prefix_cache())
            load_models[alias] = {"active": stats.running, "queued": stats.queued}
        return {
            "status": "draining" if self.draining else "ok",
            "version": __version__,
            "uptime_s": round(time.time() - self.started, 1),
            "models": models,
            "load": {
                "active": sum(m["active"] for m in load_models.values()),
                "queued": sum(m["queued"] for m in load_models.values()),
                "models": load_models,
            },
            **({"node": self.node} if self.node is not None else {}),
        }

    def load(self) -> dict[str, int]:
        """Requests running and queued over all models."""
        stats = [r.stats() for r in self.runtimes.values()]
        return {"running": sum(s.running for s in stats), "queued": sum(s.queued for s in stats)}

    async def full_health(self) -> dict[str, Any]:
        """`health()` plus the hardware profile (probed once) and a telemetry sample at most a
        second old; both are taken off the event loop."""
        report = self.health()
        if self.hardware is None:
            # No bandwidth measurement: it would copy 512 MiB next to a serving model.
            profile = await asyncio.to_thread(probe, measure=False)
            self.hardware = profile.to_dict()
        report["hardware"] = self.hardware
        try:
            report["telemetry"] = (await self.telemetry.get()).to_dict()
        except Exception:  # a sensor failing must not take /health down
            log.exception("telemetry sample failed")
            report["telemetry"] = None
        return report
