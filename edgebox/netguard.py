"""Guards between the network and a server: safe log fields, per-address rate limits, and a
connection guard for uvicorn (per-address connection cap, TLS-handshake and header deadlines).

Shared by the hub (fleet/hub/server.py) and usable by any uvicorn server here:

- `log_field(text)`: client-supplied text as it may appear in a log line: control characters,
  line breaks and backslashes escaped repr-style, cut to a length, so a request can never
  start a forged log line or drive a terminal.
- `TokenBuckets`: a token bucket per client address, bounded in memory.
- `guarded_protocol(...)`: a uvicorn ``http`` protocol class that wraps uvicorn's own. It
  refuses a connection beyond `per_address` open ones from one address, and closes one whose
  request headers are not complete `header_timeout` seconds after it opened (after its TLS
  handshake), or after the first byte of a later request, or that sends more than
  `max_header_bytes` of headers.
- `serve_uvicorn(config, handshake_timeout)`: runs uvicorn on a loop whose TLS servers end
  handshakes after `handshake_timeout` s (uvicorn passes none; asyncio's default is 60 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, cast

log = logging.getLogger("edgebox.netguard")

_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(ch: str) -> str:
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    # Cc: C0/C1 controls (ESC starts terminal sequences); Cf: bidi overrides and zero-width
    # marks that make a line read differently from its bytes; Zl/Zp: Unicode line breaks.
    if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
        code = ord(ch)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return ch


def log_field(value: object, limit: int = 200) -> str:
    """`value` as text safe inside one log line (escaped, at most `limit` characters + '…')."""
    text = value if isinstance(value, str) else str(value)
    cut = len(text) > limit
    escaped = "".join(_escape_char(ch) for ch in text[:limit])
    return escaped + ("…" if cut else "")


class TokenBuckets:
    """One token bucket per key (a client address): `burst` tokens, refilled at `rate`/s.

    At most `max_keys` buckets are kept (least recently used dropped first), so a flood of
    source addresses costs bounded memory; a dropped bucket comes back full, which errs on the
    side of serving."""

    def __init__(self, *, rate: float, burst: float, max_keys: int = 10_000) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def wait(self, key: str, now: float | None = None) -> float:
        """Seconds until `key` has a token (0.0: it has one now); takes nothing."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def take(self, key: str, now: float | None = None) -> float:
        """Take one token: 0.0 when allowed, else the seconds until one is available."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            wait, tokens = 0.0, tokens - 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait


class ConnectionCounter:
    """Open connections per address, with a cap."""

    def __init__(self, per_address: int) -> None:
        self.per_address = per_address
        self.open: dict[str, int] = {}

    def admit(self, address: str) -> bool:
        count = self.open.get(address, 0)
        if count >= self.per_address:
            return False
        self.open[address] = count + 1
        return True

    def release(self, address: str) -> None:
        count = self.open.get(address, 0) - 1
        if count > 0:
            self.open[address] = count
        else:
            self.open.pop(address, None)


_REFUSAL_LOGS = TokenBuckets(rate=1 / 60, burst=1, max_keys=1000)


class _Guard(asyncio.Protocol):
    """Sits between the (TLS) transport and uvicorn's protocol; see the module docstring."""

    inner_class: Any
    header_timeout: float
    max_header_bytes: int
    counter: ConnectionCounter

    def __init__(self, **uvicorn_kwargs: Any) -> None:
        self._kwargs = uvicorn_kwargs
        self._loop: asyncio.AbstractEventLoop = uvicorn_kwargs.get("_loop") or (
            asyncio.get_running_loop()
        )
        self.inner: asyncio.Protocol | None = None
        self.address: str | None = None
        self._transport: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._pending = 0  # bytes of the current request's headers seen so far
        self._tail = b""  # the last 3 bytes, to find a header end split across reads
        self._in_headers = True

    # connection set-up

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)  # a stream server's (uvloop's are no subclass)
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if not self.counter.admit(address):
            if _REFUSAL_LOGS.take(address) == 0.0:  # one line a minute per address, not a flood
                log.warning("connections from %s refused: %d open already", log_field(address),
                            self.counter.per_address)  # fmt: skip
            transport.abort()
            return
        self.address, self._transport = address, transport
        self._arm()
        self.inner = self.inner_class(**self._kwargs)
        self.inner.connection_made(transport)

    # header deadline

    def _arm(self) -> None:
        self._cancel()
        self._deadline = self._loop.call_later(self.header_timeout, self._expire)

    def _cancel(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self._transport is not None:
            self._transport.abort()

    def _watch(self, data: bytes) -> bool:
        """Track header progress; False when the headers grew past the limit."""
        if not self._in_headers:
            # Data after a complete header block starts the next request once the previous
            # response is done; uvicorn holds later bytes until then, so a new deadline here
            # only bounds a client that trickles its next request's headers.
            if self._deadline is None and self._response_done():
                self._in_headers, self._pending, self._tail = True, 0, b""
                self._arm()
            else:
                return True
        window = self._tail + data
        end = window.find(b"\r\n\r\n")
        if end >= 0:
            self._in_headers = False
            self._cancel()
            return True
        self._pending += len(data)
        self._tail = window[-3:]
        return self._pending <= self.max_header_bytes

    def _response_done(self) -> bool:
        cycle = getattr(self.inner, "cycle", None)
        return cycle is None or bool(getattr(cycle, "response_complete", True))

    # forwarding

    def data_received(self, data: bytes) -> None:
        if self.inner is None:
            return
        if not self._watch(data):
            if self._transport is not None:
                self._transport.abort()
            return
        self.inner.data_received(data)

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
        self._release()
        self._transport = None
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def _release(self) -> None:
        if self.address is not None:
            self.counter.release(self.address)
            self.address = None


def guarded_protocol(
    inner_class: Any,
    *,
    header_timeout: float = 10.0,
    per_address: int = 256,
    max_header_bytes: int = 64 * 1024,
) -> type[asyncio.Protocol]:
    """A uvicorn `http=` protocol class: uvicorn's `inner_class` behind the guard."""
    attrs = {
        "inner_class": inner_class,
        "header_timeout": header_timeout,
        "max_header_bytes": max_header_bytes,
        "counter": ConnectionCounter(per_address),
    }
    return type("GuardedProtocol", (_Guard,), attrs)


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


def raise_fd_limit() -> int:
    """Lift this process's soft open-file limit to the hard one; returns the new soft limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft
