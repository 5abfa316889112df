"""The `edgebox` command: a thin front that parses, calls into the packages, and prints."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn
from rich.table import Table

from edgebox import __version__

if TYPE_CHECKING:
    from edgebox.router.config import RouterConfig

app = typer.Typer(
    help="edgebox: serve quantised models on your own boxes behind an OpenAI-compatible API.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)


def _fail(message: str, code: int = 1) -> typer.Exit:
    # soft_wrap: a path longer than the terminal stays one string (copyable), not cut mid-word
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _default_threads() -> int:
    return max(
        1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )


def _log_with_timestamps() -> None:
    """A running node's warnings (heartbeats, mDNS, tunnel) say when they happened."""
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("edgebox.fleet.tunnel").setLevel(logging.INFO)  # its state changes


def _progress_factory(progress: Progress) -> Callable[[str, int], Callable[[int], None]]:
    def start(label: str, total: int) -> Callable[[int], None]:
        task = progress.add_task(label, total=total)
        return lambda n: progress.advance(task, n)

    return start


@app.command()
def serve(
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            help="Bundled name, path to a .gguf or .onnx, ORG/REPO:FILE.gguf, or a directory "
            "holding an MLX model or a TensorRT-LLM engine; repeat to serve several (default: "
            "smollm2-135m and the all-minilm-l6-v2 embedding model).",
        ),
    ] = None,
    runtime_name: Annotated[
        str,
        typer.Option(
            "--runtime",
            help="auto (the fast path `edgebox doctor` shows), llamacpp, mlx, onnx or trtllm.",
            case_sensitive=False,
        ),
    ] = "auto",
    alias: Annotated[
        list[str] | None,
        typer.Option(help="Model id shown in /v1/models; repeat in the order of --model."),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0 picks a free one).")] = 8080,
    ctx: Annotated[int, typer.Option(help="Context tokens per request.")] = 4096,
    parallel: Annotated[
        int,
        typer.Option(
            help="Sequences decoded together (0: as many full-context KV caches as fit in a "
            "quarter of free memory, at most 8)."
        ),
    ] = 0,
    threads: Annotated[
        int | None, typer.Option(help="CPU threads (default: all usable cores).")
    ] = None,
    max_queue: Annotated[int, typer.Option(help="Waiting requests before 429.")] = 64,
    request_timeout: Annotated[
        float,
        typer.Option(help="Seconds a request may take, queue wait included (0: no limit)."),
    ] = 600.0,
    prefill_chunk: Annotated[
        int, typer.Option(help="Prompt tokens per step while other requests decode.")
    ] = 256,
    flash_attn: Annotated[
        str, typer.Option(help="Flash attention: auto, on or off.", case_sensitive=False)
    ] = "auto",
    kv_upload_mib: Annotated[
        int, typer.Option(help="MiB of uploaded KV snapshots held for pending requests.")
    ] = 1024,
    gpu_layers: Annotated[
        int, typer.Option(help="Layers to offload (-1: all that the build allows).")
    ] = -1,
    embedding_batch: Annotated[
        int, typer.Option(help="Embedding inputs per ONNX Runtime call.")
    ] = 32,
    cpu_extra_buffers: Annotated[
        str,
        typer.Option(
            envvar="EDGEBOX_CPU_EXTRA_BUFFERS",
            help="llama.cpp's repacked/AMX CPU weights: auto (on unless a probe, cached per "
            "CPU and build, sees them fault), on or off.",
            case_sensitive=False,
        ),
    ] = "auto",
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="EDGEBOX_API_KEY",
            help="Require this bearer key on /v1 routes (inference).",
            show_default=False,
        ),
    ] = None,
    admin_key: Annotated[
        str | None,
        typer.Option(
            envvar="EDGEBOX_ADMIN_KEY",
            help="Require this bearer key on /admin routes (load/unload, drain); without it "
            "/admin answers loopback clients only.",
            show_default=False,
        ),
    ] = None,
    fleet_key: Annotated[
        str | None,
        typer.Option(
            envvar="EDGEBOX_FLEET_KEY",
            help="The fleet's key: accepted on /v1 beside --api-key, and what --fleet sends "
            "to verified peers (default: --api-key).",
            show_default=False,
        ),
    ] = None,
    key_max_inflight: Annotated[
        int, typer.Option(min=0, help="Requests one key may have in flight (0: no limit).")
    ] = 128,
    access_log: Annotated[bool, typer.Option(help="Log each HTTP request.")] = False,
    mdns: Annotated[
        bool, typer.Option(help="Advertise this node on the LAN (_edgebox._tcp, mDNS).")
    ] = True,
    tunnel: Annotated[
        bool, typer.Option(help="Keep the SSH tunnel to the hub relay up (once joined).")
    ] = True,
    fleet: Annotated[
        bool,
        typer.Option(
            help="Route this port's chat/completions/embeddings across the fleet (this node, "
            "--fleet-node peers, and mDNS peers when --mdns)."
        ),
    ] = False,
    fleet_node: Annotated[
        list[str] | None,
        typer.Option("--fleet-node", help="A peer node's URL for --fleet (repeatable)."),
    ] = None,
    router_config: Annotated[
        Path | None,
        typer.Option(
            "--router-config",
            help="Router TOML for --fleet (the `edgebox router --config` format): more nodes, "
            "cloud upstreams, weights, spend cap.",
        ),
    ] = None,
    trust_lan: Annotated[
        bool,
        typer.Option(
            help="With --fleet: send requests (never keys) to mDNS peers that are neither "
            "pinned nor known to the hub (a keyless LAN you trust).",
        ),
    ] = False,
    verbose: Annotated[bool, typer.Option(help="Show llama.cpp's own log.")] = False,
) -> None:
    """Serve models on a local OpenAI-compatible endpoint (default: the bundled SmolLM2-135M
    for chat and all-MiniLM-L6-v2 for /v1/embeddings)."""
    from typing import cast

    from edgebox.fleet.identity import IdentityError, load_identity

    _log_with_timestamps()
    from edgebox.models import (
        DEFAULT_EMBEDDING_MODEL,
        DEFAULT_MODEL,
        ModelNotAvailable,
        ResolvedModel,
    )
    from edgebox.node.kv_transfer import KVStore
    from edgebox.node.server import serve as run_server
    from edgebox.node.state import NodeState
    from edgebox.runtimes.base import BackendError, EmbeddingRuntime, Runtime
    from edgebox.runtimes.open import RuntimeOptions, open_model
    from edgebox.runtimes.open import resolve_model_or_dir as resolve_model

    specs = model or [DEFAULT_MODEL, DEFAULT_EMBEDDING_MODEL]
    aliases = alias or []
    if len(aliases) > len(specs):
        raise _fail(f"{len(aliases)} --alias for {len(specs)} --model; give one alias per model")
    fleet_config = _fleet_config(router_config, fleet)
    resolved_models: list[ResolvedModel] = []
    try:
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=True,
        ) as progress:
            for i, spec in enumerate(specs):
                name = aliases[i] if i < len(aliases) else None
                try:
                    resolved_models.append(
                        resolve_model(spec, alias=name, progress=_progress_factory(progress))
                    )
                except ModelNotAvailable as exc:
                    if model or spec != DEFAULT_EMBEDDING_MODEL:
                        raise
                    err.print(f"[yellow]not serving embeddings:[/] {exc}", highlight=False)
    except ModelNotAvailable as exc:
        raise _fail(str(exc)) from None
    ids = [m.alias for m in resolved_models]
    if len(set(ids)) < len(ids):
        raise _fail(f"two models would be served as the same id ({', '.join(ids)}); use --alias")
    if flash_attn.lower() not in ("auto", "on", "off"):
        raise _fail(f"--flash-attn must be auto, on or off, not {flash_attn!r}")
    if cpu_extra_buffers.lower() not in ("auto", "on", "off"):
        raise _fail(f"--cpu-extra-buffers must be auto, on or off, not {cpu_extra_buffers!r}")
    config = RuntimeOptions(
        n_ctx=ctx,
        parallel=parallel,
        n_threads=threads or _default_threads(),
        prefill_chunk=prefill_chunk,
        max_queue=max_queue,
        flash_attn=flash_attn.lower(),
        request_timeout=request_timeout or None,
        gpu_layers=gpu_layers,
        verbose=verbose,
        embedding_batch=embedding_batch,
        cpu_extra_buffers=cpu_extra_buffers.lower(),
    )
    chat: dict[str, Runtime] = {}
    embedders: dict[str, EmbeddingRuntime] = {}
    fast_paths: dict[str, str] = {}
    for resolved in resolved_models:
        err.print(
            f"loading {resolved.alias} from {resolved.path} …", highlight=False, soft_wrap=True
        )
        # --runtime names the chat models' runtime; an embedding model always takes ONNX Runtime
        requested = "auto" if resolved.format == "onnx" else runtime_name.lower()
        try:
            runtime, chosen = open_model(
                resolved.path,
                name=resolved.alias,
                requested=requested,
                options=config,
                tokenizer=resolved.tokenizer,
            )
        except BackendError as exc:
            for loaded in chat.values():
                loaded.close()
            for embedder in embedders.values():
                embedder.close()
            raise _fail(str(exc)) from None
        err.print(f"{resolved.alias}: runtime {chosen.runtime}: {chosen.reason}", highlight=False)
        fast_paths[resolved.alias] = f"{chosen.runtime}: {chosen.reason}"
        if runtime.capabilities.embeddings:
            embedders[resolved.alias] = cast(EmbeddingRuntime, runtime)
        else:
            chat[resolved.alias] = cast(Runtime, runtime)
    try:
        identity = load_identity()
    except IdentityError as exc:
        raise _fail(str(exc)) from None
    state = NodeState(
        chat,
        embedders=embedders,
        kv_store=KVStore(max_bytes=kv_upload_mib << 20),
        node=identity.public(),
        runtime_options=config,  # models loaded later over /admin/models/load take the same
        default_runtime=runtime_name.lower(),
        fast_paths=fast_paths,
    )
    advertiser = None
    if mdns:
        from edgebox.fleet.mdns import Advertiser
        from edgebox.hardware import probe

        accel = probe(measure=False).hw_class
        advertiser = Advertiser(identity, accelerator=accel, models=list(state.all_models()))

    from edgebox.fleet import local_nodes

    records: list[Path | None] = []  # its runtime record: tools here find it on any port

    def ready(url: str) -> None:
        records.append(local_nodes.register(url, host, identity.public()))
        for alias_, rt in chat.items():
            info = rt.info
            out.print(
                f"[bold green]edgebox[/] serving [bold]{alias_}[/] ({info.description}, "
                f"{info.n_ctx} ctx x {rt.stats().slots} slots, {config.n_threads} "
                f"threads) at [bold]{url}/v1[/]",
                highlight=False,
            )
        for alias_, emb in embedders.items():
            providers = ", ".join(emb.info.metadata.get("providers", []))
            out.print(
                f"[bold green]edgebox[/] serving [bold]{alias_}[/] ({emb.dimensions}-d "
                f"embeddings, {emb.info.n_ctx} tokens max, {providers}) at [bold]{url}/v1[/]",
                highlight=False,
            )
        auth = ' -H "Authorization: Bearer $EDGEBOX_API_KEY"' if api_key else ""
        if chat:
            first = next(iter(chat))
            body = json.dumps({"model": first, "messages": [{"role": "user", "content": "Hello!"}]})
            route = "chat/completions"
        else:
            body = json.dumps({"model": next(iter(embedders)), "input": "Hello!"})
            route = "embeddings"
        out.print(
            f"try:  curl -s {url}/v1/{route} -H 'Content-Type: application/json'{auth} -d '{body}'",
            highlight=False,
            soft_wrap=True,
        )
        notice = _extra_buffers_notice()
        if notice:
            out.print(f"[yellow]{notice}[/]", highlight=False)
        out.print("Ctrl-C to stop.", style="dim")

    from edgebox.api.auth import is_loopback
    from edgebox.fleet.heartbeat import api_endpoint, start_background

    beats = start_background(  # only once joined to a hub
        models=lambda: list(state.all_models()),
        api=api_endpoint(port, loopback_only=is_loopback(host)),
        peer_keys=fleet,  # a --fleet node routes to its peers with their own keys
    )
    tunnel_supervisor = None
    if tunnel:
        from edgebox.fleet.node_tunnel import start_background as start_tunnel

        tunnel_supervisor = start_tunnel()  # only once joined to a hub that runs a relay
    from edgebox.api.auth import NodeKeys
    from edgebox.fleet.join import member_api_key
    from edgebox.node.identity_api import NodeSigner

    # a joined node also takes the key its hub minted for it (routers logged in to the hub)
    keys = NodeKeys(
        api_key or None,
        admin_key or None,
        fleet_key or None,
        key_max_inflight,
        member_key=member_api_key(),
    )
    # uvicorn already shut down cleanly on Ctrl-C
    with contextlib.suppress(KeyboardInterrupt), local_nodes.removed_at_exit(records):
        run_server(
            state,
            host=host,
            port=port,
            keys=keys,
            signer=NodeSigner.from_key_file(identity.node_id, identity.ssh_private_key_path),
            trust_lan=trust_lan,
            access_log=access_log,
            on_ready=ready,
            advertiser=advertiser,
            fleet=list(fleet_node or []) if fleet else None,
            fleet_config=fleet_config,
            hub_peers=beats,
        )
    if beats:
        beats.stop()
    if tunnel_supervisor:
        tunnel_supervisor.stop()
    err.print("stopped.", style="dim")
    # Every runtime is closed by now. The interpreter's final garbage collection can still crash
    # inside native extensions (seen with mlx-lm on CPU), turning a clean stop into a segfault;
    # with nothing left to release, skip it.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _extra_buffers_notice() -> str | None:
    """The banner's line when llama.cpp's extra CPU buffers were turned off after a fault."""
    if "edgebox.runtimes.llamacpp.cpu_probe" not in sys.modules:  # no llama.cpp model loaded
        return None
    from edgebox.runtimes.llamacpp import cpu_probe

    return cpu_probe.fallback_notice(cpu_probe.current())


def _fleet_config(path: Path | None, fleet: bool) -> RouterConfig | None:
    """The router TOML for `serve --fleet --router-config`, read before any model loads."""
    if path is None:
        return None
    if not fleet:
        raise _fail("--router-config configures the router that --fleet adds; pass --fleet too")
    from edgebox.router.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        raise _fail(str(exc)) from None


@app.command("models")
def models_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """List the models that ship with edgebox and work offline."""
    from edgebox.models import BUNDLED, DEFAULT_EMBEDDING_MODEL, DEFAULT_MODEL

    defaults = (DEFAULT_MODEL, DEFAULT_EMBEDDING_MODEL)
    if as_json:
        out.print_json(
            data=[
                {
                    "name": m.alias,
                    "aliases": list(m.names),
                    "kind": m.kind,
                    "default": m.alias in defaults,
                    "package": m.package,
                    "summary": m.summary,
                }
                for m in BUNDLED.values()
            ]
        )
        return
    table = Table("name", "package", "summary")
    for m in BUNDLED.values():
        default = " (default)" if m.alias in defaults else ""
        table.add_row(m.alias + default, m.package, m.summary)
    out.print(table)


@app.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    measure: Annotated[
        bool,
        typer.Option(
            help="Measure memory bandwidth when the device is not in the known table, and probe "
            "llama.cpp's repacked/AMX CPU weights when no answer is cached."
        ),
    ] = True,
) -> None:
    """What this box is, which runtimes it can use, and how to enable the missing ones."""
    from rich.markup import escape

    from edgebox.hardware import probe
    from edgebox.runtimes.doctor import report

    result = report(probe(measure=measure), probe_cpu=measure)
    if as_json:
        out.print_json(data=result)
        return
    hw = result["hardware"]
    gib = 1 << 30
    out.print(
        f"[bold]{hw['hostname']}[/]: {hw['hw_class']}, {hw['cpu_model']} "
        f"({hw['cores_physical']} cores / {hw['cores_logical']} threads; "
        f"{' '.join(hw['simd']) or 'no SIMD flags read'})",
        highlight=False,
    )
    out.print(
        f"memory {hw['memory_total'] / gib:.1f} GiB, {hw['memory_available'] / gib:.1f} GiB free"
        f"{' (unified)' if hw['unified_memory'] else ''}; bandwidth {hw['bandwidth_gbps']} GB/s "
        f"({hw['bandwidth_source']})",
        highlight=False,
    )
    for accel in hw["accelerators"]:
        out.print(f"accelerator: {accel['kind']} {accel['name']}", highlight=False)
    table = Table("runtime", "usable", "detail", "to enable or speed up")
    for check in result["runtimes"]:
        table.add_row(
            check["runtime"], "yes" if check["usable"] else "no", escape(check["detail"]),
            escape(check["enable"] or ""),
        )  # fmt: skip
    out.print(table)
    paths = Table("model format", "runtime", "why")
    for path in result["fast_paths"]:
        paths.add_row(path["model_format"], path["runtime"] or "-", escape(path["reason"]))
    out.print(paths)
    extra = result["cpu_extra_buffers"]
    if extra:
        out.print(f"llama.cpp CPU extra buffers (repacked/AMX weights): {_extra_line(extra)}",
                  highlight=False)  # fmt: skip


def _extra_line(extra: dict[str, object]) -> str:
    state = {True: "on", False: "off"}.get(extra["enabled"], "?")  # type: ignore[call-overload]
    if extra["status"] == "not probed":
        first = "`edgebox serve` probes at its first start, `edgebox doctor` unless --no-measure"
        return f"{state} (not probed yet: {first})"
    if extra["fallback"]:
        return f"off (faulted: {extra['detail']}; --cpu-extra-buffers on to force)"
    detail = f": {extra['detail']}" if extra["detail"] else ""
    return f"{state} ({extra['status']}{detail})"


@app.command()
def version() -> None:
    """Print edgebox's version."""
    out.print(__version__)


from edgebox.commands import fleet as _fleet_cmd  # noqa: E402
from edgebox.commands import hub as _hub_cmd  # noqa: E402
from edgebox.commands import join as _join_cmd  # noqa: E402
from edgebox.commands import nodes as _nodes_commands  # noqa: E402
from edgebox.commands import provision as _provision_cmd  # noqa: E402
from edgebox.commands import router as _router_command  # noqa: E402
from edgebox.commands import ssh as _ssh_commands  # noqa: E402
from edgebox.commands import telemetry as _telemetry_cmd  # noqa: E402
from edgebox.commands import token as _token_cmd  # noqa: E402
from edgebox.commands import top as _top  # noqa: E402

_ssh_commands.register(app)
_telemetry_cmd.register(app)
for _commands in (_hub_cmd, _token_cmd, _join_cmd, _provision_cmd):
    _commands.register(app)
_nodes_commands.register(app)
_top.register(app)
_fleet_cmd.register(app)
_router_command.register(app)
from edgebox.commands import node_models as _node_models  # noqa: E402

_node_models.register(app)

if __name__ == "__main__":
    app()
