"""What the router knows about each node, where node addresses come from, and the poller.

A `NodeSource` yields node addresses (static `--node` URLs and config entries here; mDNS and
the hub in `sources.py`). The `NodePoller` reads each node's `/health` (models, running and
queued sequences, slots, per-sequence context) and `/metrics` (decode tokens/s, mean time a
request holds a slot) and keeps a `NodeStatus` each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol
from urllib.parse import urlsplit

import httpx
from prometheus_client.parser import text_string_to_metric_families

from edgebox.api.health import HealthReport
from edgebox.models.footprint import Footprint
from edgebox.runtimes.prefix_blocks import BLOCK_TOKENS

log = logging.getLogger("edgebox.router")

COOLDOWN_S = 5.0  # a node that failed a request is skipped this long, then probed back


@dataclass(frozen=True)
class ModelLoad:
    slots: int = 1
    running: int = 0
    queued: int = 0
    decode_tokens_per_s: float = 0.0
    n_ctx: int = 0  # tokens per sequence; 0: the node does not say
    mean_request_s: float = 0.0  # measured time a request holds a slot; 0: none finished yet
    model_sha256: str = ""  # the GGUF digest its prefix blocks' tokens come from; "": not said
    prefill_tokens_per_s: float = 0.0  # the node's measured prompt rate; 0: not measured


@dataclass(frozen=True)
class NodeAddress:
    name: str
    url: str  # http://host:port, without /v1
    prefill_tokens_per_s: float | None = None
    # configured, hub, verified, unverified or lan (see `router.trust`)
    trust: str = "configured"
    node_id: str | None = None  # the id an mDNS advert claims, checked by the identity proof
    keys: frozenset[str] = frozenset()  # key fingerprints that would verify it
    fallback_url: str | None = None  # a hub node's recorded address, if its LAN one fails
    key: str | None = field(default=None, repr=False)  # its own bearer key ([[nodes]] key_env)
    pull_key: str | None = field(default=None, repr=False)  # [[nodes]] pull_key_env
    note: str = ""  # why it is not trusted, for /health


@dataclass(frozen=True)
class NodeStatus:
    address: NodeAddress
    healthy: bool = False
    models: Mapping[str, ModelLoad] = field(default_factory=dict)
    cooldown_until: float = 0.0  # monotonic time (the router's `Observations` set it)
    checked_at: float = 0.0
    # per model: the chained block hashes of the prompts the node has cached
    prefix_blocks: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # models on its disk, not loaded (a request loads them): name → size in bytes (0: unknown)
    available: Mapping[str, int] = field(default_factory=dict)
    memory_free: int | None = None  # its model memory budget less what its models hold
    memory_budget: int | None = None  # bytes its models may take (None: not reported)
    draining: bool = False  # takes no new requests, still answers (serves its blobs)
    # what loading one of those costs beyond its file, where the node read the GGUF header:
    # name → weights, KV bytes per token, trained context (models/footprint.py)
    footprints: Mapping[str, Footprint] = field(default_factory=dict)
    load_ctx: int | None = None  # what a load on demand allocates: tokens per sequence
    load_slots: int | None = None  # ... x sequences (None: an older node, not said)

    @property
    def name(self) -> str:
        return self.address.name

    @property
    def routable(self) -> bool:
        """Whether requests may go there: anything but an unverified mDNS address."""
        return self.address.trust != "unverified"

    def usable(self, now: float) -> bool:
        return self.healthy and now >= self.cooldown_until


def with_inflight(node: NodeStatus, inflight: int) -> NodeStatus:
    """The node's load, counting at least the requests this router has open on it.

    Polls lag by up to the poll interval; the router's own count keeps a burst from piling
    onto the node that looked idle at the last poll."""
    if not inflight:
        return node
    models = {
        m: replace(load, running=max(load.running + load.queued, inflight) - load.queued)
        for m, load in node.models.items()
    }
    return replace(node, models=models)


class NodeSource(Protocol):
    """Somewhere node addresses come from (static list, mDNS, hub).

    A source may also have `async start()` / `async stop()`; the router calls them."""

    def addresses(self) -> Iterable[NodeAddress]: ...


def node_name(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc or url


class StaticNodes:
    """Nodes named on the command line or in the config file."""

    def __init__(self, entries: Iterable[NodeAddress]) -> None:
        self._entries = list(entries)

    @classmethod
    def from_urls(cls, urls: Iterable[str]) -> StaticNodes:
        return cls(NodeAddress(node_name(u), normalise_url(u)) for u in urls)

    def addresses(self) -> Iterable[NodeAddress]:
        return list(self._entries)


def normalise_url(url: str) -> str:
    url = url.rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    if "://" not in url:
        url = "http://" + url
    return url


_WANTED = (
    "edgebox_decode_tokens_per_second{",
    "edgebox_prefill_tokens_per_second{",
    "edgebox_request_service_seconds_sum{",
    "edgebox_request_service_seconds_count{",
)


@dataclass(frozen=True)
class ModelFigures:
    decode_tokens_per_s: float = 0.0
    mean_request_s: float = 0.0
    prefill_tokens_per_s: float = 0.0


def parse_metrics(text: str) -> dict[str, ModelFigures]:
    """Decode and prefill tokens/s and mean slot-holding time per model from a node's
    Prometheus text."""
    rates: dict[str, float] = {}
    prefill: dict[str, float] = {}
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    # Parse only the samples used here: a node's full text is ~100 families (several ms).
    wanted = "\n".join(line for line in text.splitlines() if line.startswith(_WANTED))
    for family in text_string_to_metric_families(wanted):
        for sample in family.samples:
            model = sample.labels.get("model", "")
            if sample.name == "edgebox_decode_tokens_per_second":
                rates[model] = float(sample.value)
            elif sample.name == "edgebox_prefill_tokens_per_second":
                prefill[model] = float(sample.value)
            elif sample.name == "edgebox_request_service_seconds_sum":
                sums[model] = float(sample.value)
            elif sample.name == "edgebox_request_service_seconds_count":
                counts[model] = float(sample.value)
    return {
        m: ModelFigures(
            rates.get(m, 0.0),
            sums.get(m, 0.0) / c if (c := counts.get(m)) else 0.0,
            prefill.get(m, 0.0),
        )
        for m in set(rates) | set(counts) | set(prefill)
    }


def status_from_health(
    address: NodeAddress,
    health: HealthReport | Mapping[str, object],
    figures: Mapping[str, ModelFigures],
    now: float,
) -> NodeStatus:
    """A node's status from its /health report (any version) and its /metrics figures."""
    report = health if isinstance(health, HealthReport) else HealthReport.parse(health)
    models: dict[str, ModelLoad] = {}
    blocks: dict[str, frozenset[str]] = {}
    for alias, load in report.models.items():
        seen = figures.get(alias, ModelFigures())
        # only blocks of this router's size compare with its own hashes
        cached = load.blocks_at(BLOCK_TOKENS)
        if cached:
            blocks[alias] = cached
        models[alias] = ModelLoad(
            slots=load.slots or 1,
            running=load.running,
            queued=load.queued,
            decode_tokens_per_s=seen.decode_tokens_per_s,
            n_ctx=load.n_ctx or 0,
            mean_request_s=seen.mean_request_s,
            model_sha256=(load.model_sha256 or "") if cached else "",
            prefill_tokens_per_s=seen.prefill_tokens_per_s,
        )
    available = {m.name: m.size_bytes or 0 for m in report.available}
    footprints = {
        m.name: Footprint(m.size_bytes or 0, m.kv_bytes_per_token or 0, m.context_length)
        for m in report.available
        if m.kv_bytes_per_token
    }
    free = None
    if report.memory_budget is not None and report.memory_used is not None:
        free = report.memory_budget - report.memory_used
    return NodeStatus(
        address,
        report.ok,
        models,
        checked_at=now,
        prefix_blocks=blocks,
        available=available,
        memory_free=free,
        memory_budget=report.memory_budget,
        draining=report.status == "draining",
        footprints=footprints,
        load_ctx=report.load_ctx,
        load_slots=report.load_slots,
    )


class Every:
    """Runs an async step every `interval` seconds (after a first wait) until stopped."""

    def __init__(self, interval: float, step: Callable[[], Awaitable[None]]):
        self.interval = interval
        self.step = step
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(self.interval)
                await self.step()

        self._task = asyncio.create_task(loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class NodePoller:
    """Keeps a `NodeStatus` per node from its sources, polled every `interval` seconds."""

    def __init__(
        self,
        sources: list[NodeSource],
        client: httpx.AsyncClient,
        interval: float,
        *,
        trust_lan: bool = False,
    ):
        from edgebox.router.trust import Verifier

        self.sources = sources
        self.client = client
        self.interval = interval
        self.verifier = Verifier(client, trust_lan=trust_lan)
        self.status: dict[str, NodeStatus] = {}
        self.after_poll: list[Callable[[], Awaitable[None]]] = []  # run after each poll
        self._every = Every(interval, self.poll_once)

    async def poll_once(self) -> None:
        found = [a for source in self.sources for a in source.addresses()]
        # Unverified (mDNS) addresses prove who they are first; a hub node whose LAN address
        # fails keeps its hub address.
        resolved = await asyncio.gather(*(self.verifier.resolve(a) for a in found))
        addresses: dict[str, NodeAddress] = {}
        urls: set[str] = set()
        for a in resolved:  # the first naming a URL or name wins (static, then hub, then mDNS)
            if a.url not in urls and a.name not in addresses:
                addresses[a.name] = a
                urls.add(a.url)
        for gone in set(self.status) - set(addresses):
            del self.status[gone]
        results = await asyncio.gather(*(self._probe(a) for a in addresses.values()))
        for status in results:
            self.status[status.name] = status
        for hook in self.after_poll:
            await hook()

    async def _probe(self, address: NodeAddress) -> NodeStatus:
        now = time.monotonic()
        try:
            health = await self.client.get(address.url + "/health", timeout=2.0)
            health.raise_for_status()
            metrics = await self.client.get(address.url + "/metrics", timeout=2.0)
            figures = parse_metrics(metrics.text) if metrics.status_code == 200 else {}
            return status_from_health(address, health.json(), figures, now)
        except (httpx.HTTPError, ValueError) as exc:
            log.info("node %s is unreachable: %s", address.name, type(exc).__name__)
            return NodeStatus(address, healthy=False, checked_at=now)

    def start(self) -> None:
        self._every.start()

    async def stop(self) -> None:
        await self._every.stop()
