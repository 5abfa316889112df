"""The options of `edgebox serve`, one name each, so the command's signature reads as a list.

The names and help are the command's stable interface: the node service that `edgebox join`
installs runs `edgebox serve` with them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Model = Annotated[
    list[str] | None,
    typer.Option(
        "--model",
        "-m",
        help="Bundled name, path to a .gguf or .onnx, ORG/REPO:FILE.gguf, or a directory "
        "holding an MLX model or a TensorRT-LLM engine; repeat to serve several (default: "
        "smollm2-135m and the all-minilm-l6-v2 embedding model).",
    ),
]
RuntimeName = Annotated[
    str,
    typer.Option(
        "--runtime",
        help="auto (the fast path `edgebox doctor` shows), llamacpp, mlx, onnx or trtllm.",
        case_sensitive=False,
    ),
]
Alias = Annotated[
    list[str] | None,
    typer.Option(help="Model id shown in /v1/models; repeat in the order of --model."),
]
Host = Annotated[str, typer.Option(help="Address to listen on.")]
Port = Annotated[int, typer.Option(help="Port to listen on (0 picks a free one).")]
Ctx = Annotated[int, typer.Option(help="Context tokens per request.")]
Parallel = Annotated[
    int,
    typer.Option(
        help="Sequences decoded together (0: as many full-context KV caches as fit in a "
        "quarter of free memory, at most 8)."
    ),
]
Threads = Annotated[int | None, typer.Option(help="CPU threads (default: all usable cores).")]
MaxQueue = Annotated[int, typer.Option(help="Waiting requests before 429.")]
Temperature = Annotated[
    float,
    typer.Option(
        envvar="EDGEBOX_TEMPERATURE",
        min=0.0,
        max=2.0,
        help="Sampling temperature for requests that set none (like llama-server's --temp); "
        "agent CLIs (Codex, Claude Code) send none.",
    ),
]
MaxTokens = Annotated[
    int | None,
    typer.Option(
        envvar="EDGEBOX_MAX_TOKENS",
        min=1,
        help="Output tokens per request when the request sets no limit of its own (like "
        "llama-server's -n; default: until the context ends). A request's own max_tokens, "
        "max_completion_tokens or max_output_tokens wins.",
        show_default=False,
    ),
]
RequestTimeout = Annotated[
    float, typer.Option(help="Seconds a request may take, queue wait included (0: no limit).")
]
PrefillChunk = Annotated[
    int, typer.Option(help="Prompt tokens per step while other requests decode.")
]
FlashAttn = Annotated[
    str, typer.Option(help="Flash attention: auto, on or off.", case_sensitive=False)
]
KvUploadMib = Annotated[
    int, typer.Option(help="MiB of uploaded KV snapshots held for pending requests.")
]
ResponsesDb = Annotated[
    Path | None,
    typer.Option(
        help="SQLite file of stored /v1/responses (default: EDGEBOX_HOME/responses.sqlite)."
    ),
]
ResponsesKeep = Annotated[
    int, typer.Option(help="Stored /v1/responses kept, newest first (older ones are deleted).")
]
ResponsesMaxDays = Annotated[
    float, typer.Option(help="Days a stored /v1/responses response is kept.")
]
GpuLayers = Annotated[int, typer.Option(help="Layers to offload (-1: all that the build allows).")]
EmbeddingBatch = Annotated[int, typer.Option(help="Embedding inputs per ONNX Runtime call.")]
CpuExtraBuffers = Annotated[
    str,
    typer.Option(
        envvar="EDGEBOX_CPU_EXTRA_BUFFERS",
        help="llama.cpp's repacked/AMX CPU weights: auto (on unless a probe, cached per "
        "CPU and build, sees them fault), on or off.",
        case_sensitive=False,
    ),
]
ApiKey = Annotated[
    str | None,
    typer.Option(
        envvar="EDGEBOX_API_KEY",
        help="Require this bearer key on /v1 routes (inference).",
        show_default=False,
    ),
]
AdminKey = Annotated[
    str | None,
    typer.Option(
        envvar="EDGEBOX_ADMIN_KEY",
        help="Require this bearer key on /admin routes (load/unload, drain); without it "
        "/admin answers loopback clients only.",
        show_default=False,
    ),
]
FleetKey = Annotated[
    str | None,
    typer.Option(
        envvar="EDGEBOX_FLEET_KEY",
        help="The fleet's key: accepted on /v1 beside --api-key, and what --fleet sends "
        "to verified peers (default: --api-key).",
        show_default=False,
    ),
]
PullKey = Annotated[
    str | None,
    typer.Option(
        envvar="EDGEBOX_PULL_KEY",
        help="A key that opens /admin/models/pull only: give it to a router that brings "
        "models to this node (its --node-pull-key), instead of the admin key.",
        show_default=False,
    ),
]
KeyMaxInflight = Annotated[
    int, typer.Option(min=0, help="Requests one key may have in flight (0: no limit).")
]
AccessLog = Annotated[bool, typer.Option(help="Log each HTTP request.")]
Mdns = Annotated[bool, typer.Option(help="Advertise this node on the LAN (_edgebox._tcp, mDNS).")]
Tunnel = Annotated[
    bool, typer.Option(help="Keep the SSH tunnel to the hub relay up (once joined).")
]
Fleet = Annotated[
    bool,
    typer.Option(
        help="Route this port's chat/completions/embeddings across the fleet (this node, "
        "--fleet-node peers, and mDNS peers when --mdns)."
    ),
]
FleetNode = Annotated[
    list[str] | None,
    typer.Option("--fleet-node", help="A peer node's URL for --fleet (repeatable)."),
]
RouterConfigPath = Annotated[
    Path | None,
    typer.Option(
        "--router-config",
        help="Router TOML for --fleet (the `edgebox router --config` format): more nodes, "
        "cloud upstreams, weights, spend cap.",
    ),
]
TrustLan = Annotated[
    bool,
    typer.Option(
        help="With --fleet: send requests (never keys) to mDNS peers that are neither "
        "pinned nor known to the hub (a keyless LAN you trust).",
    ),
]
Verbose = Annotated[bool, typer.Option(help="Show llama.cpp's own log.")]
MemoryBudget = Annotated[
    str | None,
    typer.Option(
        envvar="EDGEBOX_MEMORY_BUDGET",
        help="Memory the node's models may take together, e.g. 12GiB or 600MB (default: 80% "
        "of the memory the hardware probe reports); least recently used idle models are "
        "unloaded to make room for a requested one.",
        show_default=False,
    ),
]
KeepAlive = Annotated[
    str,
    typer.Option(
        help="How long a model loaded on demand stays loaded after its last request "
        "(5m, 30s, 0 = unload at once, -1 = forever); a request's keep_alive overrides it.",
    ),
]
ShareRate = Annotated[
    float,
    typer.Option(
        metavar="MB/S",
        min=0,
        help="While the node generates, peers fetching model blobs from it share this many "
        "MB/s (0: unlimited); when nothing generates they get full speed.",
    ),
]
StreamInterval = Annotated[
    float,
    typer.Option(
        metavar="MS",
        min=0,
        max=1000,
        help="Streamed tokens go out at most once per this many milliseconds, those that came "
        "meanwhile together (the first token and the end at once; 0: every token on its own). "
        "With several streams at once, this times their number, up to 50. Fewer wake-ups per "
        "token leave the CPU to the model.",
    ),
]
AllowPrivatePulls = Annotated[
    bool,
    typer.Option(
        help="Let admin URL pulls reach loopback, private and link-local addresses (a model "
        "mirror on the LAN); refused by default.",
    ),
]
