"""A download in progress: its bytes, the chunks done (with their digests), and the whole
file's SHA-256 computed in order as chunks land, so no second read is needed at the end."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from edgebox.models.store import chunk_count

MAX_HELD_CHUNKS = 16  # out-of-order chunks kept in memory for the hash; later ones are re-read


@dataclass(frozen=True)
class Layout:
    size: int
    chunk_size: int
    chunks: list[str] | None  # the expected digests, when known

    def length(self, index: int) -> int:
        start = index * self.chunk_size
        return max(0, min(self.chunk_size, self.size - start))

    @property
    def count(self) -> int:
        return chunk_count(self.size, self.chunk_size)


class Partial:
    """`<key>.part` (the bytes), `<key>.json` (the layout it was started with) and
    `<key>.done` (one line per chunk written: index and digest, appended, so recording a chunk
    costs the same at chunk 5 and chunk 5,000)."""

    def __init__(self, path: Path, layout: Layout) -> None:
        self.path, self.layout = path, layout
        self.state_path = path.with_suffix(".json")
        self.done_path = path.with_suffix(".done")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.done: dict[int, str] = self._load()
        if not self.done:
            self._start()
        self._lock = threading.Lock()
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        os.ftruncate(self.fd, layout.size)

    def _layout_json(self) -> dict[str, object]:
        return {
            "size": self.layout.size,
            "chunk_size": self.layout.chunk_size,
            "chunks": self.layout.chunks,
        }

    def _start(self) -> None:
        self.done_path.unlink(missing_ok=True)
        tmp = self.state_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self._layout_json()))
        tmp.replace(self.state_path)

    def _load(self) -> dict[int, str]:
        try:
            same = json.loads(self.state_path.read_text()) == self._layout_json()
            lines = self.done_path.read_text().splitlines() if same else []
        except (OSError, ValueError):
            return {}
        if not self.path.is_file():
            return {}
        done = {}
        for line in lines:  # a torn last line (a crash mid-append) is skipped
            index, _, digest = line.partition(" ")
            if index.isdigit() and int(index) < self.layout.count and len(digest) == 64:
                done[int(index)] = digest
        return done

    def write(self, index: int, data: bytes | bytearray, digest: str) -> None:
        """Write chunk `index`, then record it (its digest) as done."""
        os.pwrite(self.fd, data, index * self.layout.chunk_size)
        with self._lock:
            self.done[index] = digest
            with self.done_path.open("a") as log:
                log.write(f"{index} {digest}\n")

    def read(self, index: int) -> bytes:
        return os.pread(self.fd, self.layout.length(index), index * self.layout.chunk_size)

    def discard(self) -> None:
        self.done.clear()
        self.state_path.unlink(missing_ok=True)
        self.done_path.unlink(missing_ok=True)
        os.ftruncate(self.fd, 0)
        os.ftruncate(self.fd, self.layout.size)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def forget(self) -> None:
        self.state_path.unlink(missing_ok=True)
        self.done_path.unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)


class InOrderHash:
    """The whole file's SHA-256, fed chunk by chunk in order by a thread of its own: chunks
    that land early wait in memory (up to MAX_HELD_CHUNKS, else they are read back)."""

    def __init__(self, partial: Partial) -> None:
        self.partial = partial
        self.digest = hashlib.sha256()
        self.next = 0
        self._held: dict[int, bytes | bytearray] = {}
        self._ready = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._feed, name="whole-sha256", daemon=True)
        self._thread.start()

    def landed(self, index: int, data: bytes | bytearray) -> None:
        with self._ready:
            if index == self.next or len(self._held) < MAX_HELD_CHUNKS:
                self._held[index] = data
            self._ready.notify()

    def _take(self) -> bytes | bytearray | None:
        with self._ready:
            while True:
                if self._stopped or self.next >= self.partial.layout.count:
                    return None
                if self.next in self._held:
                    return self._held.pop(self.next)
                if self.next in self.partial.done:  # done earlier, or dropped from memory
                    return self.partial.read(self.next)
                self._ready.wait(0.5)

    def _feed(self) -> None:
        while (data := self._take()) is not None:
            self.digest.update(data)  # outside the lock: workers keep landing chunks
            self.next += 1

    def result(self) -> str:
        """The hex digest, once every chunk has landed."""
        with self._ready:
            self._ready.notify()
        self._thread.join()
        if self.next < self.partial.layout.count:
            raise RuntimeError("the hash stopped before the last chunk")
        return self.digest.hexdigest()

    def stop(self) -> None:
        with self._ready:
            self._stopped = True
            self._ready.notify()
        self._thread.join()
