"""Guards between the network and a server's logic: safe log fields and per-address rate limits
(the connection guard for uvicorn is `edgebox.api.conn_guard`).

- `log_field(text)`: client-supplied text as it may appear in a log line: control characters,
  line breaks and backslashes escaped repr-style, cut to a length, so a request can never
  start a forged log line or drive a terminal.
- `TokenBuckets`: a token bucket per client address, bounded in memory.
"""

from __future__ import annotations

import time
import unicodedata
from collections import OrderedDict

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
