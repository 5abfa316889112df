"""Nodes running on this box, whatever their port: each `edgebox serve` writes a small record
to EDGEBOX_HOME/run/node-PID.json once it listens and removes it at exit.

mDNS leaves the API port out for a node on loopback (right for the LAN, which cannot reach it),
so without these records `edgebox nodes` and `edgebox top` on the same box could not find a
node started with `--port 9000`. A record whose process is gone (killed, crashed) is ignored
and removed by the next reader; the process start time guards against a reused pid.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgebox.fleet._files import write_atomic
from edgebox.fleet.identity import edgebox_home

RUN_DIR = "run"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalNode:
    pid: int
    url: str  # http://127.0.0.1:PORT: where tools on this box reach it
    host: str  # the address it listens on (`serve --host`)
    port: int
    node_id: str
    name: str
    started_at: float  # the process's start time (psutil), to tell a reused pid apart


def run_dir(home: Path | None = None) -> Path:
    return (home or edgebox_home()) / RUN_DIR


def _process_start(pid: int) -> float | None:
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def register(url: str, host: str, node: dict[str, Any], home: Path | None = None) -> Path | None:
    """Record this process as a node serving at `url` (call once it listens); returns the file
    to remove at exit, or None when the home cannot be written (logged; the node serves on)."""
    port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
    started = _process_start(os.getpid()) or time.time()
    record = LocalNode(
        os.getpid(), url, host, port, str(node.get("id", "")), str(node.get("name", "")), started
    )
    path = run_dir(home) / f"node-{record.pid}.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(path, (json.dumps(asdict(record), indent=2) + "\n").encode(), mode=0o644)
    except OSError as exc:
        log.warning("no runtime record for local tools at %s: %s", path, exc)
        return None
    return path


def unregister(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


@contextlib.contextmanager
def removed_at_exit(paths: list[Path | None]) -> Iterator[None]:
    """Remove the records in `paths` (filled while the block runs) when it ends, however."""
    try:
        yield
    finally:
        for path in paths:
            if path is not None:
                unregister(path)


def _read(path: Path) -> LocalNode | None:
    try:
        return LocalNode(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _alive(record: LocalNode) -> bool:
    started = _process_start(record.pid)
    return started is not None and abs(started - record.started_at) < 1.0


def local_nodes(home: Path | None = None) -> list[LocalNode]:
    """The nodes running on this box under this EDGEBOX_HOME, oldest first; records of dead
    processes are removed (best effort)."""
    found = []
    for path in sorted(run_dir(home).glob("node-*.json")):
        record = _read(path)
        if record is not None and _alive(record):
            found.append(record)
        elif record is not None:
            unregister(path)  # its process is gone
    return sorted(found, key=lambda r: r.started_at)
