"""What `edgebox serve` parses, as one frozen value the agent starts a node from."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgebox.api.auth import NodeKeys
    from edgebox.router.config import RouterConfig
    from edgebox.runtimes.open import RuntimeOptions

SWITCHES = ("auto", "on", "off")  # --flash-attn and --cpu-extra-buffers


class AgentError(Exception):
    """A start-up failure the user can act on: the command prints it as one `error:` line."""


def default_threads() -> int:
    """Every core this process may run on (its affinity mask where the OS has one)."""
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return max(1, len(usable) if usable is not None else os.cpu_count() or 1)


@dataclass(frozen=True)
class NodeConfig:
    """Everything `edgebox serve` takes, checked: building one raises `AgentError` for a value
    no part of the node could use (before any model is fetched or opened)."""

    models: tuple[str, ...] = ()  # empty: the bundled chat model and the embedding model
    aliases: tuple[str, ...] = ()
    runtime: str = "auto"
    host: str = "127.0.0.1"
    port: int = 8080
    ctx: int = 4096
    parallel: int = 0
    threads: int | None = None
    max_queue: int = 64
    max_tokens: int | None = None  # output cap for requests that set none; None: the context
    temperature: float = 1.0  # for requests that set none
    request_timeout: float = 600.0
    prefill_chunk: int = 256
    flash_attn: str = "auto"
    kv_upload_mib: int = 1024
    responses_db: Path | None = None  # None: EDGEBOX_HOME/responses.sqlite
    responses_keep: int = 10_000
    responses_max_days: float = 30.0
    gpu_layers: int = -1
    embedding_batch: int = 32
    cpu_extra_buffers: str = "auto"
    api_key: str | None = None
    admin_key: str | None = None
    fleet_key: str | None = None
    pull_key: str | None = None  # opens /admin/models/pull only (what a router needs)
    key_max_inflight: int = 128
    access_log: bool = False
    mdns: bool = True
    tunnel: bool = True
    fleet: bool = False
    fleet_nodes: tuple[str, ...] = ()
    router_config: RouterConfig | None = None  # `--router-config`, read: only with --fleet
    trust_lan: bool = False
    memory_budget: int | None = None  # bytes for models; None: from the hardware probe
    keep_alive_s: float = 300.0  # idle seconds before a model loaded on demand is unloaded
    share_rate: float = 40e6  # blob bytes/s peers get while the node generates (0: unlimited)
    stream_interval: float = 0.016  # s between streamed tokens' hand-offs to the loop (0: each)
    allow_private_pulls: bool = False  # admin URL pulls may reach private addresses
    verbose: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "runtime", self.runtime.lower())
        object.__setattr__(self, "flash_attn", self.flash_attn.lower())
        object.__setattr__(self, "cpu_extra_buffers", self.cpu_extra_buffers.lower())
        if len(self.aliases) > len(self.model_specs):
            raise AgentError(
                f"{len(self.aliases)} --alias for {len(self.model_specs)} --model; "
                "give one alias per model"
            )
        if self.router_config is not None and not self.fleet:
            raise AgentError(
                "--router-config configures the router that --fleet adds; pass --fleet too"
            )
        if self.responses_keep < 1 or self.responses_max_days <= 0:
            raise AgentError("--responses-keep and --responses-max-days must be positive")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise AgentError(f"--max-tokens must be at least 1, not {self.max_tokens}")
        if not 0.0 <= self.temperature <= 2.0:
            raise AgentError(f"--temperature must be within 0 and 2, not {self.temperature}")
        if self.flash_attn not in SWITCHES:
            raise AgentError(f"--flash-attn must be auto, on or off, not {self.flash_attn!r}")
        if self.cpu_extra_buffers not in SWITCHES:
            raise AgentError(
                f"--cpu-extra-buffers must be auto, on or off, not {self.cpu_extra_buffers!r}"
            )

    @property
    def model_specs(self) -> tuple[str, ...]:
        from edgebox.models import DEFAULT_EMBEDDING_MODEL, DEFAULT_MODEL

        return self.models or (DEFAULT_MODEL, DEFAULT_EMBEDDING_MODEL)

    def runtime_options(self) -> RuntimeOptions:
        from edgebox.runtimes.open import RuntimeOptions

        return RuntimeOptions(
            n_ctx=self.ctx,
            parallel=self.parallel,
            n_threads=self.threads or default_threads(),
            prefill_chunk=self.prefill_chunk,
            max_queue=self.max_queue,
            flash_attn=self.flash_attn,
            request_timeout=self.request_timeout or None,
            gpu_layers=self.gpu_layers,
            verbose=self.verbose,
            embedding_batch=self.embedding_batch,
            cpu_extra_buffers=self.cpu_extra_buffers,
        )

    def keys(self) -> NodeKeys:
        from edgebox.api.auth import NodeKeys

        return NodeKeys(
            self.api_key or None,
            self.admin_key or None,
            self.fleet_key or None,
            self.key_max_inflight,
            pull_key=self.pull_key or None,
        )
