"""Bridge from a runtime's engine thread to asyncio: submit n choices, iterate their events."""

from __future__ import annotations

import asyncio
import collections
import math
import threading
import weakref
from collections.abc import AsyncIterator, Callable

from edgebox.api.errors import APIError
from edgebox.node.metrics import NodeMetrics, now
from edgebox.node.prompts import GenerationPlan
from edgebox.node.recent import RequestRecord
from edgebox.node.refusals import queue_full_error
from edgebox.runtimes.base import (
    ContextLengthError,
    Event,
    FinishEvent,
    GrammarError,
    KVMismatchError,
    KVSnapshot,
    QueueFullError,
    RequestHandle,
    Runtime,
    SamplingError,
    TokenEvent,
)

WAKER_IDLE_S = 1.0  # how often an idle waker checks whether its loop has closed
# Streamed tokens reach the event loop at most this often (`serve --stream-interval`; see
# EventInbox): about one display frame, so nobody watching the text sees the difference.
STREAM_INTERVAL_S = 0.016
LAZY_BATCH = 32  # a non-streamed request's tokens wake the loop this many at a time
# With several streamed requests the interval grows with their number, up to this (never below
# the interval asked for): n streams then wake the loop and their clients about as often in all
# as one does. At four streams, 16 ms each cost the node's other threads 306 µs of CPU per
# token and 50 ms 111 µs, out of cores that run the model (benchmarks/bench_thread_cost.py).
STREAM_INTERVAL_MAX_S = 0.05


class LoopWaker:
    """Wakes one event loop for engine threads, from a thread of its own.

    Writing the loop's self-pipe (`call_soon_threadsafe`) drops the GIL, the loop takes it to
    run the woken request, and the engine thread then waits for the GIL before it can start its
    next `llama_decode`: the loop's work per token sat on the decode's critical path. Here the
    engine only flags the inbox and goes back to `llama_decode` (which drops the GIL), and this
    thread does the waking while the model runs. Inboxes flagged together share one wake-up."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # the streamed inboxes with an interval the loop serves now (loop thread only)
        self.streaming: weakref.WeakSet[EventInbox] = weakref.WeakSet()
        self._due: list[EventInbox] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._run, name="loop-waker", daemon=True).start()

    def wake(self, inbox: EventInbox) -> None:
        """Any thread: have `inbox` looked at by its loop soon."""
        with self._cond:
            self._due.append(inbox)
            if len(self._due) == 1:  # the inboxes flagged in one step share one notify
                self._cond.notify()

    def _run(self) -> None:
        while not self._loop.is_closed():
            with self._cond:
                if not self._due:
                    self._cond.wait(WAKER_IDLE_S)
                due, self._due = self._due, []
            if not due:
                continue
            try:
                self._loop.call_soon_threadsafe(_wake_all, due)
            except RuntimeError:  # the loop closed: the server is shutting down
                return


def _wake_all(inboxes: list[EventInbox]) -> None:
    for inbox in inboxes:
        inbox.wake()


_wakers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopWaker] = (
    weakref.WeakKeyDictionary()
)
_wakers_lock = threading.Lock()


def loop_waker(loop: asyncio.AbstractEventLoop) -> LoopWaker:
    """The loop's one waker (its thread ends once the loop has closed)."""
    with _wakers_lock:
        waker = _wakers.get(loop)
        if waker is None:
            waker = _wakers[loop] = LoopWaker(loop)
        return waker


class EventInbox:
    """Events handed from engine threads to the event loop in batches, each stamped with the
    time it came (so metrics stay exact however late the loop looks at it).

    Streamed (`eager`): the first event after the loop last looked schedules one wake-up, and
    events that come before it runs ride along, so a busy loop is woken once per batch, not
    once per token. With an `interval`, tokens that come less than `interval` after the loop
    last took a batch wake nobody: the loop's own timer takes them when it is up, so at token
    rates above 1/interval the loop (and the client) wake once per interval, not per token —
    on a box whose cores all run the model, each wake-up preempts a compute thread. The
    intervals of a loop's streams end on one grid (`_next_tick`), so they share wake-ups. The
    first token and any event that is not a token (the finish, an error) go at once. Not streamed:
    nobody reads tokens before the end, so the loop is woken by a finish (or any other event
    that is not a token) or every LAZY_BATCH events."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, *, eager: bool = True, interval: float = 0.0
    ) -> None:
        self._loop = loop
        self._waker = loop_waker(loop)
        self._eager = eager
        self._interval = interval if eager else 0.0
        self._items: collections.deque[tuple[int, Event, float]] = collections.deque()
        self._lock = threading.Lock()
        self._ready = False  # the items are due to the loop
        self._urgent = False  # an item is not a token: due at once, whatever the interval
        self._hold_until = 0.0  # streamed tokens before this wait for the loop's own timer
        self._tick = 0.0  # that timer's time on the loop's clock (`_next_tick`)
        self._wake_scheduled = False
        self._waiter: asyncio.Future[None] | None = None
        if self._interval:
            self._waker.streaming.add(self)

    def close(self) -> None:
        """On the loop: the request is done; its interval no longer widens the others'."""
        self._waker.streaming.discard(self)

    def _spread(self) -> float:
        """This batch's interval: the one asked for times the streamed requests the loop
        serves, up to STREAM_INTERVAL_MAX_S (never below the one asked for)."""
        wider = min(self._interval * len(self._waker.streaming), STREAM_INTERVAL_MAX_S)
        return max(self._interval, wider)

    def _next_tick(self) -> float:
        """On the loop: when the next batch is due, on the loop's clock. Ticks fall on one grid
        per interval (multiples of it), so the streams a loop serves come due at the same
        instant and one wake-up of the loop writes them all, where timers of their own would
        wake it once per stream per interval; each stream still waits about an interval."""
        spread = self._spread()
        clock = self._loop.time()
        tick = (math.floor(clock / spread) + 1) * spread
        return tick + spread if tick - clock < spread / 2 else tick

    def put(self, index: int, event: Event) -> None:
        """Any thread."""
        token = isinstance(event, TokenEvent)
        with self._lock:
            # Read under the lock: a clock read before it could predate a batch() that has since
            # found nothing and waits without a timer, and the token would wake nobody.
            t = now()
            self._items.append((index, event, t))
            if self._eager or not token or len(self._items) >= LAZY_BATCH:
                self._ready = True
            if not token:
                self._urgent = True
            elif t < self._hold_until:  # the loop comes for it when the interval is up
                return
            if not self._ready or self._wake_scheduled:
                return
            self._wake_scheduled = True
        self._waker.wake(self)

    def wake(self) -> None:
        """On the loop: the waiting `batch()` call returns what has come."""
        with self._lock:
            self._wake_scheduled = False
        _resolve(self._waiter)

    async def batch(self) -> list[tuple[int, Event, float]]:
        """(choice index, event, when it came) for every event due since the last batch,
        waiting for a wake-up if none is. With an interval, streamed tokens are handed over at
        most once per interval (a finish or error at once)."""
        while True:
            with self._lock:
                t = now()
                hold = 0.0 if self._urgent else self._hold_until - t
                if self._ready and hold <= 0:
                    items = list(self._items)
                    self._items.clear()
                    self._ready = self._urgent = False
                    if self._interval:
                        self._tick = self._next_tick()
                        self._hold_until = t + (self._tick - self._loop.time())
                    return items
            waiter = self._waiter = self._loop.create_future()
            # at the tick itself (not `hold` from now), so the streams due then share one wake-up
            timer = self._loop.call_at(self._tick, self._tick_up, waiter) if hold > 0 else None
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()

    def _tick_up(self, waiter: asyncio.Future[None]) -> None:
        """On the loop, its timer: the hold is over. The loop's clock need not agree with
        `now()` to the last millisecond (uvloop's counts whole ones), and a batch that waited
        for `_hold_until` by `now()` would spin on a tick already past until the clocks agree."""
        with self._lock:
            self._hold_until = min(self._hold_until, now())
        _resolve(waiter)


def _resolve(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class ChoiceStreams:
    """The events of one or more sequences generated for one HTTP request.

    The plan says what to run (`GenerationPlan.requests`, one per choice), for which model,
    and since when (time to first token counts from its arrival). `start()` submits every
    choice, or none: a refusal (queue full, bad grammar) raises before a response has begun,
    so it can still become a proper 4xx.
    """

    def __init__(
        self,
        runtime: Runtime,
        plan: GenerationPlan,
        *,
        metrics: NodeMetrics,
        kv: KVSnapshot | None = None,
        record: RequestRecord | None = None,
        interval: float = STREAM_INTERVAL_S,
    ) -> None:
        self._runtime = runtime
        self._interval = interval
        self._record = record  # the request's entry in the node's recent requests
        self._requests = plan.requests(kv)
        self._metrics = metrics
        self._model = plan.model
        self._arrived = plan.arrived
        self._prompt_param = plan.prompt_param
        self._stream = plan.stream
        self._inbox: EventInbox | None = None
        self._handles: list[RequestHandle] = []
        self.mid_batch = False  # events() holds more of the batch it is yielding from

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        inbox = self._inbox = EventInbox(loop, eager=self._stream, interval=self._interval)

        def sink_for(index: int) -> Callable[[Event], None]:
            def sink(event: Event) -> None:
                inbox.put(index, event)

            return sink

        try:
            for index, request in enumerate(self._requests):
                self._handles.append(self._runtime.submit(request, sink_for(index)))
        except QueueFullError as exc:
            self.cancel()
            raise queue_full_error(exc) from exc
        except ContextLengthError as exc:
            self.cancel()
            raise APIError(
                400, str(exc), param=self._prompt_param, code="context_length_exceeded"
            ) from exc
        except GrammarError as exc:
            self.cancel()
            raise APIError(400, str(exc), param="response_format", code="invalid_value") from exc
        except SamplingError as exc:
            self.cancel()
            raise APIError(400, str(exc), param=exc.param, code="unsupported_parameter") from exc
        except KVMismatchError as exc:
            self.cancel()
            raise APIError(409, str(exc), param="x-edgebox-kv", code="kv_incompatible") from exc

    async def events(self) -> AsyncIterator[tuple[int, Event]]:
        """Yields (choice index, event) until every choice has finished; cancels on exit."""
        assert self._inbox is not None, "start() first"
        remaining = len(self._requests)
        last_token_at: dict[int, float] = {}
        ttft = self._metrics.ttft.labels(self._model)
        itl = self._metrics.itl.labels(self._model)
        try:
            while remaining:
                batch = await self._inbox.batch()
                last = len(batch) - 1
                for i, (index, event, t) in enumerate(batch):
                    self.mid_batch = i < last
                    if isinstance(event, TokenEvent):
                        previous = last_token_at.get(index)
                        if previous is None:
                            ttft.observe(t - self._arrived)
                            if self._record is not None and self._record.ttft_s is None:
                                self._record.ttft_s = t - self._arrived
                        else:
                            itl.observe(t - previous)
                        last_token_at[index] = t
                    elif isinstance(event, FinishEvent):
                        remaining -= 1
                        self._count(event)
                    yield index, event
        finally:
            self.cancel()

    def _count(self, event: FinishEvent) -> None:
        self._metrics.queue_wait.labels(self._model).observe(event.queue_wait_s)
        held = now() - self._arrived - event.queue_wait_s
        self._metrics.service.labels(self._model).observe(max(0.0, held))
        self._metrics.generated.labels(self._model).inc(event.completion_tokens)
        self._metrics.prompt.labels(self._model).inc(event.prompt_tokens)
        self._metrics.cached.labels(self._model).inc(event.cached_tokens)
        if self._record is not None:
            self._record.completion_tokens += event.completion_tokens

    def cancel(self) -> None:
        for handle in self._handles:
            handle.cancel()
        if self._inbox is not None:
            self._inbox.close()


async def one_write_per_batch(
    body: AsyncIterator[bytes], streams: ChoiceStreams
) -> AsyncIterator[bytes]:
    """`body`'s pieces joined while `streams` is yielding from one batch of events: the tokens
    a wake-up brought leave in one write, and the client wakes once for them, not per token.
    Held pieces also leave once `body` waits for anything: the batch's last events may write
    nothing (a token the tool-call parser or a stop string holds), and what came before them
    must not wait for the next batch."""
    held: list[bytes] = []
    following: asyncio.Task[bytes | None] | None = None
    try:
        while True:
            if held:
                following = asyncio.ensure_future(anext(body, None))
                await asyncio.sleep(0)  # a piece from the same batch is there after one turn
                if not following.done():
                    yield b"".join(held)
                    held.clear()
                piece = await following
                following = None
            else:
                piece = await anext(body, None)
            if piece is None:
                break
            held.append(piece)
            if not streams.mid_batch:
                yield b"".join(held)
                held.clear()
    finally:
        if following is not None:
            following.cancel()
    if held:
        yield b"".join(held)
