"""Connection limits uvicorn does not have: slow or idle clients cannot starve a server.

One guard for every uvicorn server here (the node's, the hub's). uvicorn closes a connection
that idles *between* requests (`timeout_keep_alive`), but a client that trickles a request's
headers one byte at a time re-arms nothing and is never closed, and every such connection holds
a file descriptor: about a thousand of them used up the default 1,024 and a normal `/health`
could no longer connect. `guarded_protocol` puts uvicorn's HTTP protocol behind a guard with:

- a header deadline: a request's headers must be complete `header_timeout_s` after the
  connection opened (after its TLS handshake) or after the first byte of a later request,
  however the bytes trickle in, and may not exceed `max_header_bytes`;
- a body idle deadline: a request whose body stops arriving for `body_idle_s` is closed;
- a cap on open connections per client address and in total; past it a new connection is
  closed at once (before it costs more than its descriptor), with one log line a minute per
  address.

`raise_open_file_limit` lifts the soft descriptor limit at start, so the caps, not the OS
default, decide when connections are refused. `serve_uvicorn` runs uvicorn on a loop whose TLS
servers end handshakes after a deadline (uvicorn passes none; asyncio's default is 60 s).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from edgebox.api.netguard import TokenBuckets, log_field

log = logging.getLogger(__name__)

MAX_OPEN_FILES = 65_536  # the soft limit asked for by default (capped by the hard limit)


@dataclass
class ConnectionLimits:
    """What the guard allows, and the live counts it keeps (one per server)."""

    header_timeout_s: float = 10.0
    body_idle_s: float = 30.0
    per_address: int = 256
    total: int = 8192
    max_header_bytes: int = 64 * 1024
    open: Counter[str] = field(default_factory=Counter)
    refused: int = 0  # connections closed at once for a full cap
    timed_out: int = 0  # connections closed for a header deadline or an idle body

    def admit(self, address: str) -> bool:
        if self.open[address] >= self.per_address or self.open.total() >= self.total:
            self.refused += 1
            return False
        self.open[address] += 1
        return True

    def release(self, address: str) -> None:
        self.open[address] -= 1
        if self.open[address] <= 0:
            del self.open[address]


def raise_open_file_limit(wanted: int | None = MAX_OPEN_FILES) -> int:
    """Lift the soft RLIMIT_NOFILE towards `wanted` (None: the hard limit), never above the
    hard limit; returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if wanted is None:
        target = hard
    else:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and (soft < target or target == resource.RLIM_INFINITY):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d: %s", soft, exc)
    return int(soft)


_REFUSAL_LOGS = TokenBuckets(rate=1 / 60, burst=1, max_keys=1000)


class _Guard(asyncio.Protocol):
    """Sits between the (TLS) transport and uvicorn's protocol; see the module docstring.

    It relies on what both of uvicorn's protocols (httptools, h11) have: `cycle`, the request
    whose headers were read last, with `more_body` (its body is still coming) and
    `response_complete`."""

    inner_class: Any
    limits: ConnectionLimits

    def __init__(self, **uvicorn_kwargs: Any) -> None:
        self._kwargs = uvicorn_kwargs
        self._loop: asyncio.AbstractEventLoop = uvicorn_kwargs.get("_loop") or (
            asyncio.get_running_loop()
        )
        self.inner: asyncio.Protocol | None = None
        self.address: str | None = None
        self._transport: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._phase = "headers"  # reading headers, reading a body, or the app answering
        self._header_bytes = 0  # bytes of the current request's headers seen so far
        self._tail = b""  # the last 3 bytes, to find a header end split across reads
        self._cycle_seen: Any = None

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)  # a stream server's (uvloop's are no subclass)
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "local"
        if not self.limits.admit(address):
            if _REFUSAL_LOGS.take(address) == 0.0:  # one line a minute per address, not a flood
                log.warning(
                    "connections from %s refused: %d open already",
                    log_field(address),
                    self.limits.open[address],
                )
            transport.abort()  # full: close before reading anything
            return
        self.address, self._transport = address, transport
        self._arm(self.limits.header_timeout_s)
        self.inner = self.inner_class(**self._kwargs)
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.inner is None:
            return
        if self._phase == "answering" and self._response_done():
            # Data after a finished response starts the next request; uvicorn holds bytes that
            # come earlier until then, so this deadline bounds only a trickled next request.
            self._phase, self._header_bytes, self._tail = "headers", 0, b""
            self._arm(self.limits.header_timeout_s)
        if self._phase == "headers" and not self._header_progress(data):
            if self._transport is not None:
                self._transport.abort()  # headers past the size limit
            return
        self.inner.data_received(data)
        self._track_request()

    def _header_progress(self, data: bytes) -> bool:
        """Count header bytes until their end shows; False when they grew past the limit."""
        window = self._tail + data
        if window.find(b"\r\n\r\n") >= 0:
            return True  # complete: `_track_request` sees uvicorn's new request
        self._header_bytes += len(data)
        self._tail = window[-3:]
        return self._header_bytes <= self.limits.max_header_bytes

    def _track_request(self) -> None:
        """After uvicorn read bytes: a new request's headers are complete, or its body moved."""
        cycle = getattr(self.inner, "cycle", None)
        if cycle is not None and cycle is not self._cycle_seen:
            self._cycle_seen, self._phase = cycle, "body"
        if self._phase != "body":
            return  # headers still coming: their deadline keeps running
        if getattr(cycle, "more_body", False):
            self._arm(self.limits.body_idle_s)  # the body is coming: bytes must keep coming
        else:
            self._phase = "answering"  # the app answers in its own time
            self._cancel()

    def _response_done(self) -> bool:
        cycle = getattr(self.inner, "cycle", None)
        return cycle is None or bool(getattr(cycle, "response_complete", True))

    def _arm(self, seconds: float) -> None:
        self._cancel()
        self._deadline = self._loop.call_later(seconds, self._expire)

    def _cancel(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self._phase != "answering" and self._transport is not None:
            self.limits.timed_out += 1
            self._transport.abort()

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        self._transport = None
        if self.address is not None:
            self.limits.release(self.address)
            self.address = None
        if self.inner is not None:
            self.inner.connection_lost(exc)


def guarded_protocol(inner_class: Any, limits: ConnectionLimits) -> type[asyncio.Protocol]:
    """A uvicorn `http=` protocol class: uvicorn's `inner_class` (see `http_protocol`) behind
    the guard, applying `limits`."""
    attrs = {"inner_class": inner_class, "limits": limits}
    return type(f"Guarded{inner_class.__name__}", (_Guard,), attrs)


def http_protocol() -> type[asyncio.Protocol]:
    """The protocol class uvicorn's `http="auto"` picks (httptools when installed, else h11)."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return AutoHTTPProtocol


def guarded_loop_factory(handshake_timeout: float) -> Callable[[], asyncio.AbstractEventLoop]:
    """An event-loop factory (uvloop's when installed) whose TLS servers end a handshake that
    takes longer than `handshake_timeout` s. uvicorn passes no handshake timeout to
    `create_server`, so asyncio's default of 60 s would let idle clients hold descriptors."""
    base: type[asyncio.AbstractEventLoop]
    try:
        import uvloop

        base = uvloop.Loop
    except ImportError:
        base = asyncio.SelectorEventLoop

    class GuardedLoop(base):  # type: ignore[valid-type,misc]
        async def create_server(self, *args: Any, **kwargs: Any) -> Any:
            if kwargs.get("ssl") is not None:
                kwargs.setdefault("ssl_handshake_timeout", handshake_timeout)
            return await super().create_server(*args, **kwargs)

    return GuardedLoop


def serve_uvicorn(config: Any, handshake_timeout: float) -> None:
    """Run a `uvicorn.Config` until it stops, on `guarded_loop_factory`'s loop."""
    import uvicorn

    server = uvicorn.Server(config)
    try:  # as uvicorn.run: Ctrl-C is a normal stop; a failed start-up exits 3
        with asyncio.Runner(loop_factory=guarded_loop_factory(handshake_timeout)) as runner:
            runner.run(server.serve())
    except KeyboardInterrupt:
        pass
    if not server.started:
        raise SystemExit(3)
