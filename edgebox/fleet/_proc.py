"""Child processes that must not outlive edgebox (the relay sshd, the tunnel's ssh)."""

from __future__ import annotations

import ctypes
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGTERM when the thread that started it ends, which covers a parent
    killed by a signal (uvicorn re-raises SIGTERM, so no `finally` runs). Elsewhere a no-op."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
