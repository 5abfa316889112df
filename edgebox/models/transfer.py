"""Fetch one blob in verified chunks from several sources at once, resumably.

Sources are peers (nodes that hold the blob, over their authenticated `/v1/blobs/` route) and,
only for what no peer can give, the internet (a Hugging Face or plain URL). The rules:

- The unit is a chunk (`chunk_size` bytes, fixed per file). With a chunk list (from the peers,
  which must agree; a peer whose list differs is left out), every chunk is checked against its
  digest as it arrives: a bad one is discarded, its peer dropped, and the chunk fetched
  elsewhere. The whole file's SHA-256 is the root of trust: checked at the end; on a mismatch
  the file is discarded and the peers that gave the chunk list are dropped before a retry.
- Progress survives interruption: `partial/<key>.part` holds the bytes and `<key>.done` the
  chunks written and verified (`_partial.py`), so a new fetch continues where the last one
  stopped.
- `max_rate` (bytes/s, shared by every worker) leaves room for inference traffic.
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from edgebox.api.netguard import ConnectGuard
from edgebox.models._partial import InOrderHash, Layout, Partial
from edgebox.models._ranges import RangeAsk, RangeClient, SourceError
from edgebox.models.store import (
    DEFAULT_CHUNK_SIZE,
    DIGEST,
    MAX_CHUNKS,
    ModelStore,
    check_digest,
    chunk_count,
)

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0
MAX_ATTEMPTS_PER_CHUNK = 5
# What a peer's chunk list may say: a chunk is held in memory while it is verified, and the
# list itself is read whole, so both are bounded before a stranger's numbers are believed.
MIN_CHUNK_SIZE, MAX_CHUNK_SIZE = 64 << 10, 64 << 20
MAX_CHUNK_LIST_BYTES = MAX_CHUNKS * 70 + (64 << 10)


class TransferError(Exception):
    """A blob could not be had; the message says why (no source, digest mismatch, ...)."""


class DigestMismatch(TransferError):
    pass


@dataclass(frozen=True)
class Source:
    """Where bytes can come from: `url` answers ranged GETs for the whole blob."""

    url: str
    name: str  # shown in progress: a peer's address, "huggingface", the URL's host
    kind: str = "peer"  # "peer" or "internet"
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # may hold a key
    # the bearer to send now, asked before each request (a hub grant is renewed by
    # heartbeats while a long pull runs); None: `headers` as they are
    bearer: Callable[[], str | None] | None = field(default=None, compare=False, repr=False)

    def request_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        current = self.bearer() if self.bearer is not None else None
        if current:
            headers["Authorization"] = f"Bearer {current}"
        return headers


@dataclass(frozen=True)
class Peer:
    """A node that may hold blobs: its base URL and the key its `/v1/` routes take."""

    url: str
    key: str | None = field(default=None, repr=False)  # a key or grant: kept out of tracebacks
    # the peer's key as it is now, when it can change during a pull (a hub's blob grant)
    renew: Callable[[], str | None] | None = field(default=None, compare=False, repr=False)

    def blob_source(self, digest: str) -> Source:
        headers = (("Authorization", f"Bearer {self.key}"),) if self.key else ()
        base = self.url.rstrip("/")
        url = f"{base}/v1/blobs/{check_digest(digest)}"
        return Source(url, base, "peer", headers, bearer=self.renew)


@dataclass
class ChunkPlan:
    """What is known of the blob before its bytes: size, chunking, digests when known."""

    size: int
    sha256: str | None = None
    chunk_size: int = DEFAULT_CHUNK_SIZE
    chunks: list[str] | None = None  # per-chunk digests, when a peer gave them


@dataclass
class Progress:
    """Shared between the workers and whoever watches (a progress bar, the pull job)."""

    total: int = 0
    done: int = 0
    by_source: Counter[str] = field(default_factory=Counter)
    chunk_sources: dict[int, str] = field(default_factory=dict)
    rejected: list[str] = field(default_factory=list)  # "peer: why" for each dropped source
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, source: str, n: int) -> None:
        with self.lock:
            self.done += n
            self.by_source[source] += n


class RateLimit:
    """A token bucket over every worker; `rate` bytes/s, None for none."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self._lock = threading.Lock()
        self._next = time.monotonic()

    def take(self, n: int) -> None:
        if not self.rate:
            return
        with self._lock:
            now = time.monotonic()
            self._next = max(self._next, now - 0.25) + n / self.rate  # ≤ 0.25 s of burst
            wait = self._next - now
        if wait > 0:
            time.sleep(wait)


def peer_chunk_plan(
    client: httpx.Client, digest: str, peers: list[Peer]
) -> tuple[ChunkPlan | None, list[Peer], list[str]]:
    """Ask each peer for the blob's chunk list; keep the peers of the largest agreeing group.
    Returns (plan, peers that hold it, "peer: why" for those left out)."""
    answers: dict[str, list[Peer]] = {}
    plans: dict[str, ChunkPlan] = {}
    left_out: list[str] = []
    for peer in peers:
        source = peer.blob_source(digest)
        try:
            status, body = bounded_get(
                client, source.url + "/chunks", source.request_headers(), MAX_CHUNK_LIST_BYTES
            )
        except httpx.HTTPError as exc:
            left_out.append(f"{peer.url}: unreachable ({type(exc).__name__})")
            continue
        except ValueError as exc:
            left_out.append(f"{peer.url}: bad chunk list ({exc})")
            continue
        if status != 200:
            left_out.append(f"{peer.url}: HTTP {status}")
            continue
        try:
            plan = _parse_chunk_list(json.loads(body), digest)
        except (ValueError, TypeError, KeyError) as exc:
            left_out.append(f"{peer.url}: bad chunk list ({exc})")
            continue
        key = json.dumps([plan.size, plan.chunk_size, plan.chunks])
        answers.setdefault(key, []).append(peer)
        plans[key] = plan
    if not answers:
        return None, [], left_out
    best = max(answers, key=lambda k: len(answers[k]))
    for key, group in answers.items():
        if key != best:
            left_out += [f"{p.url}: its chunk list disagrees with the other peers'" for p in group]
    return plans[best], answers[best], left_out


def bounded_get(
    client: httpx.Client, url: str, headers: dict[str, str], limit: int
) -> tuple[int, bytes]:
    """(status, body) of a GET to a peer whose body is at most `limit` bytes; ValueError past
    that (a peer that answers without end is cut off, not read into memory). A redirect is
    answered as it is, not followed: a peer does not aim the node's requests elsewhere."""
    with client.stream("GET", url, headers=headers, follow_redirects=False) as r:
        body = bytearray()
        for piece in r.iter_bytes():
            body += piece
            if len(body) > limit:
                raise ValueError(f"answer longer than {limit} bytes")
        return r.status_code, bytes(body)


def _parse_chunk_list(body: dict[str, object], digest: str) -> ChunkPlan:
    size, chunk_size, chunks = body["size"], body["chunk_size"], body["chunks"]
    if not (isinstance(size, int) and isinstance(chunk_size, int) and isinstance(chunks, list)):
        raise ValueError("size, chunk_size and chunks must be integers and a list")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE or len(chunks) > MAX_CHUNKS:
        raise ValueError(
            f"chunk_size must be {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE} bytes, in at most "
            f"{MAX_CHUNKS} chunks"
        )
    if size < 0 or chunk_size <= 0 or len(chunks) != chunk_count(size, chunk_size):
        raise ValueError("the chunk count does not match size and chunk_size")
    if not all(isinstance(c, str) and DIGEST.match(c) for c in chunks):
        raise ValueError("chunk digests must be 64 hex characters")
    return ChunkPlan(size, digest, chunk_size, list(chunks))


class _Keeper:
    """Writes verified chunks (and feeds them to the whole-file hash) on a thread of its own,
    so a worker asks its source for the next chunk while the last one is still being written:
    an 8 MiB `pwrite` into fresh page cache takes 30-140 ms on a busy 2-core box, time the
    worker's connection would otherwise stand idle. At most `depth` chunks wait."""

    def __init__(self, partial: Partial, whole: InOrderHash, depth: int) -> None:
        self.partial, self.whole = partial, whole
        self.error: OSError | None = None
        self._queue: queue.Queue[tuple[int, bytearray, str] | None] = queue.Queue(depth)
        self._thread = threading.Thread(target=self._keep, name="chunk-writer", daemon=True)
        self._thread.start()

    def put(self, index: int, data: bytearray, digest: str) -> None:
        if self.error is not None:
            raise self.error
        self._queue.put((index, data, digest))

    def _keep(self) -> None:
        while (item := self._queue.get()) is not None:
            if self.error is not None:
                continue  # drained, not written: the download is failing anyway
            index, data, digest = item
            try:
                self.partial.write(index, data, digest)
            except OSError as exc:
                self.error = exc
                continue
            self.whole.landed(index, data)

    def close(self) -> None:
        """Once every queued chunk is written; OSError when one could not be."""
        self._queue.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error


class _BadChunk(Exception):
    """A source sent bytes that do not match the chunk's digest."""


@dataclass
class SourcePool:
    """Who may serve which chunk: peers first; the internet only when no peer is left."""

    peers: list[Source]
    internet: list[Source]
    dropped: set[str] = field(default_factory=set)
    busy: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def pick(self, tried: set[str]) -> Source | None:
        with self.lock:
            for pool in (self.peers, self.internet):
                live = [s for s in pool if s.name not in self.dropped and s.name not in tried]
                if live:
                    chosen = min(live, key=lambda s: self.busy[s.name])
                    self.busy[chosen.name] += 1
                    return chosen
            return None

    def release(self, source: Source) -> None:
        with self.lock:
            self.busy[source.name] -= 1

    def drop(self, name: str) -> None:
        with self.lock:
            self.dropped.add(name)


class BlobFetch:
    """One blob's download into `store`; `run()` returns the blob's path once verified."""

    def __init__(
        self,
        store: ModelStore,
        plan: ChunkPlan,
        sources: SourcePool,
        *,
        client: httpx.Client,
        progress: Progress | None = None,
        max_rate: float | None = None,
        workers: int = 4,
        key: str | None = None,
        guard: ConnectGuard | None = None,
    ) -> None:
        self.store, self.plan, self.sources, self.client = store, plan, sources, client
        self.progress = progress or Progress()
        self.limit = RateLimit(max_rate)
        self.workers = workers
        self.key = key or plan.sha256 or ""
        self.cancelled = threading.Event()
        self.chunks: list[str] = []
        self.ranges = RangeClient(READ_TIMEOUT_S, guard)
        self._keeper: _Keeper | None = None

    def run(self) -> Path:
        layout = Layout(self.plan.size, self.plan.chunk_size, self.plan.chunks)
        partial = Partial(self.store.partial_path(self.key), layout)
        whole = InOrderHash(partial)
        try:
            return self._run(partial, whole)
        finally:
            whole.stop()
            partial.close()

    def _run(self, partial: Partial, whole: InOrderHash) -> Path:
        layout = partial.layout
        with self.progress.lock:  # the watcher set `total`; resumed chunks count as done
            self.progress.done += sum(layout.length(i) for i in partial.done)
        pending = [i for i in range(layout.count) if i not in partial.done]
        self._download(partial, whole, pending)
        digest = whole.result()
        if self.plan.sha256 and digest != self.plan.sha256:
            partial.discard()
            raise DigestMismatch(
                f"the downloaded file's sha256 is {digest}, expected {self.plan.sha256}; "
                "the partial download was discarded"
            )
        self.chunks = [partial.done[i] for i in range(layout.count)]
        blob = self.store.commit_blob(digest, partial.path)
        partial.forget()
        return blob

    def _download(self, partial: Partial, whole: InOrderHash, pending: list[int]) -> None:
        todo = list(reversed(pending))
        errors: list[BaseException] = []
        lock = threading.Lock()

        def worker() -> None:
            while not self.cancelled.is_set() and not errors:
                with lock:
                    if not todo:
                        return
                    index = todo.pop()
                try:
                    self._chunk(partial, whole, index)
                except BaseException as exc:
                    errors.append(exc)
                    self.cancelled.set()

        self._keeper = _Keeper(partial, whole, depth=self.workers)
        threads = [threading.Thread(target=worker, daemon=True) for _ in range(self.workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        try:
            self._keeper.close()
        except OSError as exc:
            errors.insert(0, TransferError(f"writing the download failed: {exc.strerror}"))
        if errors:
            raise errors[0]
        if self.cancelled.is_set():
            raise TransferError("the download was cancelled; run it again to resume")

    def _chunk(self, partial: Partial, whole: InOrderHash, index: int) -> None:
        """Fetch chunk `index` from the best source that has not failed it yet."""
        tried: set[str] = set()
        for _ in range(MAX_ATTEMPTS_PER_CHUNK + len(self.sources.peers)):
            source = self.sources.pick(tried)
            if source is None:
                break
            try:
                self._fetch_range(partial, whole, index, source)
            except _BadChunk as exc:
                self.sources.drop(source.name)
                self.progress.rejected.append(f"{source.name}: {exc}")
                tried.add(source.name)
                continue
            except SourceError:
                tried.add(source.name)
                continue
            except OSError as exc:  # our own disk: no other source helps
                raise TransferError(f"writing the download failed: {exc.strerror}") from exc
            finally:
                self.sources.release(source)
            with self.progress.lock:
                self.progress.chunk_sources[index] = source.name
            return
        raise TransferError(
            f"no source could give chunk {index} of the blob "
            f"(tried: {', '.join(sorted(tried)) or 'none'})"
        )

    def _fetch_range(
        self, partial: Partial, whole: InOrderHash, index: int, source: Source
    ) -> None:
        """Chunk `index` from `source`: checked against its digest, written, and handed to
        the whole-file hash."""
        start = index * self.plan.chunk_size
        buf = bytearray(partial.layout.length(index))
        got = 0

        def block(n: int) -> None:
            nonlocal got
            got += n
            self.limit.take(n)
            self.progress.add(source.name, n)
            if self.cancelled.is_set():
                raise TransferError("cancelled")

        try:
            headers = source.request_headers()
            ask = RangeAsk(source.url, headers, start, memoryview(buf), block, source.kind)
            self.ranges.read_into(ask)
        except BaseException:
            self.progress.add(source.name, -got)
            raise
        digest = hashlib.sha256(buf).hexdigest()
        if self.plan.chunks and digest != self.plan.chunks[index]:
            self.progress.add(source.name, -got)
            raise _BadChunk(f"chunk {index} did not match its digest")
        assert self._keeper is not None
        self._keeper.put(index, buf, digest)
