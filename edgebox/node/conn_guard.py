"""Connection limits uvicorn does not have: slow or idle clients cannot starve the node.

uvicorn closes a connection that idles *between* requests (`timeout_keep_alive`), but a
client that trickles a request's headers one byte at a time re-arms nothing and is never
closed, and every such connection holds a file descriptor: about a thousand of them used up
the default 1,024 and a normal `/health` could no longer connect. `guarded_protocol` wraps
uvicorn's HTTP protocol class with:

- a header deadline: a request's headers must be complete `header_timeout_s` after the
  connection opened or the previous response ended, however the bytes trickle in;
- a body idle timeout: a request whose body stops arriving for `body_idle_s` is closed;
- a cap on open connections per client address and in total; past it a new connection is
  closed at once (before it costs more than its descriptor).

`raise_open_file_limit` lifts the soft descriptor limit to the hard one at start, so the caps,
not the OS default, decide when connections are refused.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

MAX_OPEN_FILES = 65_536  # the soft limit asked for (capped by the hard limit)


@dataclass
class ConnectionLimits:
    """What the guard allows, and the live counts it keeps (one per server)."""

    header_timeout_s: float = 10.0
    body_idle_s: float = 30.0
    per_address: int = 256
    total: int = 8192
    open: Counter[str] = field(default_factory=Counter)
    refused: int = 0  # connections closed at once for a full cap
    timed_out: int = 0  # connections closed for a header deadline or an idle body

    def admit(self, address: str) -> bool:
        if self.open[address] >= self.per_address or sum(self.open.values()) >= self.total:
            self.refused += 1
            return False
        self.open[address] += 1
        return True

    def release(self, address: str) -> None:
        self.open[address] -= 1
        if self.open[address] <= 0:
            del self.open[address]


def raise_open_file_limit(wanted: int = MAX_OPEN_FILES) -> int:
    """Lift the soft RLIMIT_NOFILE towards `wanted` (never above the hard limit); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d: %s", soft, exc)
    return int(soft)


def guarded_protocol(base: type[asyncio.Protocol], limits: ConnectionLimits) -> type[Any]:
    """A subclass of uvicorn's `base` protocol (H11Protocol or HttpToolsProtocol) applying
    `limits`. It relies on what both have: `transport`, `cycle` (the request whose headers
    were read last; its `more_body` says the body is still coming) and `on_response_complete`.
    """

    class Guarded(base):  # type: ignore[valid-type, misc]
        _address = ""
        _admitted = False
        _deadline: asyncio.TimerHandle | None = None
        _cycle_seen: Any = None
        _phase = "headers"  # reading headers, reading a body, or the app answering

        def connection_made(self, transport: Any) -> None:
            peer = transport.get_extra_info("peername")
            self._address = str(peer[0]) if isinstance(peer, tuple) else "local"
            if not limits.admit(self._address):
                transport.abort()  # full: close before reading anything
                return
            self._admitted = True
            super().connection_made(transport)
            self._arm(limits.header_timeout_s)

        def data_received(self, data: bytes) -> None:
            if not self._admitted:
                return
            super().data_received(data)
            cycle = getattr(self, "cycle", None)
            if cycle is self._cycle_seen:  # no new request: a header deadline keeps running
                if self._phase == "body":
                    self._body_progress(cycle)
                return
            self._cycle_seen = cycle  # a new request's headers are complete
            self._phase = "body"
            self._body_progress(cycle)

        def _body_progress(self, cycle: Any) -> None:
            if getattr(cycle, "more_body", False):
                self._arm(limits.body_idle_s)  # the body is coming: bytes must keep coming
            else:
                self._phase = "answering"  # the app answers in its own time
                self._cancel()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self._phase == "answering":
                self._phase = "headers"
                self._arm(limits.header_timeout_s)  # the next request's headers, in time

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel()
            if self._admitted:
                self._admitted = False
                limits.release(self._address)
                super().connection_lost(exc)

        def _arm(self, seconds: float) -> None:
            self._cancel()
            loop = asyncio.get_running_loop()
            self._deadline = loop.call_later(seconds, self._expire)

        def _cancel(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            if self._phase != "answering" and self.transport is not None:
                limits.timed_out += 1
                self.transport.close()

    Guarded.__name__ = Guarded.__qualname__ = f"Guarded{base.__name__}"
    return Guarded


def http_protocol() -> type[asyncio.Protocol]:
    """The protocol class uvicorn's `http="auto"` picks (httptools when installed, else h11)."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return AutoHTTPProtocol
