"""Load on demand, evict by policy: the node's models under one memory budget.

A request for a model the node has on disk (`catalog.py`) but has not loaded loads it, and
waits for it; a second request for the same model while it loads waits for the same load (one
load per model, ever at once). Room is made by `residency.make_room`: least recently used idle
models are unloaded first; a model with running, queued or admitted requests is never
unloaded; a model bigger than the whole budget is refused with the numbers.

A loaded model is unloaded once idle for its keep-alive (the last request's `keep_alive`, else
`serve --keep-alive` for models loaded on demand; models named at start or loaded over
/admin stay until evicted or a request sets one).

Every load and unload goes through `ModelResidency.load` and `unload`: `/admin/models/load` and
`/admin/models/unload` too, so the budget holds whoever asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from edgebox.api.errors import APIError
from edgebox.models import ModelNotAvailable, ResolvedModel
from edgebox.models.footprint import format_size, model_footprint
from edgebox.node.catalog import Available
from edgebox.node.residency import Resident, expired, make_room, parse_keep_alive
from edgebox.runtimes.base import EmbeddingRuntime, Runtime

if TYPE_CHECKING:
    from edgebox.node.state import NodeState

log = logging.getLogger(__name__)
ROOM_WAIT_S = 120.0  # how long a load waits for busy models to finish before 503
ROOM_POLL_S = 0.05
REAP_EVERY_S = 0.25
MAX_EVENTS = 50
BUDGET_SHARE = 0.8  # of system (or unified) memory, when `--memory-budget` is not given

R = TypeVar("R", Runtime, EmbeddingRuntime)


@dataclass(frozen=True)
class ModelEvent:
    """A load or unload, for `edgebox top` and /health."""

    at: float  # epoch seconds
    model: str
    event: str  # "loaded", "unloaded", "load_failed"
    reason: str  # "on-demand", "admin", "start", "evicted for X", "keep_alive expired"...
    seconds: float | None = None  # how long the load took

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None}


def default_budget(hardware: dict[str, Any] | None) -> int:
    """Bytes the node's models may take: `BUDGET_SHARE` of the memory the probe reports."""
    total = (hardware or {}).get("memory_total")
    if not isinstance(total, int) or total <= 0:
        import psutil

        total = psutil.virtual_memory().total
    return int(total * BUDGET_SHARE)


def open_runtime(
    state: NodeState, resolved: ResolvedModel, requested: str | None
) -> tuple[Runtime | EmbeddingRuntime, str]:
    """Blocking: a runtime for `resolved`, as `serve` opens one; (runtime, "runtime: why")."""
    from edgebox.runtimes.open import open_model

    if requested is None:  # as `serve`: an embedding model always takes ONNX Runtime
        requested = "auto" if resolved.format == "onnx" else state.default_runtime
    runtime, chosen = open_model(
        Path(resolved.path),
        name=resolved.alias,
        requested=requested,
        options=state.runtime_options,
        tokenizer=resolved.tokenizer,
    )
    return runtime, f"{chosen.runtime}: {chosen.reason}"


def resolve_spec(spec: str, alias: str | None) -> ResolvedModel:
    from edgebox.runtimes.open import resolve_model_or_dir

    return resolve_model_or_dir(spec, alias=alias)


class ModelResidency:
    """Which of a node's models are in memory, and loading/unloading them under the budget."""

    def __init__(self, state: NodeState, clock: Callable[[], float] = time.monotonic) -> None:
        self.state = state
        self.clock = clock
        self.needs: dict[str, int] = {}  # loaded model → bytes it was admitted for
        self.last_used: dict[str, float] = {}
        self.keep_alive: dict[str, float] = {}  # loaded model → seconds idle before unload
        self.leases: Counter[str] = Counter()  # requests admitted to a model, not yet submitted
        self.loads: dict[str, asyncio.Task[Runtime | EmbeddingRuntime]] = {}
        self.reserved: dict[str, int] = {}  # loads under way → bytes
        self.events: deque[ModelEvent] = deque(maxlen=MAX_EVENTS)
        self._room = asyncio.Lock()
        self._reaper: asyncio.Task[None] | None = None
        self._budget: int | None = state.memory_budget

    @property
    def budget(self) -> int:
        if self._budget is None:
            self._budget = default_budget(self.state.hardware)
        return self._budget

    def need_of(self, name: str) -> int:
        """Bytes a loaded model holds (what it was admitted for, else read from its file)."""
        if name not in self.needs:
            runtime = self.state.all_models()[name]
            slots = runtime.stats().slots or 1
            path = Path(runtime.info.path) if runtime.info.path else None
            try:
                footprint = model_footprint(path) if path and path.is_file() else None
            except OSError:
                footprint = None
            if footprint is None:
                self.needs[name] = runtime.info.size_bytes or 0
            else:
                self.needs[name] = footprint.need(runtime.info.n_ctx or 0, slots)
        return self.needs[name]

    def busy(self, name: str) -> bool:
        runtime = self.state.all_models().get(name)
        stats = runtime.stats() if runtime is not None else None
        return bool(self.leases[name] or (stats and (stats.running or stats.queued)))

    def residents(self) -> list[Resident]:
        now = self.clock()
        return [
            Resident(n, self.need_of(n), self.last_used.get(n, now), self.busy(n))
            for n in self.state.all_models()
        ]

    def used(self) -> int:
        return sum(r.need for r in self.residents()) + sum(self.reserved.values())

    def _event(self, model: str, event: str, reason: str, seconds: float | None = None) -> None:
        self.events.append(ModelEvent(time.time(), model, event, reason, seconds))
        log.info("%s %s (%s)", event, model, reason)

    # -- requests ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def use(
        self,
        name: str,
        pick: Callable[[NodeState, str], R],
        keep_alive: object = None,
        kind: str = "chat",
    ) -> AsyncIterator[R]:
        """The runtime serving `name` (loaded first if need be) for one request: it is not
        evicted until the request is submitted (then its running count keeps it)."""
        try:
            seconds = parse_keep_alive(keep_alive)
        except ValueError as exc:
            raise APIError(400, str(exc), param="keep_alive", code="invalid_value") from exc
        runtime = await self.acquire(name, pick, kind)
        self.leases[name] += 1
        try:
            yield runtime
        finally:
            self.leases[name] -= 1
            self.last_used[name] = self.clock()
            if seconds is not None:
                self.keep_alive[name] = seconds
            self._ensure_reaper()

    async def acquire(self, name: str, pick: Callable[[NodeState, str], R], kind: str) -> R:
        """`pick(state, name)` once `name` is loaded; loads it from the catalog if need be
        (only a model of `kind`). `pick` raises the 400 for a model of the wrong kind, the 404
        for an unknown one."""
        while name not in self.state.all_models():
            load = self.loads.get(name)
            if load is not None:
                with contextlib.suppress(Exception):  # its error is the starter's to report
                    await asyncio.shield(load)
                if name not in self.state.all_models() and load.done() and load.exception():
                    raise _load_failed(name, load.exception())
                continue
            entry = await self.state.catalog.find(name)
            if entry is None:
                raise self.not_found(name)
            if entry.kind != kind:
                raise _wrong_kind(name, entry.kind)
            await self.load_available(entry, reason="on-demand")
        self.last_used[name] = self.clock()
        return pick(self.state, name)

    def not_found(self, name: str) -> APIError:
        served = ", ".join(self.state.all_models()) or "none"
        on_disk = sorted(e.name for e in self.state.catalog.entries())
        loadable = ", ".join(n for n in on_disk if n not in self.state.all_models()) or "none"
        return APIError(
            404,
            f"the model '{name}' is not served here (served: {served}; on disk: {loadable})",
            param="model",
            code="model_not_found",
        )

    async def load_available(self, entry: Available, reason: str) -> Runtime | EmbeddingRuntime:
        """Load a catalog entry (or join the load of it under way)."""
        load = self.loads.get(entry.name)
        if load is None:
            keep = None if reason != "on-demand" else self.state.keep_alive_s
            load = asyncio.create_task(self._load(entry.spec, entry.name, None, reason, keep))
            self.loads[entry.name] = load
            load.add_done_callback(lambda _: self.loads.pop(entry.name, None))
        try:
            return await asyncio.shield(load)
        except APIError:
            raise
        except Exception as exc:
            raise _load_failed(entry.name, exc) from exc

    # -- loading and unloading --------------------------------------------------------------

    async def load(
        self, spec: str, alias: str | None, runtime: str | None, reason: str = "admin"
    ) -> Runtime | EmbeddingRuntime:
        """Resolve and open `spec` as `alias`, making room under the budget first. Raises what
        resolving and opening raise (ModelNotAvailable, BackendError, OSError...) or the
        APIError 503 for a model that does not fit."""
        name = alias or spec
        if name in self.loads:
            raise APIError(409, f"'{name}' is being loaded", param="model", code="model_loading")
        task = asyncio.create_task(self._load(spec, alias, runtime, reason, None))
        self.loads[name] = task
        task.add_done_callback(lambda _: self.loads.pop(name, None))
        return await asyncio.shield(task)

    async def _load(
        self,
        spec: str,
        alias: str | None,
        requested: str | None,
        reason: str,
        keep_alive: float | None,
    ) -> Runtime | EmbeddingRuntime:
        started = self.clock()
        resolved = await asyncio.to_thread(resolve_spec, spec, alias)
        name = resolved.alias
        footprint = await asyncio.to_thread(model_footprint, Path(resolved.path))
        options = self.state.runtime_options
        need = footprint.need(options.n_ctx, options.parallel or 1)
        await self._make_room(name, need)
        self.state.loading[name] = spec
        try:
            runtime, fast_path = await asyncio.to_thread(
                open_runtime, self.state, resolved, requested
            )
        except BaseException as exc:
            self._event(name, "load_failed", reason)
            log.warning("could not load %s: %s", name, exc)
            raise
        finally:
            self.state.loading.pop(name, None)
            self.reserved.pop(name, None)
        self.state.fast_paths[name] = fast_path
        self.needs[name] = need
        self.last_used[name] = self.clock()
        self.keep_alive[name] = keep_alive if keep_alive is not None else math.inf
        await self.state.add_model(name, runtime)
        kind = "embeddings" if runtime.capabilities.embeddings else "chat"
        kv = footprint.kv_bytes_per_token or None
        self.state.catalog.remember(
            Available(name, spec, kind, "served", footprint.weights, kv, footprint.context_length)
        )
        self._event(name, "loaded", reason, round(self.clock() - started, 3))
        self._ensure_reaper()
        return runtime

    async def _make_room(self, name: str, need: int) -> None:
        """Evict what the policy says, then reserve `need`; waits while busy models block."""
        deadline = self.clock() + ROOM_WAIT_S
        while True:
            async with self._room:
                room = make_room(need, self.budget, self.residents(), sum(self.reserved.values()))
                if room.too_big:
                    raise self._too_big(name, need)
                if room.fits:
                    for victim in room.evict:
                        await self.unload(victim, f"evicted for {name}")
                    self.reserved[name] = need
                    return
            if self.clock() > deadline:
                raise self._no_room(name, need, room.used)
            await asyncio.sleep(ROOM_POLL_S)

    def _too_big(self, name: str, need: int) -> APIError:
        return APIError(
            503,
            f"'{name}' needs about {format_size(need)} (weights + KV cache) and this node's "
            f"model memory budget is {format_size(self.budget)}; serve it on a bigger node "
            "or raise `edgebox serve --memory-budget`",
            param="model",
            type="server_error",
            code="model_too_large",
        )

    def _no_room(self, name: str, need: int, used: int) -> APIError:
        return APIError(
            503,
            f"'{name}' needs about {format_size(need)}; {format_size(used)} of the "
            f"{format_size(self.budget)} budget is held by models busy with requests",
            param="model",
            type="server_error",
            code="model_memory_busy",
            headers={"Retry-After": "5"},
        )

    async def unload(self, name: str, reason: str) -> bool:
        """Stop serving `name` and close it; False (and nothing done) while it is busy."""
        if name not in self.state.all_models() or self.busy(name):
            return False
        runtime = await self.state.remove_model(name)  # new requests load it again from here
        self.state.fast_paths.pop(name, None)
        for table in (self.needs, self.last_used, self.keep_alive):
            table.pop(name, None)
        await asyncio.to_thread(runtime.close)
        self._event(name, "unloaded", reason)
        return True

    # -- keep-alive -------------------------------------------------------------------------

    def _ensure_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._reap_forever())

    async def _reap_forever(self) -> None:
        while any(math.isfinite(k) for k in self.keep_alive.values()):
            await self.reap()
            await asyncio.sleep(REAP_EVERY_S)

    async def reap(self) -> list[str]:
        """Unload every idle model whose keep-alive ran out; the names unloaded."""
        now, done = self.clock(), []
        for name, keep in list(self.keep_alive.items()):
            last = self.last_used.get(name, now)
            if math.isfinite(keep) and expired(last, keep, self.busy(name), now):
                async with self._room:
                    if await self.unload(name, f"keep_alive {keep:g}s expired"):
                        done.append(name)
        return done

    def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()


def _wrong_kind(name: str, kind: str) -> APIError:
    use = "/v1/embeddings" if kind == "embeddings" else "/v1/chat/completions or /v1/completions"
    return APIError(
        400,
        f"'{name}' is {'an embedding' if kind == 'embeddings' else 'a chat'} model: use {use}",
        param="model",
        code="model_not_supported",
    )


def _load_failed(name: str, exc: BaseException | None) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ModelNotAvailable):
        return APIError(404, str(exc), param="model", code="model_not_found")
    return APIError(
        500,
        f"could not load '{name}' ({type(exc).__name__}); see the node's log",
        type="server_error",
        code="model_load_failed",
    )
