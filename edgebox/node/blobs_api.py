"""Peers fetch model bytes from this node: the store's blobs over the `/v1/` key scheme.

- `GET|HEAD /v1/blobs/{sha256}`: the blob's bytes, with `Range` (one range) for chunked,
  parallel, resumable transfers. 404 when the store does not hold it.
- `GET /v1/blobs/{sha256}/chunks`: `{sha256, size, chunk_size, chunks}`, the digest of each
  chunk, so a fetcher verifies every chunk as it arrives.
- `GET /v1/store/models/{name}`: a model's manifest (without local paths), by name or by an
  alias it was pulled as (`ORG/REPO:FILE.gguf`, URL-encoded), so a node can pull a model by
  name, or by its Hugging Face spec while the internet is out of reach, from a peer.

While the node generates, blob bytes are paced to `serve --share-rate` (`blob_pacing.py`). A
peer that stops reading loses the connection after `BlobResponse.send_stall_s`.

The digest must be 64 lowercase hex characters and only ever names a file the store itself
resolves (its blob, or a file a manifest registered): no path from the request reaches disk.
"""

from __future__ import annotations

import asyncio
import os

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from edgebox.api.errors import APIError
from edgebox.models.store import DEFAULT_CHUNK_SIZE, DIGEST, ModelStore, digest_file
from edgebox.node.blob_pacing import BlobPacer
from edgebox.node.state import NodeState

MAX_NAME = 512  # a model's name, or an alias it was pulled as (ORG/REPO:FILE.gguf, a URL)


class _Stalled(Exception):
    """The peer stopped reading: the response ends here and uvicorn closes the connection."""


class BlobResponse(FileResponse):
    """A blob's bytes, paced while the node generates; a send that cannot go out for
    `send_stall_s` (a peer that stopped reading: uvicorn would wait for ever, holding the
    descriptor and one of the key's in-flight places) ends the response."""

    chunk_size = 1 << 20  # fewer thread hops per byte than Starlette's 64 KiB
    pacer: BlobPacer | None = None
    send_stall_s = 30.0  # a whole chunk on a 0.3 Mbit/s link

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pacer, stall = self.pacer, self.send_stall_s

        async def paced(message: Message) -> None:
            if message["type"] == "http.response.body":
                if pacer is not None:
                    await pacer.pace(len(message.get("body", b"")))
                try:
                    await asyncio.wait_for(send(message), stall)
                except TimeoutError:
                    raise _Stalled from None
                return
            await send(message)

        try:
            await super().__call__(scope, receive, paced)
        except _Stalled:
            return


def _store(request: Request) -> ModelStore:
    state: NodeState = request.app.state.node
    if state.store is None:
        raise APIError(404, "this node has no model store", code="no_store")
    return state.store


def _digest(request: Request) -> str:
    digest = request.path_params["digest"]
    if not DIGEST.match(digest):
        raise APIError(
            400, "a blob digest is 64 lowercase hex characters", param="sha256", code="bad_digest"
        )
    return str(digest)


def _not_held(digest: str) -> APIError:
    return APIError(404, f"this node does not hold blob {digest}", code="blob_not_found")


async def blob(request: Request) -> Response:
    store, digest = _store(request), _digest(request)
    found = await asyncio.to_thread(store.find_blob, digest)
    if found is None:
        raise _not_held(digest)
    path, _ = found
    stat = await asyncio.to_thread(os.stat, path)
    headers = {"X-Edgebox-Sha256": digest, "Accept-Ranges": "bytes"}
    response = BlobResponse(
        path,
        stat_result=stat,
        media_type="application/octet-stream",
        headers=headers,
    )
    response.pacer = request.app.state.node.blob_pacer
    return response


async def chunks(request: Request) -> Response:
    store, digest = _store(request), _digest(request)
    found = await asyncio.to_thread(store.find_blob, digest)
    if found is None:
        raise _not_held(digest)
    path, entry = found
    if entry is None:  # a blob no manifest names yet: digest it now
        _, digests = await asyncio.to_thread(digest_file, path, DEFAULT_CHUNK_SIZE)
        size, chunk_size = path.stat().st_size, DEFAULT_CHUNK_SIZE
    else:
        digests, size, chunk_size = entry.chunks, entry.size, entry.chunk_size
    body = {"sha256": digest, "size": size, "chunk_size": chunk_size, "chunks": digests}
    return JSONResponse(body)


async def manifest(request: Request) -> Response:
    store, name = _store(request), str(request.path_params["name"])
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise APIError(400, "not a model name or spec", param="name", code="bad_model_name")
    found = await asyncio.to_thread(store.get, name)
    if found is None:
        raise APIError(404, f"no model named {name} in this node's store", code="model_not_found")
    files = [f.model_copy(update={"location": None}) for f in found.files]
    return JSONResponse(found.model_copy(update={"files": files}).model_dump(mode="json"))
