"""A node's `/health` answer as one frozen, versioned type: the node builds it, and the router,
the TUI and `edgebox nodes add` read it through `HealthReport.parse`.

Routers and dashboards poll nodes of other edgebox versions, so parsing is tolerant both ways:
unknown fields are ignored (a newer node), missing ones take their defaults (an older node:
`hardware`, `telemetry` and `load` came after `models`, `health_version` after all of them),
and a field of the wrong type is dropped and defaulted rather than failing the whole report.

`health_version` versions this layout (`version` stays the node's edgebox version, as before).
A change that renames or retypes a field raises `HEALTH_VERSION`; adding a field does not.

The node dumps with `to_json()`: only the fields it set, so the JSON is what it was before the
type existed (`hardware` and `telemetry` are the probe's and the sampler's own dicts, passed
through untouched).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

HEALTH_VERSION = 1

R = TypeVar("R", bound=BaseModel)


class _Part(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class ModelHealth(_Part):
    """One served model: its load, its limits, and what it has cached (for routers)."""

    slots: int | None = None  # sequences it runs at once; None: not said
    # requests generating now (older reports and hub entries call it `active`)
    running: int = Field(0, validation_alias=AliasChoices("running", "active"))
    queued: int = 0
    n_ctx: int | None = None  # tokens one sequence may hold
    size_bytes: int | None = None  # the weights; bounds decode: bandwidth / size
    # what a load of it costs beyond the weights (models/footprint.py), for `edgebox deploy`
    kv_bytes_per_token: int | None = None
    context_length: int | None = None  # the trained context, which caps a load's
    runtime: str | None = None  # the runtime class serving it
    fast_path: str | None = None  # "runtime: why it was chosen"
    cpu_extra_buffers: str | None = None  # llama.cpp: repacked/AMX weights on or off, and why
    # the prefix cache: chained block hashes of cached prompts, at `block_tokens` per block,
    # of the tokens of the GGUF whose digest is `model_sha256`
    block_tokens: int | None = None
    prefix_blocks: tuple[str, ...] = ()
    model_sha256: str | None = None
    status: str | None = None  # "ok", or "degraded" after an engine fault (see `reason`)
    reason: str | None = None
    # speed of light: the node's memory bandwidth ÷ size_bytes (a dense model at batch 1 reads
    # every weight once per token); decode_sol_pct is the recent decode rate as a share of it
    # (above 100 when batched streams share each read of the weights)
    decode_tokens_per_s: float | None = None
    speed_of_light_tok_s: float | None = None
    decode_sol_pct: float | None = None

    def blocks_at(self, block_tokens: int) -> frozenset[str]:
        """The cached prefix blocks, if reported at `block_tokens` per block; else none."""
        return frozenset(self.prefix_blocks) if self.block_tokens == block_tokens else frozenset()


class ModelLoad(_Part):
    active: int = 0
    queued: int = 0


class Load(_Part):
    """Requests running and queued over all models, and per model."""

    active: int = 0
    queued: int = 0
    models: dict[str, ModelLoad] = Field(default_factory=dict)
    tokens_per_s: float | None = None  # not sent by nodes today; read when present


class AvailableModel(_Part):
    """A model on the node's disk, not loaded: a request for it loads it there."""

    name: str
    kind: str = "chat"  # or "embeddings"
    source: str | None = None  # "bundled", "store", "huggingface", "served" (loaded before)
    size_bytes: int | None = None
    kv_bytes_per_token: int | None = None  # from its GGUF header, where the node read it
    context_length: int | None = None  # trained


class ModelEvent(_Part):
    """A load or unload on the node (newest last)."""

    at: float = 0.0  # epoch seconds
    model: str = ""
    event: str = ""  # "loaded", "unloaded", "load_failed"
    reason: str | None = None  # "on-demand", "evicted for X", "keep_alive 300s expired"...
    seconds: float | None = None  # how long a load took


class NodeIdentity(BaseModel):
    """The node's public identity (fleet/identity.py `public()`): no key material."""

    model_config = ConfigDict(frozen=True, extra="allow")  # passed through whole

    id: str | None = None
    name: str | None = None
    ssh_host_key_fingerprint: str | None = None


class MemoryBandwidth(_Part):
    """The bandwidth that bounds the node's decode, measured once per machine (CPU) or read
    from NVML (GPU); see `hardware.bandwidth`."""

    gbps: float | None = None
    source: str | None = None  # "measured:copy", "nvml", "spec:<device>"
    device: str | None = None


class HealthReport(_Part):
    health_version: int = 0  # 0: a node from before the report was versioned
    status: str | None = None  # "ok", "draining" or "degraded"; None: not said
    version: str | None = None  # the node's edgebox version
    uptime_s: float | None = None
    models: dict[str, ModelHealth] = Field(default_factory=dict)
    load: Load | None = None
    node: NodeIdentity | None = None
    hardware: dict[str, Any] | None = None  # the hardware probe's profile
    telemetry: dict[str, Any] | None = None  # the latest telemetry sample
    # load on demand: models on disk but not loaded, loads under way, the memory they share
    available: tuple[AvailableModel, ...] = ()
    loading: tuple[str, ...] = ()
    memory_budget: int | None = None  # bytes the node's models may take
    memory_used: int | None = None  # bytes its loaded models (and loads under way) hold
    # what a load on demand allocates: tokens per sequence x sequences (`--ctx`, `--parallel`)
    load_ctx: int | None = None
    load_slots: int | None = None
    model_events: tuple[ModelEvent, ...] = ()
    max_tokens: int | None = None  # `serve --max-tokens`: output cap where a request sets none

    @field_validator("available", mode="before")
    @classmethod
    def _available(cls, raw: Any) -> tuple[AvailableModel, ...]:
        return _lenient_list(AvailableModel, raw)

    @field_validator("model_events", mode="before")
    @classmethod
    def _events(cls, raw: Any) -> tuple[ModelEvent, ...]:
        return _lenient_list(ModelEvent, raw)

    bandwidth: MemoryBandwidth | None = None  # absent until measured, and from older nodes

    @field_validator("models", mode="before")
    @classmethod
    def _models_by_name(cls, raw: Any) -> dict[str, Any]:
        return {name: _lenient(ModelHealth, entry) for name, entry in models_by_name(raw).items()}

    @field_validator("load", mode="before")
    @classmethod
    def _load(cls, raw: Any) -> Load | None:
        if isinstance(raw, Load):
            return raw
        if not isinstance(raw, Mapping):
            return None
        per_model = raw.get("models")
        entries = per_model.items() if isinstance(per_model, Mapping) else ()
        models = {str(k): _lenient(ModelLoad, v) for k, v in entries}
        return _lenient(Load, {**raw, "models": models})

    @field_validator("bandwidth", mode="before")
    @classmethod
    def _bandwidth(cls, raw: Any) -> MemoryBandwidth | None:
        if isinstance(raw, MemoryBandwidth):
            return raw
        return _lenient(MemoryBandwidth, raw) if isinstance(raw, Mapping) else None

    @field_validator("node", mode="before")
    @classmethod
    def _node(cls, raw: Any) -> NodeIdentity | None:
        return _lenient(NodeIdentity, raw) if isinstance(raw, Mapping | BaseModel) else None

    @property
    def ok(self) -> bool:
        """Whether the node takes new requests (not draining, not degraded)."""
        return self.status == "ok"

    @classmethod
    def parse(cls, data: object) -> HealthReport:
        """A report from any node's decoded /health JSON; never raises on its content."""
        return _lenient(cls, data)

    def to_json(self) -> dict[str, Any]:
        """The JSON the node answers: the fields it set, under their own names."""
        return self.model_dump(mode="json", exclude_unset=True)


def models_by_name(raw: Any) -> dict[str, Any]:
    """Models as name → figures, from `{"m": {...}}`, `["m", ...]` or `[{"name": "m"}, ...]`
    (older nodes and the hub's node list send the list forms)."""
    if isinstance(raw, Mapping):
        return {str(k): v if isinstance(v, Mapping | BaseModel) else {} for k, v in raw.items()}
    out: dict[str, Any] = {}
    if isinstance(raw, list):
        for item in raw:
            if isinstance(item, str):
                out[item] = {}
            elif isinstance(item, Mapping) and (name := item.get("name") or item.get("id")):
                out[str(name)] = item
    return out


def _lenient_list(cls: type[R], raw: object) -> tuple[R, ...]:
    """The entries of `raw` that parse as `cls`; the others are dropped."""
    out = []
    for item in raw if isinstance(raw, list | tuple) else ():
        try:
            out.append(cls.model_validate(item))
        except ValidationError:
            continue
    return tuple(out)


def _lenient(cls: type[R], raw: object) -> R:
    """`cls` from `raw`, dropping (so defaulting) each top-level field that does not validate."""
    if isinstance(raw, BaseModel):
        raw = raw.model_dump(exclude_unset=True, by_alias=True)
    data = {str(k): v for k, v in raw.items()} if isinstance(raw, Mapping) else {}
    while True:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            bad = {str(e["loc"][0]) for e in exc.errors() if e["loc"]} & data.keys()
            if not bad:
                raise
            for key in bad:
                del data[key]
