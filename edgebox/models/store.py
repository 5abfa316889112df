"""A content-addressed model store per node: blobs by SHA-256, one small manifest per model.

Layout under the store's root (default `$EDGEBOX_MODELS_DIR`, else `$EDGEBOX_HOME/models`,
else `~/.edgebox/models`):

    blobs/sha256/<hex>          the bytes of one file, named by their SHA-256
    manifests/<name>.json       a `Manifest`: name, aliases, format, files (each with its digest
                                and the digests of its fixed-size chunks), source, header facts
    partial/<hex>.part|.json|.done  a download in progress and its verified chunks
    views/<name>/<file>         links with the files' own names, for models of several files
                                (split GGUFs find their parts by name; ONNX its tokenizer)

Models already on disk (bundled packages, the Hugging Face cache) are registered without a
copy: hardlinked into blobs/ when the filesystem allows, else the manifest records where the
file lives (`location`) and the store serves it from there while its size still matches.
A blob is deleted when the last manifest that refers to it is removed.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import os
import re
import shutil
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgebox.models.gguf_header import read_gguf_info

DEFAULT_CHUNK_SIZE = 8 << 20  # the unit of verification and of peer transfer
MAX_CHUNKS = 1 << 16  # 512 GiB at the default chunk size
DIGEST = re.compile(r"^[0-9a-f]{64}$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
Format = Literal["gguf", "onnx", "mlx"]
_READ = 4 << 20


class StoreError(Exception):
    """The store cannot do what was asked; the message says why and what to do."""


class ModelFile(BaseModel):
    """One file of a model: where it sits in the model, its bytes and their digests."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    path: str  # the file's own name inside the model ("model-00001-of-00002.gguf")
    size: int = Field(ge=0)
    sha256: str = Field(pattern=DIGEST.pattern)
    chunk_size: int = Field(default=DEFAULT_CHUNK_SIZE, gt=0)
    chunks: list[str] = Field(default_factory=list, max_length=MAX_CHUNKS)
    location: str | None = None  # registered by reference: the file outside the store


class Manifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str = Field(pattern=NAME.pattern)
    aliases: list[str] = Field(default_factory=list)
    format: Format = "gguf"
    files: list[ModelFile] = Field(min_length=1)
    source: str = "file"  # "bundled", "huggingface", "url", "file", "peer"
    quantisation: str | None = None
    architecture: str | None = None
    context_length: int | None = None
    added_at: float = Field(default_factory=time.time)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def digests(self) -> set[str]:
        return {f.sha256 for f in self.files}


def default_root() -> Path:
    """`$EDGEBOX_MODELS_DIR`, else `models/` in the node's data dir (`$EDGEBOX_HOME`)."""
    if env := os.environ.get("EDGEBOX_MODELS_DIR"):
        return Path(env).expanduser()
    home = os.environ.get("EDGEBOX_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".edgebox") / "models"


def check_digest(digest: str) -> str:
    """`digest` if it is 64 lowercase hex characters; ValueError otherwise (never a path)."""
    if not isinstance(digest, str) or not DIGEST.match(digest):
        raise ValueError("a blob digest is 64 lowercase hex characters (a SHA-256)")
    return digest


def chunk_count(size: int, chunk_size: int) -> int:
    return max(1, -(-size // chunk_size))


def digest_file(path: Path, chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[str, list[str]]:
    """The file's SHA-256 and the SHA-256 of each `chunk_size` piece, in one read."""
    whole = hashlib.sha256()
    chunks: list[str] = []
    with path.open("rb") as f:
        while True:
            piece = hashlib.sha256()
            left = chunk_size
            while left and (block := f.read(min(_READ, left))):
                whole.update(block)
                piece.update(block)
                left -= len(block)
            if left == chunk_size and chunks:
                break
            chunks.append(piece.hexdigest())
            if left:
                break
    return whole.hexdigest(), chunks


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


class ModelStore:
    """The store at `root`; every method is safe to call from several threads of one process
    (writes are atomic renames) but not designed for two writers racing on one name."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root).expanduser() if root else default_root()
        self._parsed: dict[Path, tuple[tuple[int, int, int], Manifest]] = {}

    # -- layout -----------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / check_digest(digest)

    def partial_path(self, digest: str) -> Path:
        return self.root / "partial" / f"{check_digest(digest)}.part"

    def _manifest_path(self, name: str) -> Path:
        if not NAME.match(name):
            raise StoreError(f"{name!r} is not a model name: letters, digits, '.', '_', '-'")
        return self.root / "manifests" / f"{name}.json"

    # -- reading ----------------------------------------------------------------------
    def list(self) -> list[Manifest]:
        """Every model, by name; a manifest is parsed again only when its file changed (the
        blob routes look digests up for every chunk a peer asks for)."""
        folder = self.root / "manifests"
        found = []
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            with contextlib.suppress(OSError, ValueError, ValidationError):
                stat = path.stat()
                key = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
                cached = self._parsed.get(path)
                if cached is None or cached[0] != key:
                    cached = (key, Manifest.model_validate_json(path.read_bytes()))
                    self._parsed[path] = cached
                found.append(cached[1])
        return found

    def get(self, name_or_alias: str) -> Manifest | None:
        if NAME.match(name_or_alias):
            path = self._manifest_path(name_or_alias)
            with contextlib.suppress(OSError, ValueError, ValidationError):
                return Manifest.model_validate_json(path.read_bytes())
        return next((m for m in self.list() if name_or_alias in m.aliases), None)

    def file_path(self, file: ModelFile) -> Path | None:
        """Where `file`'s bytes are: its blob, or the file it was registered from."""
        blob = self.blob_path(file.sha256)
        if blob.is_file():
            return blob
        if file.location:
            outside = Path(file.location)
            with contextlib.suppress(OSError):
                if outside.is_file() and outside.stat().st_size == file.size:
                    return outside
        return None

    def path_of(self, manifest: Manifest) -> Path:
        """The path a runtime opens, under `views/<name>/`: links named as the model's files
        (runtimes choose by suffix; split GGUFs find their parts by name; ONNX its tokenizer):
        the first file, or the folder for MLX."""
        paths = [self.file_path(f) for f in manifest.files]
        missing = [f.path for f, p in zip(manifest.files, paths, strict=True) if p is None]
        if missing:
            raise StoreError(
                f"{manifest.name} is incomplete here (missing {', '.join(missing)}): "
                f"`edgebox models rm {manifest.name}` and pull it again"
            )
        view = self.root / "views" / manifest.name
        for file, target in zip(manifest.files, paths, strict=True):
            assert target is not None
            link = view / _safe_relative(file.path)
            if link.is_symlink() and link.resolve() == target.resolve():
                continue
            link.parent.mkdir(parents=True, exist_ok=True)
            tmp = link.with_name(f".{link.name}.{os.getpid()}.{threading.get_ident()}")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(target)
            tmp.replace(link)  # atomic: a runtime opening the link never sees it missing
        return view if manifest.format == "mlx" else view / _safe_relative(manifest.files[0].path)

    def has_blob(self, digest: str) -> bool:
        return self.find_blob(digest) is not None

    def find_blob(self, digest: str) -> tuple[Path, ModelFile | None] | None:
        """The readable file holding `digest` and, when a manifest names it, its entry."""
        check_digest(digest)
        entry = next((f for m in self.list() for f in m.files if f.sha256 == digest), None)
        blob = self.blob_path(digest)
        if blob.is_file():
            return blob, entry
        if entry is not None and (path := self.file_path(entry)) is not None:
            return path, entry
        return None

    def digests(self) -> builtins.list[str]:
        """Every digest this store can serve (for the hub's registry and peers)."""
        return sorted({f.sha256 for m in self.list() for f in m.files if self.file_path(f)})

    def disk_usage(self) -> dict[str, int]:
        """Bytes in blobs/, in files registered by reference, in partial downloads, and free."""
        blobs, linked = _bytes(self.root / "blobs" / "sha256")
        partial, _ = _bytes(self.root / "partial")
        referenced = sum(
            f.size
            for m in self.list()
            for f in m.files
            if not self.blob_path(f.sha256).is_file() and self.file_path(f)
        )
        self.root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.root).free
        return {
            "models": len(self.list()),
            "blobs_bytes": blobs,
            "linked_bytes": linked,  # of those, hardlinks to files outside (no extra disk)
            "referenced_bytes": referenced,
            "partial_bytes": partial,
            "free_bytes": free,
        }

    # -- writing ----------------------------------------------------------------------
    def save(self, manifest: Manifest) -> Manifest:
        _write_atomic(self._manifest_path(manifest.name), manifest.model_dump_json(indent=1))
        return manifest

    def add_local(
        self,
        path: Path | str,
        name: str,
        *,
        link: bool = True,
        source: str = "file",
        aliases: Iterable[str] = (),
        fallback: Literal["reference", "copy"] = "reference",
    ) -> Manifest:
        """Register a file (or an MLX/ONNX folder) already on disk. `link`: no copy (a
        hardlink; where the filesystem refuses one, `fallback`: a reference to the file, or a
        copy); otherwise the bytes are copied into blobs/."""
        self._manifest_path(name)  # a bad name fails before any hashing
        path = Path(path).expanduser()
        if not path.exists():
            raise StoreError(f"no such file: {path}")
        existing = self.get(name)
        if existing and existing.files and all(self.file_path(f) for f in existing.files):
            return existing
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        entries = [
            self._ingest(p, p.relative_to(path) if path.is_dir() else p.name, link, fallback)
            for p in files
        ]
        return self.save(_manifest(name, path, entries, source, list(aliases)))

    def _ingest(self, file: Path, rel: Path | str, link: bool, fallback: str) -> ModelFile:
        digest, chunks = digest_file(file)
        entry = ModelFile(path=str(rel), size=file.stat().st_size, sha256=digest, chunks=chunks)
        blob = self.blob_path(digest)
        if blob.is_file():
            return entry
        blob.parent.mkdir(parents=True, exist_ok=True)
        if link:
            try:
                os.link(file.resolve(), blob)
                return entry
            except OSError:  # another filesystem, or hardlinks refused
                if fallback == "reference":
                    return entry.model_copy(update={"location": str(file.resolve())})
        tmp = blob.with_name(f".{digest}.{os.getpid()}.tmp")
        shutil.copyfile(file, tmp)
        tmp.replace(blob)
        return entry

    def commit_blob(self, digest: str, source: Path) -> Path:
        """Move a verified download into blobs/ (atomic on one filesystem)."""
        blob = self.blob_path(digest)
        blob.parent.mkdir(parents=True, exist_ok=True)
        source.replace(blob)
        return blob

    def remove(self, name: str) -> Manifest:
        """Delete the model's manifest and every blob no other manifest refers to."""
        manifest = self.get(name)
        if manifest is None:
            raise StoreError(f"no model named {name} in the store ({self.root})")
        self._manifest_path(manifest.name).unlink(missing_ok=True)
        shutil.rmtree(self.root / "views" / manifest.name, ignore_errors=True)
        self.collect_garbage()
        return manifest

    def collect_garbage(self) -> builtins.list[str]:
        """Delete blobs no manifest refers to; their digests."""
        kept = {d for m in self.list() for d in m.digests()}
        folder = self.root / "blobs" / "sha256"
        gone = []
        for blob in folder.iterdir() if folder.is_dir() else []:
            if DIGEST.match(blob.name) and blob.name not in kept:
                blob.unlink(missing_ok=True)
                gone.append(blob.name)
        return gone


def _safe_relative(rel: str) -> Path:
    path = Path(rel)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise StoreError(f"file path {rel!r} in a manifest leaves the model's folder")
    return path


def _bytes(folder: Path) -> tuple[int, int]:
    """Bytes of the files in `folder`, and of those also linked from elsewhere."""
    total = linked = 0
    for path in folder.rglob("*") if folder.is_dir() else []:
        with contextlib.suppress(OSError):
            stat = path.lstat()
            if path.is_file() and not path.is_symlink():
                total += stat.st_size
                linked += stat.st_size if stat.st_nlink > 1 else 0
    return total, linked


def detect_format(path: Path) -> Format:
    if path.is_dir():
        names = {p.suffix.lower() for p in path.rglob("*")}
        return "onnx" if ".onnx" in names else "gguf" if ".gguf" in names else "mlx"
    return "onnx" if path.suffix.lower() == ".onnx" else "gguf"


def _manifest(
    name: str, path: Path, files: list[ModelFile], source: str, aliases: list[str]
) -> Manifest:
    """A manifest for `files`, with the facts the first GGUF's header gives."""
    fmt = detect_format(path)
    manifest = Manifest(name=name, aliases=aliases, format=fmt, files=files, source=source)
    if fmt != "gguf":
        return manifest
    info = read_gguf_info(path if path.is_file() else path / files[0].path)
    facts = {
        "architecture": info.architecture,
        "context_length": info.context_length,
        "quantisation": info.quantisation,
    }
    return manifest.model_copy(update=facts)
