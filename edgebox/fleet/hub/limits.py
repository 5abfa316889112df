"""Per-source rate limits in front of the hub app (pure ASGI middleware).

Three token buckets per client address (the TCP peer: proxy headers are never read):
- `open`: the routes anyone may call, join and rejoin (a token or a signature is the only
  credential, and every try costs a database transaction);
- `health`: GET /health, generous (monitors poll it);
- `failures`: every answer in the 4xx range but 429 on any other route (bad keys, unknown
  nodes, bad bodies, unknown paths) takes a token, and an address whose bucket is empty gets
  429 on those routes before any work is done, so a good key keeps working while a guessing
  one is slowed.
A refusal is 429 in the hub's error shape with Retry-After in whole seconds.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from edgebox.api.netguard import TokenBuckets

OPEN_PATHS = frozenset({"/v1/hub/join", "/v1/hub/rejoin"})


@dataclass(frozen=True)
class Limits:
    open_rate: float = 1.0  # joins per second per address, after the burst
    open_burst: float = 20.0
    health_rate: float = 20.0
    health_burst: float = 100.0
    failure_rate: float = 1.0
    failure_burst: float = 30.0


def _too_many(wait: float) -> tuple[dict[str, Any], bytes]:
    seconds = max(1, math.ceil(wait))
    message = f"too many requests from this address; retry in {seconds} s"
    body = {
        "error": {
            "message": message,
            "type": "rate_limit_error",
            "param": None,
            "code": "rate_limited",
        }
    }
    start = {
        "type": "http.response.start",
        "status": 429,
        "headers": [
            (b"content-type", b"application/json"),
            (b"retry-after", str(seconds).encode()),
        ],
    }
    return start, json.dumps(body).encode()


class RateLimit:
    """ASGI middleware: `RateLimit(app, Limits())`."""

    def __init__(self, app: Any, limits: Limits) -> None:
        self.app = app
        self.open = TokenBuckets(rate=limits.open_rate, burst=limits.open_burst)
        self.health = TokenBuckets(rate=limits.health_rate, burst=limits.health_burst)
        self.failures = TokenBuckets(rate=limits.failure_rate, burst=limits.failure_burst)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = str(client[0]) if client else "?"
        path = scope.get("path", "")
        if path in OPEN_PATHS:
            wait = self.open.take(address)
        elif path == "/health":
            wait = self.health.take(address)
        else:
            wait = self.failures.wait(address)
        if wait > 0:
            start, body = _too_many(wait)
            await send(start)
            await send({"type": "http.response.body", "body": body})
            return
        if path in OPEN_PATHS or path == "/health":
            await self.app(scope, receive, send)
            return

        async def watch(message: Any) -> None:
            if message["type"] == "http.response.start" and 400 <= message["status"] < 500:
                self.failures.take(address)
            await send(message)

        await self.app(scope, receive, watch)
