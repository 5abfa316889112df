"""Server-sent events as OpenAI streams them: one compact JSON object per `data:` line, then
`data: [DONE]`. The node writes them; the router relays and writes its own error events."""

from __future__ import annotations

import json
from typing import Any


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"
