"""Blocking request preparation (template rendering, tokenizing, grammar compiling) off the
event loop, on a few worker threads, with a deadline, so /health and streams keep flowing
while a large prompt is tokenized."""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from edgebox.api.errors import APIError

T = TypeVar("T")

PREPARE_DEADLINE_S = 30.0
# Few workers: preparation is CPU work, bounded per request by the context-relative limits,
# and more threads than cores would only slow each other down.
_WORKERS = max(2, min(4, os.cpu_count() or 2))
_executor = ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="edgebox-prepare")


async def off_loop(fn: Callable[..., T], *args: object, deadline: float | None = None) -> T:
    """`fn(*args)` on a preparation thread; 503 if it takes longer than the deadline (the
    work then finishes unseen: threads cannot be stopped, only left)."""
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(_executor, functools.partial(fn, *args))
    limit = PREPARE_DEADLINE_S if deadline is None else deadline
    try:
        return await asyncio.wait_for(asyncio.shield(future), limit)
    except TimeoutError as exc:
        raise APIError(
            503,
            f"preparing the request took longer than {limit:g} s; the node is busy, retry later",
            type="server_error",
            code="prepare_timeout",
        ) from exc
