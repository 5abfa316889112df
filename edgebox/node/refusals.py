"""Runtime refusals as the errors a client sees (the runtime layer knows nothing of HTTP)."""

from __future__ import annotations

from edgebox.api.errors import APIError
from edgebox.runtimes.base import QueueFullError


def queue_full_error(exc: QueueFullError) -> APIError:
    """A runtime's full queue, as OpenAI-shaped 429 with Retry-After in whole seconds."""
    return APIError(
        429,
        f"{exc}; retry later",
        type="rate_limit_error",
        code="queue_full",
        headers={"Retry-After": str(max(1, round(exc.retry_after)))},
    )
