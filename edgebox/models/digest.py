"""SHA-256 of model files, remembered per (path, size, mtime) so a multi-GB GGUF is read once."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from pathlib import Path

from edgebox.models.bundled import cache_dir

_lock = threading.Lock()
_CHUNK = 4 * 1024 * 1024


def _index_path() -> Path:
    return cache_dir() / "sha256.json"


def _load_index() -> dict[str, str]:
    try:
        data = json.loads(_index_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def file_sha256(path: str | Path) -> str:
    """Hex digest of the file; cached in the user cache until the file changes."""
    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
    with _lock:
        known = _load_index().get(key)
    if known:
        return known
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    value = digest.hexdigest()
    with _lock, contextlib.suppress(OSError):  # a read-only cache only costs a re-hash
        index = _load_index()
        index[key] = value
        target = _index_path()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(index, indent=0))
        tmp.replace(target)
    return value
