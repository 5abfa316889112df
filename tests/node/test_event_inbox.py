"""Events cross from an engine thread to the event loop in batches, stamped when they came."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
import types
from collections.abc import AsyncIterator, Iterator

import pytest

from edgebox.api.conn_guard import guarded_loop_factory
from edgebox.node import generation
from edgebox.node.generation import (
    LAZY_BATCH,
    STREAM_INTERVAL_MAX_S,
    EventInbox,
    one_write_per_batch,
)
from edgebox.runtimes.base import FinishEvent, TokenEvent


def token(i: int) -> TokenEvent:
    return TokenEvent(token_id=i, text=f"t{i}")


@contextlib.contextmanager
def feeding(inboxes: list[EventInbox], every: float) -> Iterator[None]:
    """An engine thread putting a token in each inbox every `every` seconds while the block
    runs."""
    running = threading.Event()
    running.set()

    def engine() -> None:
        for i in itertools.count(1):
            if not running.is_set():
                return
            for inbox in inboxes:
                inbox.put(0, token(i))
            time.sleep(every)

    thread = threading.Thread(target=engine)
    thread.start()
    try:
        yield
    finally:
        running.clear()
        thread.join(10)


async def _collect(inbox: EventInbox, until: int) -> list[list[tuple[int, object, float]]]:
    batches = []
    seen = 0
    while seen < until:
        batch = await asyncio.wait_for(inbox.batch(), 10)
        batches.append(batch)
        seen += len(batch)
    return batches


def test_streamed_events_arrive_in_order_and_in_batches() -> None:
    async def main() -> None:
        inbox = EventInbox(asyncio.get_running_loop(), eager=True)
        n = 500

        def engine() -> None:
            for i in range(n):
                inbox.put(i % 2, token(i))

        before = time.perf_counter()
        thread = threading.Thread(target=engine)
        thread.start()
        batches = await _collect(inbox, n)
        thread.join(10)
        events = [e for b in batches for e in b]
        assert [e[1].token_id for e in events] == list(range(n))  # type: ignore[attr-defined]
        assert [e[0] for e in events] == [i % 2 for i in range(n)]
        stamps = [e[2] for e in events]
        assert stamps == sorted(stamps) and before <= stamps[0]
        assert len(batches) < n  # the engine outran the loop: events rode along

    asyncio.run(main())


def test_a_non_streamed_request_wakes_the_loop_only_at_the_finish_or_a_full_batch() -> None:
    async def main() -> None:
        inbox = EventInbox(asyncio.get_running_loop(), eager=False)
        for i in range(LAZY_BATCH - 1):
            inbox.put(0, token(i))
        waiting = asyncio.ensure_future(inbox.batch())
        await asyncio.sleep(0.2)
        assert not waiting.done()  # tokens alone, fewer than a batch: nobody is woken
        inbox.put(0, FinishEvent("stop", 3, LAZY_BATCH - 1))
        batch = await asyncio.wait_for(waiting, 10)
        assert len(batch) == LAZY_BATCH and isinstance(batch[-1][1], FinishEvent)
        for i in range(LAZY_BATCH):
            inbox.put(0, token(i))
        assert len(await asyncio.wait_for(inbox.batch(), 10)) == LAZY_BATCH

    asyncio.run(main())


def test_with_an_interval_tokens_go_once_per_interval_and_the_finish_at_once() -> None:
    interval = 0.2

    async def main() -> None:
        inbox = EventInbox(asyncio.get_running_loop(), eager=True, interval=interval)
        inbox.put(0, token(0))
        first = await asyncio.wait_for(inbox.batch(), 10)
        taken = time.perf_counter()
        assert [e[1].token_id for e in first] == [0]  # type: ignore[attr-defined]

        def engine() -> None:  # three tokens 20 ms apart, well inside the interval
            for i in (1, 2, 3):
                time.sleep(0.02)
                inbox.put(0, token(i))

        thread = threading.Thread(target=engine)
        thread.start()
        held = await asyncio.wait_for(inbox.batch(), 10)
        waited = time.perf_counter() - taken
        thread.join(10)
        assert [e[1].token_id for e in held] == [1, 2, 3]  # type: ignore[attr-defined]
        # the next tick of the interval's grid: from half an interval to one and a half away
        assert interval * 0.45 <= waited < interval * 1.5 + 0.15, waited
        stamps = [e[2] for e in held]
        assert stamps[2] - stamps[0] < interval  # stamped when they came, not when taken

        inbox.put(0, token(4))  # inside the next interval: held...
        inbox.put(0, FinishEvent("stop", 3, 5))  # ...until the finish takes it along at once
        started = time.perf_counter()
        last = await asyncio.wait_for(inbox.batch(), 10)
        assert time.perf_counter() - started < interval / 2
        assert [type(e[1]) for e in last] == [TokenEvent, FinishEvent]

    asyncio.run(main())


def test_with_an_interval_a_token_after_a_quiet_spell_goes_at_once() -> None:
    async def main() -> None:
        inbox = EventInbox(asyncio.get_running_loop(), eager=True, interval=0.05)
        inbox.put(0, token(0))
        await asyncio.wait_for(inbox.batch(), 10)
        waiting = asyncio.ensure_future(inbox.batch())
        await asyncio.sleep(0.3)  # the interval passed with nothing to hand over
        assert not waiting.done()
        started = time.perf_counter()
        threading.Thread(target=inbox.put, args=(0, token(1))).start()
        batch = await asyncio.wait_for(waiting, 10)
        assert time.perf_counter() - started < 0.04
        assert [e[1].token_id for e in batch] == [1]  # type: ignore[attr-defined]

    asyncio.run(main())


def test_the_interval_widens_with_the_streams_the_loop_serves_up_to_a_cap() -> None:
    """Four streamed requests at 16 ms each hand over at most every 50 ms (the cap), not 64;
    two at 32 ms; one alone at 16 again once the others are done. Non-streamed requests do not
    count. A held token waits for the widened interval (at least half of it: the next tick
    of its grid)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        inboxes = [EventInbox(loop, eager=True, interval=0.016) for _ in range(4)]
        EventInbox(loop, eager=False, interval=0.016)  # not streamed: not counted
        assert inboxes[0]._spread() == pytest.approx(STREAM_INTERVAL_MAX_S)
        first = inboxes[0]
        first.put(0, token(0))
        await asyncio.wait_for(first.batch(), 10)  # the first token at once
        started = time.perf_counter()
        first.put(0, token(1))
        await asyncio.wait_for(first.batch(), 10)
        assert time.perf_counter() - started >= STREAM_INTERVAL_MAX_S * 0.45
        for inbox in inboxes[2:]:
            inbox.close()
        assert first._spread() == pytest.approx(0.032)
        inboxes[1].close()
        assert first._spread() == pytest.approx(0.016)
        assert EventInbox(loop, eager=True, interval=0.2)._spread() == pytest.approx(0.2)

    asyncio.run(main())


def test_streams_whose_last_batches_were_apart_come_due_together() -> None:
    """Four streams took their first tokens 10 ms apart; an engine thread then puts a token in
    each every 5 ms. Within a few intervals (a stream whose batch came less than half an
    interval before a tick waits for the one after) they come due at the same ticks of the
    loop's clock: one wake-up of the loop writes all four, where a timer per stream kept them
    ~10-30 ms apart."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        inboxes = [EventInbox(loop, eager=True, interval=0.016) for _ in range(4)]
        for inbox in inboxes:
            inbox.put(0, token(0))
            await asyncio.wait_for(inbox.batch(), 10)
            await asyncio.sleep(0.01)
        came: list[list[float]] = [[] for _ in inboxes]
        until = loop.time() + 0.4

        async def take(n: int) -> None:  # up to the first batch past `until`
            while not came[n] or came[n][-1] < until:
                await inboxes[n].batch()
                came[n].append(loop.time())

        with feeding(inboxes, every=0.005):
            await asyncio.wait_for(asyncio.gather(*(take(n) for n in range(4))), 10)
        last = [times[-1] for times in came]
        assert max(last) - min(last) < 0.015, came
        assert len({inbox._tick for inbox in inboxes}) == 1

    asyncio.run(main())


def test_on_the_nodes_loop_a_held_stream_wakes_it_once_per_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The node serves on uvloop where installed, whose clock counts whole milliseconds: the
    timer at a tick may fire while `now()` says the hold has up to a millisecond to go. The
    batch must go then, not wait again on a timer for that tick, already past (due at once),
    spinning the loop until the clocks agree (~50-100 wake-ups per batch). `now()` runs 5 %
    slow here, so every tick meets that case, not only those the clocks' phase hands it."""
    import uvloop  # a dependency wherever the node runs on Linux or macOS

    batches = 30
    real_now = generation.now
    start = real_now()
    monkeypatch.setattr(generation, "now", lambda: start + (real_now() - start) * 0.95)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        inbox = EventInbox(loop, eager=True, interval=0.016)
        waits = 0
        create_future = loop.create_future

        def counted() -> asyncio.Future[None]:
            nonlocal waits
            waits += 1
            return create_future()

        async def take() -> None:
            for _ in range(batches):
                await inbox.batch()

        with feeding([inbox], every=0.002):
            monkeypatch.setattr(loop, "create_future", counted)  # a wait of batch() each
            await take()
        assert waits < batches * 2, waits

    with asyncio.Runner(loop_factory=guarded_loop_factory(10.0)) as runner:
        assert isinstance(runner.get_loop(), uvloop.Loop)
        runner.run(asyncio.wait_for(main(), 30))


def test_a_token_stamped_before_the_interval_ended_but_put_after_is_not_stranded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The engine thread may lose the GIL between reading the clock and taking the lock; if the
    loop's timer fires meanwhile and finds nothing, the token must still wake it."""
    interval = 0.1
    real_now = generation.now

    def slow_clock() -> float:
        t = real_now()
        if threading.current_thread().name == "engine":
            time.sleep(interval * 3)  # the GIL goes to the loop: its timer fires, finds nothing
        return t

    async def main() -> None:
        inbox = EventInbox(asyncio.get_running_loop(), eager=True, interval=interval)
        inbox.put(0, token(0))
        await asyncio.wait_for(inbox.batch(), 10)
        monkeypatch.setattr(generation, "now", slow_clock)
        threading.Thread(target=inbox.put, args=(0, token(1)), name="engine").start()
        batch = await asyncio.wait_for(inbox.batch(), interval * 10)  # not left for the next token
        assert [e[1].token_id for e in batch] == [1]  # type: ignore[attr-defined]

    asyncio.run(main())


def test_a_batch_whose_last_event_writes_nothing_still_sends_what_came_before_it() -> None:
    """Say a batch brings "Sure" and then a token the tool-call parser holds (no bytes): the
    "Sure" chunk must leave now, not when the tool call's markup has all come."""
    streams = types.SimpleNamespace(mid_batch=False)
    next_batch = threading.Event()

    async def body() -> AsyncIterator[bytes]:
        streams.mid_batch = True  # "Sure": not the batch's last event
        yield b"data: Sure\n\n"
        streams.mid_batch = False  # "<tool_call>": held by the parser, nothing to write
        await asyncio.get_running_loop().run_in_executor(None, next_batch.wait, 10)
        yield b"data: [DONE]\n\n"

    async def main() -> None:
        pieces = one_write_per_batch(body(), streams)  # type: ignore[arg-type]
        first = await asyncio.wait_for(anext(pieces), 2)
        assert first == b"data: Sure\n\n"
        next_batch.set()
        assert [p async for p in pieces] == [b"data: [DONE]\n\n"]

    try:
        asyncio.run(main())
    finally:
        next_batch.set()


def test_one_write_per_batch_joins_a_batch_and_closes_its_body_when_closed() -> None:
    streams = types.SimpleNamespace(mid_batch=False)
    closed = []

    async def body() -> AsyncIterator[bytes]:
        try:
            for i in range(4):
                streams.mid_batch = i != 2  # a batch of three, then one whose rest never comes
                yield b"%d" % i
            await asyncio.sleep(30)
            yield b"never"
        finally:
            closed.append(True)

    async def main() -> None:
        pieces = one_write_per_batch(body(), streams)  # type: ignore[arg-type]
        assert await asyncio.wait_for(anext(pieces), 2) == b"012"
        assert await asyncio.wait_for(anext(pieces), 2) == b"3"  # the body waits: sent now
        await pieces.aclose()  # the client went away while the body waits
        await asyncio.sleep(0.05)
        assert closed == [True]

    asyncio.run(main())
