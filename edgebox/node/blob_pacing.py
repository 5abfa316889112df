"""Model transfers must not starve inference: blob responses are paced while the node generates.

While any generation runs or waits on this node, every blob response (peers fetching model
bytes from `/v1/blobs/`) draws from one token bucket of `rate` bytes/s, whatever the number
of peers and ranges; when nothing generates, blobs go at full speed.

    wait(chunk of n bytes) = max(0, start - now),  start = max(next, now - BURST_S)
    next = start + n / rate

The default share, 40 MB/s (`serve --share-rate`, 0 = unlimited), is a third of a gigabit
link, the usual home or lab switch: a 4 GB model still reaches a peer in under two minutes
while the other two thirds, and the CPU that would otherwise copy blob bytes at line rate
(an sendfile-less Python response thread on a 2-core box), stay with the requests being
served. On 10 GbE, raise it; on Wi-Fi, lower it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

DEFAULT_SHARE_RATE = 40e6  # bytes/s while generating
BURST_S = 0.25  # how far behind the bucket may fall before it stops catching up


class BlobPacer:
    """One bucket over every blob response of a node. `rate()` is the share in bytes/s
    (0: unlimited); `busy()` says whether the node is generating now."""

    def __init__(
        self,
        rate: Callable[[], float],
        busy: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate, self.busy, self.clock = rate, busy, clock
        self._next = 0.0

    def delay(self, n: int, now: float) -> float:
        """Seconds to wait before sending `n` more bytes; the bytes are booked."""
        rate = self.rate()
        if rate <= 0 or not self.busy():
            return 0.0
        start = max(self._next, now - BURST_S)
        self._next = start + n / rate
        return max(0.0, start - now)

    async def pace(self, n: int) -> None:
        wait = self.delay(n, self.clock())
        if wait > 0:
            await asyncio.sleep(wait)
