"""Moving one sequence's KV cache between nodes, for the router's prefill/decode split.

Wire format of a snapshot (`application/x-edgebox-kv`), streamed in chunks both ways:

    b"EBKV1\\n" + JSON header + b"\\n" + raw llama.cpp sequence state + logits

The header holds the fingerprint, the prefilled token ids and the byte counts of the state
(`bytes`) and of the float32 logits after the last token (`logits`, 0 when absent), so a
receiver refuses an incompatible or oversized snapshot before reading the payload.

Routes:
- `POST /v1/edgebox/kv/prefill`: body as for chat or completions (one prompt). Prefills
  the prompt and streams the snapshot back, with the logits after its last token: the
  node that imports it samples the first token from them, exactly as an unsplit run would.
- `PUT /v1/edgebox/kv/{model}`: upload a snapshot; answers `{"id": ...}`. A following
  `/v1/chat/completions` or `/v1/completions` with header `X-Edgebox-KV: <id>` imports it
  instead of prefilling those tokens (single use; expires after `KVStore.ttl_s`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from starlette.responses import JSONResponse, Response, StreamingResponse

from edgebox.api.errors import APIError
from edgebox.api.kv import KV_HEADER, MAGIC, MEDIA_TYPE
from edgebox.node.refusals import queue_full_error
from edgebox.runtimes.base import (
    BackendError,
    FinishEvent,
    GenerationRequest,
    KVInvalidError,
    KVSnapshot,
    QueueFullError,
    RequestHandle,
    Runtime,
    fingerprint_mismatch,
)

CHUNK_BYTES = 1 << 20
_MAX_HEADER_BYTES = 16 << 20
_MAX_LOGITS_BYTES = 4 << 22  # float32 logits for a vocabulary of up to 4M tokens


def encode_header(kv: KVSnapshot) -> bytes:
    header = {
        "fingerprint": dict(kv.fingerprint),
        "tokens": list(kv.tokens),
        "bytes": len(kv.data),
        "logits": len(kv.logits),
    }
    return MAGIC + json.dumps(header, separators=(",", ":")).encode() + b"\n"


def iter_snapshot(kv: KVSnapshot, chunk: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
    async def chunks() -> AsyncIterator[bytes]:
        yield encode_header(kv)
        for part in (kv.data, kv.logits):
            view = memoryview(part)
            for start in range(0, len(view), chunk):
                yield bytes(view[start : start + chunk])

    return chunks()


@dataclass(frozen=True)
class SnapshotHeader:
    fingerprint: Mapping[str, str]
    tokens: Sequence[int]
    n_bytes: int  # the sequence state
    n_logits: int = 0  # bytes of logits after it

    @property
    def total(self) -> int:
        return self.n_bytes + self.n_logits


def _bad_snapshot(message: str) -> APIError:
    return APIError(400, f"not an edgebox KV snapshot: {message}", param="body", code="invalid_kv")


def _byte_count(value: object, key: str) -> int:
    """A header's byte count: a JSON integer (not a string, a float or a boolean)."""
    if type(value) is not int:
        raise ValueError(f"'{key}' is {json.dumps(value)[:40]}, not a whole number")
    return value


def parse_header(line: bytes) -> SnapshotHeader:
    try:
        data = json.loads(line)
        fingerprint = {str(k): str(v) for k, v in data["fingerprint"].items()}
        tokens = [int(t) for t in data["tokens"]]
        n_bytes = _byte_count(data["bytes"], "bytes")
        n_logits = _byte_count(data.get("logits", 0), "logits")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise _bad_snapshot(f"unreadable header ({exc})") from exc
    if n_bytes <= 0 or not tokens:
        raise _bad_snapshot("empty snapshot")
    if not 0 <= n_logits <= _MAX_LOGITS_BYTES or n_logits % 4:
        raise _bad_snapshot(f"{n_logits} bytes of logits is not a float32 vocabulary row")
    return SnapshotHeader(fingerprint, tokens, n_bytes, n_logits)


async def read_snapshot(
    chunks: AsyncIterator[bytes],
    expected: Mapping[str, str],
    max_bytes: int,
    reserve: Callable[[int], None] = lambda n: None,
) -> KVSnapshot:
    """Read a streamed snapshot, refusing a mismatch or an oversized one from its header.

    `reserve(n)` is called with the declared size before the payload is read (it raises to
    refuse), so concurrent uploads cannot together outgrow the store's limit."""
    buf = bytearray()
    header: SnapshotHeader | None = None
    async for chunk in chunks:
        buf += chunk
        if header is None:
            end = buf.find(b"\n", len(MAGIC))
            if len(buf) >= len(MAGIC) and not buf.startswith(MAGIC):
                raise _bad_snapshot("wrong magic")
            if end < 0:
                if len(buf) > _MAX_HEADER_BYTES:
                    raise _bad_snapshot("header too long")
                continue
            header = parse_header(bytes(buf[len(MAGIC) : end]))
            problem = fingerprint_mismatch(expected, header.fingerprint)
            if problem:
                raise APIError(409, problem, param="fingerprint", code="kv_incompatible")
            if header.total > max_bytes:
                raise APIError(
                    413,
                    f"the KV snapshot is {header.total} bytes; this node takes at most {max_bytes}",
                    code="request_too_large",
                )
            reserve(header.total)
            del buf[: end + 1]
        if len(buf) > header.total:
            raise _bad_snapshot(f"more than the {header.total} bytes its header declares")
    if header is None:
        raise _bad_snapshot("no header")
    if len(buf) != header.total:
        raise _bad_snapshot(f"{len(buf)} bytes received, {header.total} declared")
    data, logits = bytes(buf[: header.n_bytes]), bytes(buf[header.n_bytes :])
    return KVSnapshot(header.fingerprint, tuple(header.tokens), data, logits)


@dataclass(frozen=True)
class _Held:
    model: str
    kv: KVSnapshot
    deadline: float
    client: str


class KVStore:
    """Uploaded snapshots waiting for the request that uses them: bounded, expiring, single use.

    Bounds: `max_bytes` over all uploads (stored and still arriving; 503 past it), and per
    client address `per_client_uploads` and `per_client_bytes` (429 with Retry-After past
    them), so one client cannot hold the whole store. An upload is kept `ttl_s`: a router
    uses it within milliseconds of uploading it."""

    def __init__(
        self,
        max_bytes: int = 1 << 30,
        ttl_s: float = 30.0,
        per_client_bytes: int = 512 << 20,
        per_client_uploads: int = 8,
    ) -> None:
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.per_client_bytes = per_client_bytes
        self.per_client_uploads = per_client_uploads
        self._items: dict[str, _Held] = {}
        self._reserved: dict[str, int] = {}  # bytes of uploads still being received, per client
        self._arriving: dict[str, int] = {}  # uploads being received, per client
        self._lock = threading.Lock()

    def _expire(self, t: float) -> None:
        for key in [k for k, held in self._items.items() if held.deadline < t]:
            del self._items[key]

    def used_bytes(self) -> int:
        with self._lock:
            self._expire(time.monotonic())
            return sum(held.kv.size for held in self._items.values())

    def _client_use(self, client: str) -> tuple[int, int]:
        """Uploads and bytes the client holds: stored and still arriving."""
        mine = [h for h in self._items.values() if h.client == client]
        uploads = len(mine) + self._arriving.get(client, 0)
        return uploads, sum(h.kv.size for h in mine) + self._reserved.get(client, 0)

    def _client_limit(self, client: str, message: str) -> APIError:
        deadlines = [h.deadline for h in self._items.values() if h.client == client]
        wait = min(deadlines, default=time.monotonic() + 1) - time.monotonic()
        return APIError(
            429,
            f"{message}; uploads are used by the next request or dropped after {self.ttl_s:g} s",
            type="rate_limit_error",
            code="kv_client_limit",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )

    @contextlib.contextmanager
    def receiving(self, client: str = "") -> Iterator[Callable[[int], None]]:
        """Reserve room for one upload while it is read; the reservation ends with the block.

        Refused at once (429) when the client already holds its share of uploads."""
        held = 0
        with self._lock:
            self._expire(time.monotonic())
            uploads, _ = self._client_use(client)
            if uploads >= self.per_client_uploads:
                raise self._client_limit(
                    client, f"this client holds {uploads} KV uploads awaiting use, the most allowed"
                )
            self._arriving[client] = self._arriving.get(client, 0) + 1

        def reserve(n: int) -> None:
            nonlocal held
            with self._lock:
                self._expire(time.monotonic())
                _, mine = self._client_use(client)
                if mine + n > self.per_client_bytes:
                    raise self._client_limit(
                        client,
                        f"this client holds {mine} bytes of KV uploads awaiting use; this "
                        f"{n}-byte snapshot would pass the {self.per_client_bytes}-byte limit",
                    )
                used = sum(self._reserved.values()) + sum(h.kv.size for h in self._items.values())
                if used + n > self.max_bytes:
                    raise APIError(
                        503,
                        f"the node holds {used} bytes of uploaded KV awaiting use; "
                        f"this {n}-byte snapshot would pass its {self.max_bytes}-byte limit",
                        type="server_error",
                        code="kv_store_full",
                        headers={"Retry-After": "5"},
                    )
                self._reserved[client] = self._reserved.get(client, 0) + n
                held += n

        try:
            yield reserve
        finally:
            with self._lock:
                self._reserved[client] = self._reserved.get(client, 0) - held
                self._arriving[client] -= 1
                if not self._arriving[client]:
                    del self._arriving[client], self._reserved[client]

    def put(self, model: str, kv: KVSnapshot, key: str | None = None, client: str = "") -> str:
        """Store a received snapshot (its room was reserved while it was read)."""
        with self._lock:
            key = key or "kv-" + secrets.token_urlsafe(12)
            self._items[key] = _Held(model, kv, time.monotonic() + self.ttl_s, client)
            return key

    def take(self, key: str, model: str) -> KVSnapshot:
        with self._lock:
            self._expire(time.monotonic())
            held = self._items.get(key)
            if held is None or held.model != model:
                raise APIError(
                    404,
                    f"no uploaded KV snapshot '{key}' for model '{model}' "
                    "(unknown, already used or expired)",
                    param=KV_HEADER,
                    code="kv_not_found",
                )
            del self._items[key]
            return held.kv


class KVChecking(Protocol):
    """What a runtime with KV export offers to check an upload (LlamaCppRuntime)."""

    def validate_kv(self, kv: KVSnapshot) -> None: ...

    def probe_kv(
        self, kv: KVSnapshot, timeout: float | None, done: Callable[[Exception | None], None]
    ) -> RequestHandle | None: ...


async def check_upload(runtime: Runtime, kv: KVSnapshot, timeout: float | None) -> None:
    """Refuse an upload whose bytes do not hold what it claims (400 `invalid_kv`) or on which
    the model cannot decode a token (422 `kv_undecodable`), before it is stored."""
    checking = cast(KVChecking, runtime)
    try:
        await asyncio.to_thread(checking.validate_kv, kv)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Exception | None] = loop.create_future()

        def finished(outcome: Exception | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: shutting down
                loop.call_soon_threadsafe(done.set_result, outcome)

        handle = checking.probe_kv(kv, timeout, finished)
        if handle is None:
            return
        try:
            outcome = await done
        finally:
            handle.cancel()
        if outcome is not None:
            raise outcome
    except KVInvalidError as exc:
        if exc.undecodable:
            raise APIError(422, str(exc), param="body", code="kv_undecodable") from exc
        raise APIError(400, str(exc), param="body", code="invalid_kv") from exc
    except QueueFullError as exc:
        raise queue_full_error(exc) from exc
    except BackendError as exc:
        raise APIError(500, str(exc), type="server_error", code="kv_check_failed") from exc


async def prefill_export(runtime: Runtime, prompt: Sequence[int], timeout: float | None) -> Any:
    """Prefill the prompt and return the FinishEvent holding its snapshot (with logits)."""
    if len(prompt) < 2:
        raise APIError(400, "the prompt must be at least 2 tokens to split", param="messages")
    loop = asyncio.get_running_loop()
    done: asyncio.Future[FinishEvent] = loop.create_future()

    def sink(event: object) -> None:
        if isinstance(event, FinishEvent):
            with contextlib.suppress(RuntimeError):  # the loop is gone: shutting down
                loop.call_soon_threadsafe(done.set_result, event)

    await asyncio.to_thread(runtime.kv_fingerprint)  # the model hash, off the engine thread
    request = GenerationRequest(prompt_tokens=list(prompt), export_kv=True, timeout=timeout)
    try:
        handle = runtime.submit(request, sink)
    except QueueFullError as exc:
        raise queue_full_error(exc) from exc
    try:
        return await done
    finally:
        handle.cancel()


def snapshot_response(kv: KVSnapshot, prefill_s: float, cached: int) -> Response:
    return StreamingResponse(
        iter_snapshot(kv),
        media_type=MEDIA_TYPE,
        headers={
            "x-edgebox-kv-tokens": str(len(kv.tokens)),
            "x-edgebox-kv-bytes": str(len(kv.data)),
            "x-edgebox-kv-cached-tokens": str(cached),
            "x-edgebox-prefill-ms": f"{prefill_s * 1000:.1f}",
        },
    )


def upload_response(key: str, model: str, kv: KVSnapshot, ttl_s: float) -> Response:
    return JSONResponse(
        {
            "id": key,
            "object": "edgebox.kv",
            "model": model,
            "tokens": len(kv.tokens),
            "bytes": len(kv.data),
            "logits_bytes": len(kv.logits),
            "expires_in": ttl_s,
        },
        status_code=201,
    )
