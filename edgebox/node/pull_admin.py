"""Tell a node to pull a model into its store: `POST /admin/models/pull`, then watch it with
`GET /admin/models/pull/{job}` (and list jobs with `GET /admin/models/pull`).

Body: `{"spec": "ORG/REPO:FILE.gguf" | URL | path | NAME, "sha256"?: hex, "name"?: store name,
"peers"?: [URL | {"url", "key"?}], "max_rate"?: bytes/s}`. Without `peers` the node asks the
peers its agent knows (the hub's registry of who holds which blob, or mDNS neighbours). A
named peer without a key gets the node's own peer key (its fleet or API key), except when the
pull came with the pull key: then only peers the node found itself get it (else the pull key
would hand the node's inference key to any URL its holder names).
The answer is 202 with the job; the spec is checked (bad spec, 404, offline, disk full) in
the job, whose `state` goes queued → running → done | failed, with `error` saying why.
A job reports bytes done and total, bytes per source and the source of each chunk.

At most `MAX_RUNNING_PULLS` jobs run at once (more: 429 with Retry-After); a pull of a spec a
running job already pulls (same `sha256` and `name`) answers with that job.

A URL spec reaches public addresses only, its redirects included, checked when each
connection is made (`api/netguard.ConnectGuard`); an internal one (loopback, private,
link-local, metadata) is refused with 400 naming `spec`, unless the node was started with
`--allow-private-pulls` (a model mirror on the LAN). Peers are not held to it: the node
chose them.

A spec that is a path on the node must be a GGUF file (its first bytes say so): the admin
key pulls models, it does not read the node's files (a key, a folder of secrets), whose bytes
every inference key could then fetch from `/v1/blobs/`. Other local models are registered on
the node itself (`edgebox pull PATH`).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from edgebox.api.body import read_json
from edgebox.api.errors import APIError
from edgebox.api.netguard import BlockedAddress, ConnectGuard, shown_url
from edgebox.models.pull import MAX_SPEC, Pull, PullError, plan_pull
from edgebox.models.remote import http_client
from edgebox.models.transfer import Peer
from edgebox.node.openai_api import parse
from edgebox.node.state import NodeState

MAX_JOBS_KEPT = 64
MAX_PEERS = 64
MAX_RUNNING_PULLS = 2  # each takes 4 workers and the link; more would only share it thinner
RETRY_AFTER_S = 10
_ids = itertools.count(1)


class PeerRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(pattern=r"^https?://", max_length=512)
    key: str | None = Field(default=None, max_length=512)


class PullRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    spec: str = Field(min_length=1, max_length=MAX_SPEC)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    name: str | None = Field(default=None, max_length=128)
    peers: list[PeerRef | str] | None = Field(default=None, max_length=MAX_PEERS)
    max_rate: float | None = Field(default=None, gt=0)


class PullJob:
    """A pull running in a thread of the node; `to_json` is what the status route answers."""

    def __init__(self, request: PullRequest) -> None:
        self.id = f"pull-{next(_ids)}"
        self.request = request
        self.pull: Pull | None = None
        self.state = "queued"
        self.error: str | None = None
        self.started = time.time()
        self.finished: float | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "job": self.id,
            "spec": shown_url(self.request.spec),  # the pull key reads it: no credentials
            "state": self.pull.state if self.pull else self.state,
            "error": (self.pull.error if self.pull else None) or self.error,
            "bytes_done": 0,
            "bytes_total": None,
            "sources": {},
            "chunks": {},
            "rejected": [],
            "model": None,
            "started": self.started,
            "finished": self.finished,
        }
        if self.pull is not None:
            p = self.pull.progress
            with p.lock:
                body.update(
                    bytes_done=p.done,
                    bytes_total=p.total,
                    sources=dict(p.by_source),
                    chunks={str(i): s for i, s in sorted(p.chunk_sources.items())},
                    rejected=list(p.rejected),
                )
            if self.pull.manifest is not None:
                body["model"] = self.pull.manifest.name
        return body


def _peers(request: PullRequest, state: NodeState, *, trusted: bool) -> list[Peer]:
    """The pull's peers. An untrusted caller (the pull key) names peers that get no key of
    this node's unless the node found them itself: its key opens inference here."""
    found = list(state.find_peers()) if state.find_peers else []
    if request.peers is None:
        return found
    # a named peer the fleet also lists (a hub node: `edgebox deploy`) takes the fleet's
    # credential for it (its blob grant, renewed by heartbeats), else this node's peer key
    known = {p.url.rstrip("/"): p for p in found if p.key}
    peers = []
    for named in request.peers:
        url, key = (named, None) if isinstance(named, str) else (named.url, named.key)
        listed = known.get(url.rstrip("/"))
        if key or listed is None:
            peers.append(Peer(url, key or (state.peer_key if trusted else None)))
        else:
            peers.append(Peer(url, listed.key, renew=listed.renew))
    return peers


def _guard(spec: str, state: NodeState, peers: list[Peer]) -> ConnectGuard | None:
    """What a URL spec's connections are held to; None: nothing (an allowing node, no URL)."""
    if state.pull_private or not spec.startswith(("http://", "https://")):
        return None
    hosts = (urlsplit(p.url).hostname for p in peers)
    return ConnectGuard(allow_hosts=frozenset(h for h in hosts if h))


def _run(job: PullJob, state: NodeState, trusted: bool) -> None:
    assert state.store is not None
    try:
        peers = _peers(job.request, state, trusted=trusted)
        guard = _guard(job.request.spec, state, peers)
        client = http_client(guard)
        plan = plan_pull(
            job.request.spec,
            sha256=job.request.sha256,
            name=job.request.name,
            peers=peers,
            client=client,
        )
        job.pull = Pull(
            state.store,
            plan,
            peers=peers,
            max_rate=job.request.max_rate,
            guard=guard,
            client=client,
        )
        job.pull.run()
    except PullError as exc:
        job.state, job.error = "failed", str(exc)
    except Exception as exc:  # a job must end in a state, never hang as "running"
        job.state, job.error = "failed", f"internal error: {type(exc).__name__}"
    finally:
        job.finished = time.time()


async def start_pull(request: Request) -> Response:
    state: NodeState = request.app.state.node
    if state.store is None:
        raise APIError(409, "this node has no model store", code="no_store")
    body = parse(PullRequest, await read_json(request, 64 << 10))
    for peer in body.peers or []:
        url = peer if isinstance(peer, str) else peer.url
        if not url.startswith(("http://", "https://")) or len(url) > 512:
            raise APIError(400, "peers are http(s) URLs", param="peers", code="bad_peer")
    if not _parses(body.spec):
        raise APIError(400, "spec is not a valid URL", param="spec", code="bad_spec")
    if not await asyncio.to_thread(_model_or_remote, body.spec):
        raise APIError(
            400,
            "a local path pulled through the admin API must be a GGUF file; register other "
            "files on the node itself (`edgebox pull PATH`)",
            param="spec",
            code="not_a_model_file",
        )
    await _check_url(body.spec, state)
    running = [j for j in state.pulls.values() if j.finished is None]
    for same in running:
        if _joins(same.request, body):
            return JSONResponse(same.to_json(), status_code=202)
    if len(running) >= MAX_RUNNING_PULLS:
        raise APIError(
            429,
            f"{len(running)} pulls are running on this node (at most {MAX_RUNNING_PULLS} at "
            "once); retry when one ends",
            type="rate_limit_error",
            code="too_many_pulls",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    job = PullJob(body)
    jobs = state.pulls
    jobs[job.id] = job
    for old in list(jobs)[:-MAX_JOBS_KEPT]:
        if jobs[old].finished is not None:
            del jobs[old]
    trusted = not getattr(request.state, "pull_key_only", False)
    threading.Thread(target=_run, args=(job, state, trusted), name=job.id, daemon=True).start()
    await asyncio.sleep(0)
    return JSONResponse(job.to_json(), status_code=202)


def _parses(spec: str) -> bool:
    """False for a URL spec whose host or port does not parse (`http://[bad/…`)."""
    if not spec.startswith(("http://", "https://")):
        return True
    try:
        _ = urlsplit(spec).port  # reading the port parses the host and the port
    except ValueError:
        return False
    return True


def _joins(running: PullRequest, asked: PullRequest) -> bool:
    """Whether `asked` is what `running` already pulls (its name too, where it gives one)."""
    return (
        running.spec == asked.spec
        and running.sha256 == asked.sha256
        and asked.name in (None, running.name)
    )


async def _check_url(spec: str, state: NodeState) -> None:
    """400 naming `spec` for a URL whose host resolves to an internal address (the connect
    checks again: the name may resolve differently then)."""
    guard = _guard(spec, state, [])
    host = urlsplit(spec).hostname if guard is not None else None
    if guard is None or host is None:
        return
    try:
        await asyncio.to_thread(guard.resolve, host, 443)
    except BlockedAddress as exc:
        raise APIError(400, str(exc), param="spec", code="internal_address") from None
    except (OSError, UnicodeError):
        return  # does not resolve now: the job says so (offline)


def _model_or_remote(spec: str) -> bool:
    """False for a spec naming something on this node's disk that is not a GGUF file (what
    it links to is read, so a `model.gguf` link to a secret is refused too)."""
    if spec.startswith(("http://", "https://")):
        return True
    try:
        local = Path(spec).expanduser()
        if not local.exists():
            return True  # a name or a Hugging Face spec
        with local.open("rb") as f:  # a folder raises IsADirectoryError
            return local.is_file() and f.read(4) == b"GGUF"
    except (OSError, ValueError, RuntimeError):
        return False


async def pull_status(request: Request) -> Response:
    state: NodeState = request.app.state.node
    job = state.pulls.get(request.path_params["job"])
    if job is None:
        raise APIError(404, "no pull job with that id on this node", param="job", code="no_job")
    return JSONResponse(job.to_json())


async def list_pulls(request: Request) -> Response:
    state: NodeState = request.app.state.node
    return JSONResponse({"object": "list", "data": [j.to_json() for j in state.pulls.values()]})
