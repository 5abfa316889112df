"""The one thread that runs llama.cpp's compute graphs in this process (`decode`).

llama.cpp's CPU backend runs each graph as an OpenMP parallel region, and libgomp gives every
thread that opens one a team of its own. Once the process holds more OpenMP threads than CPUs
(a node with two models loaded: two engine threads, two teams), libgomp throttles its barrier
spin from 300,000 iterations to 1,000 and every thread sleeps in the kernel at each of the
graph's few hundred barriers: on a 2-core Xeon one model decoded at 34 tok/s instead of 78
while the other sat idle. Routing every decode through one thread keeps one team whatever the
number of models; engines whose steps come at the same time take turns, which on a CPU they
would do anyway. The hand-off is two lock releases (no futures): about 1 % of a token's time
on that Xeon.
"""

from __future__ import annotations

import threading
from typing import Any

import llama_cpp


class _ComputeThread:
    """Runs one `llama_decode` at a time for any caller; callers queue on `_turn`."""

    def __init__(self) -> None:
        self._turn = threading.Lock()  # one caller's job at a time
        self._go = threading.Lock()  # released by a caller: a job is ready
        self._done = threading.Lock()  # released by the thread: the job's result is ready
        self._go.acquire()
        self._done.acquire()
        self._job: tuple[Any, Any] | None = None
        self._rc = 0
        self.thread = threading.Thread(target=self._serve, name="llamacpp-compute", daemon=True)
        self.thread.start()

    def decode(self, ctx: Any, batch: Any) -> int:
        with self._turn:
            self._job = (ctx, batch)
            self._go.release()
            self._done.acquire()
            return self._rc

    def _serve(self) -> None:
        while True:
            self._go.acquire()
            assert self._job is not None
            ctx, batch = self._job
            self._job = None
            try:
                self._rc = llama_cpp.llama_decode(ctx, batch)
            except BaseException:  # ctypes argument errors: the caller sees a failed decode
                self._rc = -1
            self._done.release()


_lock = threading.Lock()
_compute: _ComputeThread | None = None


def decode(ctx: Any, batch: Any) -> int:
    """`llama_decode(ctx, batch)` on the process's compute thread: its return code."""
    global _compute
    if _compute is None:
        with _lock:
            if _compute is None:
                _compute = _ComputeThread()
    return _compute.decode(ctx, batch)
