"""`edgebox serve`: parse the options into a `NodeConfig` and run a `NodeAgent` on it."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from edgebox.commands import _serveopts as opt
from edgebox.commands._hubopts import fail

if TYPE_CHECKING:
    from edgebox.agent import NodeConfig
    from edgebox.router.config import RouterConfig

err = Console(stderr=True)


def serve(
    model: opt.Model = None,
    runtime_name: opt.RuntimeName = "auto",
    alias: opt.Alias = None,
    host: opt.Host = "127.0.0.1",
    port: opt.Port = 8080,
    ctx: opt.Ctx = 4096,
    parallel: opt.Parallel = 0,
    threads: opt.Threads = None,
    max_queue: opt.MaxQueue = 64,
    max_tokens: opt.MaxTokens = None,
    temperature: opt.Temperature = 1.0,
    request_timeout: opt.RequestTimeout = 600.0,
    prefill_chunk: opt.PrefillChunk = 256,
    flash_attn: opt.FlashAttn = "auto",
    kv_upload_mib: opt.KvUploadMib = 1024,
    responses_db: opt.ResponsesDb = None,
    responses_keep: opt.ResponsesKeep = 10_000,
    responses_max_days: opt.ResponsesMaxDays = 30.0,
    gpu_layers: opt.GpuLayers = -1,
    embedding_batch: opt.EmbeddingBatch = 32,
    cpu_extra_buffers: opt.CpuExtraBuffers = "auto",
    api_key: opt.ApiKey = None,
    admin_key: opt.AdminKey = None,
    fleet_key: opt.FleetKey = None,
    pull_key: opt.PullKey = None,
    key_max_inflight: opt.KeyMaxInflight = 128,
    access_log: opt.AccessLog = False,
    mdns: opt.Mdns = True,
    tunnel: opt.Tunnel = True,
    fleet: opt.Fleet = False,
    fleet_node: opt.FleetNode = None,
    router_config: opt.RouterConfigPath = None,
    trust_lan: opt.TrustLan = False,
    memory_budget: opt.MemoryBudget = None,
    keep_alive: opt.KeepAlive = "5m",
    share_rate: opt.ShareRate = 40.0,
    stream_interval: opt.StreamInterval = 16.0,
    allow_private_pulls: opt.AllowPrivatePulls = False,
    verbose: opt.Verbose = False,
) -> None:
    """Serve models on a local OpenAI-compatible endpoint (default: the bundled SmolLM2-135M
    for chat and all-MiniLM-L6-v2 for /v1/embeddings)."""
    options = dict(locals())  # the parameters, by name: NodeConfig's fields, nearly all
    _log_with_timestamps()
    run_node(node_config(options))


def node_config(options: dict[str, Any]) -> NodeConfig:
    """The command line as a checked `NodeConfig` (the router TOML read before any model loads)."""
    from edgebox.agent import AgentError, NodeConfig

    lists = {"model": "models", "alias": "aliases", "fleet_node": "fleet_nodes"}
    values: dict[str, Any] = {
        lists.get(k, k): tuple(v or ()) if k in lists else v for k, v in options.items()
    }
    values["runtime"] = values.pop("runtime_name")
    values["memory_budget"], values["keep_alive_s"] = _residency(
        values.pop("memory_budget", None), values.pop("keep_alive", "5m")
    )
    values["share_rate"] = values.get("share_rate", 40.0) * 1e6  # MB/s → bytes/s
    values["stream_interval"] = values.get("stream_interval", 16.0) / 1000  # ms → s
    values["router_config"] = _router_config(options["router_config"], options["fleet"])
    try:
        return NodeConfig(**values)
    except AgentError as exc:
        raise fail(str(exc)) from None


def _residency(budget: str | None, keep_alive: str) -> tuple[int | None, float]:
    """`--memory-budget` in bytes (None: from the hardware probe) and `--keep-alive` in s."""
    from edgebox.models.footprint import parse_size
    from edgebox.node.residency import parse_keep_alive

    try:
        size = parse_size(budget) if budget is not None else None
    except ValueError as exc:
        raise fail(f"--memory-budget: {exc}") from None
    try:
        seconds = parse_keep_alive(keep_alive)
    except ValueError as exc:
        raise fail(f"--keep-alive: {exc}") from None
    return size, 300.0 if seconds is None else seconds


def run_node(config: NodeConfig) -> None:
    """Serve until Ctrl-C or SIGTERM, then end the process at once (see below)."""
    from edgebox.agent import AgentError, NodeAgent

    try:
        with contextlib.suppress(KeyboardInterrupt):  # uvicorn already shut down cleanly
            NodeAgent(config, err=err).run()
    except AgentError as exc:
        raise fail(str(exc)) from None
    err.print("stopped.", style="dim")
    # Every runtime is closed by now. The interpreter's final garbage collection can still crash
    # inside native extensions (seen with mlx-lm on CPU), turning a clean stop into a segfault;
    # with nothing left to release, skip it.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _log_with_timestamps() -> None:
    """A running node's warnings (heartbeats, mDNS, tunnel) say when they happened."""
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("edgebox.fleet.tunnel").setLevel(logging.INFO)  # its state changes


def _router_config(path: Path | None, fleet: bool) -> RouterConfig | None:
    """The router TOML for `serve --fleet --router-config`."""
    if path is None:
        return None
    if not fleet:
        raise fail("--router-config configures the router that --fleet adds; pass --fleet too")
    from edgebox.router.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        raise fail(str(exc)) from None


def register(app: typer.Typer) -> None:
    app.command()(serve)
