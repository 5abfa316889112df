"""`edgebox pull SPEC`: put a model into the store, from peers first, else from the internet.

SPEC is one of:
- `ORG/REPO` (or `hf://ORG/REPO`): a Hugging Face MLX model directory (`hf_repo.py`).
- `ORG/REPO:FILE.gguf` (or `hf://ORG/REPO/FILE.gguf`): a Hugging Face file; a split GGUF
  (`…-00001-of-00003.gguf`) brings all its parts. The hub's metadata gives each file's size
  and LFS sha256 (`X-Linked-Size`, `X-Linked-Etag`), so every byte is verified.
- an `http(s)://` URL: its size from HEAD; its digest from `--sha256` when given (else the
  file is trusted as served, and its digest recorded).
- a local path: registered in place (hardlinked when the filesystem allows, else copied).
- a model NAME another node holds: its manifest and blobs come from the peers given.

Everything is checked before a byte is downloaded: the spec, that the files exist (404),
that the network answers (offline), and that the disk has room for what is still missing.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import quote

import httpx

from edgebox.api.netguard import ConnectGuard
from edgebox.models.hf_repo import HF_REPO, mlx_repo_files
from edgebox.models.remote import (
    Offline,
    PullError,
    RemoteFile,
    hf_file,
    http_client,
    url_file,
)
from edgebox.models.resolve import BUNDLED, ModelNotAvailable, resolve_model
from edgebox.models.store import (
    DIGEST,
    NAME,
    Format,
    Manifest,
    ModelFile,
    ModelStore,
    StoreError,
    detect_format,
)
from edgebox.models.transfer import (
    BlobFetch,
    ChunkPlan,
    DigestMismatch,
    Peer,
    Progress,
    Source,
    SourcePool,
    TransferError,
    bounded_get,
    peer_chunk_plan,
)

HF_SPEC = re.compile(r"^(?:hf://)?(?P<repo>[\w.-]+/[\w.-]+)(?::|/)(?P<file>[\w./-]+\.gguf)$")
SPLIT = re.compile(r"^(?P<stem>.+)-(?P<part>\d{5})-of-(?P<count>\d{5})\.gguf$")
MAX_SPLIT_PARTS = 256
MAX_SPEC = 2048
FREE_MARGIN = 16 << 20  # keep this much free beyond the download itself
MAX_MANIFEST_BYTES = 16 << 20  # a peer's manifest, read whole: a 256-part model's fits


@dataclass
class PullPlan:
    """What a spec names, found out before any download."""

    name: str
    source: str
    files: list[RemoteFile]
    aliases: list[str] = field(default_factory=list)
    local: Path | None = None  # a local path: registered, not downloaded
    manifest: Manifest | None = None  # a peer's manifest, for a pull by name
    format: Format | None = None  # None: from the first file's name


def default_name(filename: str) -> str:
    stem = SPLIT.sub(r"\g<stem>", filename.rsplit("/", 1)[-1])
    stem = stem.removesuffix(".gguf").removesuffix(".onnx").lower()
    return re.sub(r"[^a-z0-9._-]+", "-", stem).strip("-.")[:128] or "model"


def split_parts(filename: str) -> list[str]:
    """Every part of a split GGUF named by any one of its parts; else just the file."""
    match = SPLIT.match(filename)
    if not match:
        return [filename]
    count = int(match["count"])
    if not 1 <= count <= MAX_SPLIT_PARTS:
        raise PullError(f"{filename}: a split GGUF has 1 to {MAX_SPLIT_PARTS} parts")
    return [f"{match['stem']}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]


def _peer_manifest(client: httpx.Client, name: str, peers: list[Peer]) -> Manifest:
    """The manifest of model `name` (or the model pulled as `name`) from the first peer that
    has it."""
    for peer in peers:
        headers = {"Authorization": f"Bearer {peer.key}"} if peer.key else {}
        url = f"{peer.url.rstrip('/')}/v1/store/models/{quote(name, safe='')}"
        try:
            status, body = bounded_get(client, url, headers, MAX_MANIFEST_BYTES)
            if status == 200:
                return Manifest.model_validate_json(body)
        except (httpx.HTTPError, ValueError):
            continue
    raise PullError(f"no peer has a model named {name} (asked {len(peers)})")


def _from_peers(client: httpx.Client, spec: str, peers: list[Peer], name: str | None) -> PullPlan:
    manifest = _peer_manifest(client, spec, peers)
    files = [RemoteFile(f.path, None, f.size, f.sha256, "peer") for f in manifest.files]
    # Specs it was pulled as (ORG/REPO:FILE, URLs) travel on, so a node that pulled it by
    # name serves it by spec offline; a plain name it claims (another model's) is dropped.
    asked = [] if NAME.match(spec) else [spec]
    aliases = list(dict.fromkeys(asked + [a for a in manifest.aliases if not NAME.match(a)]))
    return PullPlan(name or manifest.name, "peer", files, aliases, manifest=manifest)


def _url_plan(
    client: httpx.Client, spec: str, sha256: str | None, peers: list[Peer], name: str | None
) -> PullPlan:
    """A URL's file; when the internet is out of reach, its digest's size from the peers."""
    try:
        file = url_file(client, spec, sha256)
    except Offline:
        plan = peer_chunk_plan(client, sha256, peers)[0] if sha256 and peers else None
        if plan is None:
            raise
        file = RemoteFile(spec.rsplit("/", 1)[-1] or "model.gguf", None, plan.size, sha256, "peer")
    return PullPlan(name or default_name(file.path), file.source, [file], [spec])


def _hf_plan(
    client: httpx.Client, spec: str, match: re.Match[str], peers: list[Peer], name: str | None
) -> PullPlan:
    """A Hugging Face file (every part of a split GGUF); offline, the model a peer pulled as
    the same spec."""
    parts = split_parts(match["file"].rsplit("/", 1)[-1])
    folder = match["file"].rpartition("/")[0]
    names = [f"{folder}/{p}" if folder else p for p in parts]
    try:
        files = [hf_file(client, match["repo"], f) for f in names]
    except Offline:
        if not peers:
            raise
        return _from_peers(client, spec, peers, name)
    return PullPlan(name or default_name(parts[0]), "huggingface", files, [spec])


def _mlx_plan(
    client: httpx.Client, spec: str, repo: str, peers: list[Peer], name: str | None
) -> PullPlan:
    """A Hugging Face MLX model directory; offline, the model a peer pulled as the spec."""
    try:
        files = mlx_repo_files(client, repo)
    except Offline:
        if not peers:
            raise
        return _from_peers(client, spec, peers, name)
    return PullPlan(
        name or default_name(repo.split("/")[1]), "huggingface", files, [spec], format="mlx"
    )


def plan_pull(
    spec: str,
    *,
    sha256: str | None = None,
    name: str | None = None,
    peers: list[Peer] | None = None,
    client: httpx.Client | None = None,
) -> PullPlan:
    """What `spec` names and how big it is; PullError for a bad spec, 404 or offline (unless
    the peers have it)."""
    if not spec or len(spec) > MAX_SPEC or any(c in spec for c in "\r\n\x00"):
        raise PullError(f"a pull spec is 1 to {MAX_SPEC} printable characters")
    if sha256 is not None and not DIGEST.match(sha256.lower()):
        raise PullError("--sha256 takes 64 hex characters")
    if name is not None and not NAME.match(name):
        raise PullError(f"{name!r} is not a model name: letters, digits, '.', '_', '-'")
    client, peers = client or http_client(), peers or []
    if spec.startswith(("http://", "https://")):
        return _url_plan(client, spec, sha256.lower() if sha256 else None, peers, name)
    local = Path(spec).expanduser()
    if local.exists():
        return PullPlan(name or default_name(local.name), "file", [], [], local=local)
    if spec in BUNDLED and not peers:  # registered where its package installed it
        try:
            path = resolve_model(spec).path
        except ModelNotAvailable as exc:
            raise PullError(str(exc)) from None
        return PullPlan(name or spec, "bundled", [], [], local=path)
    if match := HF_SPEC.match(spec):
        return _hf_plan(client, spec, match, peers, name)
    if NAME.match(spec) and peers:
        return _from_peers(client, spec, peers, name)
    if spec.endswith((".gguf", ".onnx")) or spec.startswith(("/", ".", "~")):
        raise PullError(f"no such file: {spec}")
    if match := HF_REPO.match(spec):
        return _mlx_plan(client, spec, match["repo"], peers, name)
    raise PullError(
        f"cannot pull {spec!r}: give ORG/REPO:FILE.gguf (Hugging Face), an http(s) URL, "
        "ORG/REPO (a Hugging Face MLX model), a local path, or a model name together with "
        "peers that hold it"
    )


def check_room(store: ModelStore, plan: PullPlan) -> None:
    """Refuse before downloading when the disk cannot hold what is still missing."""
    need = 0
    for file in plan.files:
        if file.sha256 and store.has_blob(file.sha256):
            continue
        partial = store.partial_path(file.sha256) if file.sha256 else None
        have = partial.stat().st_blocks * 512 if partial and partial.is_file() else 0
        need += max(0, file.size - have)
    store.root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(store.root).free
    if need and need + FREE_MARGIN > free:
        raise PullError(
            f"disk full: {plan.name} needs {need / 1e6:.1f} MB more but {store.root} has "
            f"{free / 1e6:.1f} MB free; free some space (`edgebox models rm NAME`) and retry"
        )


def check_model_files(store: ModelStore, manifest: Manifest) -> None:
    """StoreError unless each GGUF file starts as one (and each `.onnx` file as a protobuf
    model does): a URL that answers with something else (an internal service's page, cloud
    credentials) is no model, and its bytes leave the store rather than become a blob that
    peers and inference keys can fetch."""
    for file in manifest.files:
        onnx = Path(file.path).suffix.lower() == ".onnx"
        magic = b"GGUF" if manifest.format == "gguf" else b"\x08" if onnx else b""
        path = store.file_path(file)
        with path.open("rb") if path else contextlib.nullcontext(None) as f:
            head = f.read(len(magic)) if f else b""
        if head != magic:
            kept = {d for m in store.list() for d in m.digests()}
            for bad in manifest.digests() - kept:
                store.blob_path(bad).unlink(missing_ok=True)
            kind = "an ONNX" if onnx else "a GGUF"
            raise StoreError(f"{file.path} is not {kind} file; nothing was kept")


class Pull:
    """One pull into `store`, watched through `progress` and `state` from other threads."""

    def __init__(
        self,
        store: ModelStore,
        plan: PullPlan,
        *,
        peers: list[Peer] | None = None,
        max_rate: float | None = None,
        workers: int = 4,
        guard: ConnectGuard | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        self.store, self.plan = store, plan
        self.peers = peers or []
        self.max_rate, self.workers = max_rate, workers
        self.guard = guard  # internet connections a remote party aimed: public addresses only
        self.client = client or http_client(guard)  # the plan's, when given: one TLS setup
        self.progress = Progress(total=sum(f.size for f in plan.files))
        self.state = "queued"  # → running → done | failed | cancelled
        self.error: str | None = None
        self.manifest: Manifest | None = None
        self.started = time.time()
        self._fetch: BlobFetch | None = None
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()
        if self._fetch is not None:
            self._fetch.cancelled.set()

    def run(self) -> Manifest:
        """Pull every file, verify it, and record the manifest; PullError says why not."""
        self.state = "running"
        try:
            self.manifest = self._run()
        except (PullError, TransferError, StoreError) as exc:
            self.state = "cancelled" if self._cancelled.is_set() else "failed"
            self.error = str(exc)
            raise PullError(str(exc)) from None
        self.state = "done"
        return self.manifest

    def _run(self) -> Manifest:
        if self.plan.local is not None:
            fallback: Literal["reference", "copy"] = (
                "reference" if self.plan.source == "bundled" else "copy"
            )
            return self.store.add_local(
                self.plan.local, self.plan.name, source=self.plan.source, fallback=fallback
            )
        check_room(self.store, self.plan)
        files = [self._file(f) for f in self.plan.files]
        manifest = self._manifest(files)
        check_model_files(self.store, manifest)
        return self.store.save(manifest)

    def _manifest(self, files: list[ModelFile]) -> Manifest:
        """The pulled model's manifest: its names as this pull asked, its facts as its own
        header gives them (a peer's manifest says only which files and of which format)."""
        first = self.store.blob_path(files[0].sha256)
        peer = self.plan.manifest
        fmt = (
            peer.format
            if peer is not None
            else self.plan.format or detect_format(Path(files[0].path))
        )
        base = Manifest(
            name=self.plan.name,
            aliases=self.plan.aliases,
            format=fmt,
            files=files,
            source=self.plan.source,
        )
        if fmt != "gguf":
            return base
        from edgebox.models.gguf_header import read_gguf_info

        info = read_gguf_info(first)
        return base.model_copy(
            update={
                "architecture": info.architecture,
                "context_length": info.context_length,
                "quantisation": info.quantisation,
            }
        )

    def _file(self, file: RemoteFile) -> ModelFile:
        if file.sha256 and (held := self._held(file.sha256)) is not None:
            self.progress.add("store", file.size)
            return held.model_copy(update={"path": file.path, "location": None})
        for attempt in range(2):
            sources, plan = self._sources(file, trust_peers=attempt == 0)
            fetch = BlobFetch(
                self.store,
                plan,
                sources,
                client=self.client,
                progress=self.progress,
                max_rate=self.max_rate,
                workers=self.workers,
                key=file.sha256 or _url_key(file.url or file.path),
                guard=self.guard,
            )
            self._fetch = fetch
            try:
                blob = fetch.run()
            except DigestMismatch:
                if attempt or plan.chunks is None or file.url is None:
                    raise
                self._distrust(sources, file)  # the peers agreed on a lie: the internet alone
                continue
            digest = blob.name
            return ModelFile(path=file.path, size=file.size, sha256=digest, chunks=fetch.chunks)
        raise PullError(f"{file.path}: no source gave the right bytes")

    def _distrust(self, sources: SourcePool, file: RemoteFile) -> None:
        with self.progress.lock:
            self.progress.done = max(0, self.progress.done - file.size)  # fetched again
            for peer in sources.peers:
                self.progress.rejected.append(
                    f"{peer.name}: its chunks matched its chunk list but not the file's sha256"
                )

    def _held(self, digest: str) -> ModelFile | None:
        found = self.store.find_blob(digest)
        if found is None:
            return None
        path, entry = found
        if entry is not None:
            return entry
        from edgebox.models.store import digest_file

        _, chunks = digest_file(path)
        return ModelFile(path=path.name, size=path.stat().st_size, sha256=digest, chunks=chunks)

    def _sources(self, file: RemoteFile, *, trust_peers: bool) -> tuple[SourcePool, ChunkPlan]:
        internet = []
        if file.url:
            internet.append(Source(file.url, file.source, "internet", file.headers))
        plan = ChunkPlan(file.size, file.sha256)
        peers: list[Source] = []
        if trust_peers and file.sha256 and self.peers:
            peer_plan, holders, left_out = peer_chunk_plan(self.client, file.sha256, self.peers)
            self.progress.rejected.extend(left_out)
            if peer_plan is not None and peer_plan.size == file.size:
                plan = peer_plan
                peers = [p.blob_source(file.sha256) for p in holders]
        if not peers and not internet:
            raise PullError(
                f"no peer holds {file.path} ({file.sha256 or 'unknown digest'}) and it has "
                "no internet source; pull it where a peer has it, or by its Hugging Face name"
            )
        return SourcePool(peers, internet), plan


def _url_key(url: str) -> str:
    import hashlib

    return hashlib.sha256(url.encode()).hexdigest()
