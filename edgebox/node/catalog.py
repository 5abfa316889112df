"""What this node could load by name: the models on its disk.

Sources, first match wins: models this node served since it started (the spec it loaded them
from), the installed bundled models, the model store's manifests, and GGUF/ONNX files in the
Hugging Face cache. A request names a model by the id it will serve as; only names from this
list are loaded on demand (a request never names a path).

Scanning reads directory listings and manifests only (blocking: `refresh` runs it in a
thread, at most once per `SCAN_TTL_S`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgebox.models import BUNDLED
from edgebox.models.footprint import cached_footprint

log = logging.getLogger(__name__)
SCAN_TTL_S = 10.0


@dataclass(frozen=True)
class Available:
    """A model on disk, under the id a request names it by."""

    name: str
    spec: str  # what `resolve_model_or_dir` opens
    kind: str = "chat"  # or "embeddings"
    source: str = "file"  # "served" (loaded since start), "bundled", "store", "huggingface"
    size_bytes: int | None = None
    kv_bytes_per_token: int | None = None  # from the GGUF header, where it was read
    context_length: int | None = None  # trained

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "kind": self.kind,
            "source": self.source,
            "size_bytes": self.size_bytes,
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "context_length": self.context_length,
        }

    @classmethod
    def of_file(cls, name: str, spec: str, kind: str, source: str, path: Path) -> Available:
        """An entry for the file at `path`, with its footprint read from its header."""
        found = cached_footprint(path)
        if found is None:
            return cls(name, spec, kind, source)
        kv = found.kv_bytes_per_token or None
        return cls(name, spec, kind, source, found.weights, kv, found.context_length)


Source = Callable[[], list[Available]]


def bundled_models() -> list[Available]:
    """The bundled models whose package is installed."""
    found = []
    for bundled in BUNDLED.values():
        if importlib.util.find_spec(bundled.package.replace("-", "_")) is None:
            continue
        try:
            if bundled.locate_tokenizer is not None:  # an embedding model needs both packages
                bundled.locate_tokenizer()
        except FileNotFoundError:
            continue
        found.append(Available(bundled.alias, bundled.alias, bundled.kind, "bundled"))
    return found


def huggingface_models() -> list[Available]:
    """GGUF and ONNX files in the Hugging Face cache, as `ORG/REPO:FILE`."""
    try:
        from huggingface_hub import scan_cache_dir

        cache = scan_cache_dir()
    except Exception:  # no cache yet, or an unreadable one
        return []
    found = []
    for repo in sorted(cache.repos, key=lambda r: r.repo_id):
        files = {f.file_name: f.file_path for rev in repo.revisions for f in rev.files}
        for name in sorted(n for n in files if n.endswith((".gguf", ".onnx"))):
            kind = "embeddings" if name.endswith(".onnx") else "chat"
            spec = f"{repo.repo_id}:{name}"
            found.append(Available.of_file(spec, spec, kind, "huggingface", files[name]))
    return found


def store_models() -> list[Available]:
    """The model store's complete models, by name and by each alias (`edgebox pull`)."""
    from edgebox.models.store import ModelStore, StoreError

    store = ModelStore()
    found = []
    for manifest in store.list():
        try:
            path = store.path_of(manifest)  # `resolve_model` opens it by name
        except (StoreError, OSError):  # incomplete here (a pull under way or cut short)
            continue
        kind = "embeddings" if manifest.format == "onnx" else "chat"
        entry = Available.of_file(manifest.name, manifest.name, kind, "store", path)
        for name in (manifest.name, *manifest.aliases):
            found.append(dataclasses.replace(entry, name=name, size_bytes=manifest.size))
    return found


DEFAULT_SOURCES: tuple[Source, ...] = (bundled_models, store_models, huggingface_models)


@dataclass
class ModelCatalog:
    """The models this node has on disk, rescanned at most every `SCAN_TTL_S` seconds."""

    sources: tuple[Source, ...] = DEFAULT_SOURCES
    served: dict[str, Available] | None = None  # name → how it was loaded since start
    _scanned: list[Available] | None = None
    _scanned_at: float = 0.0

    def remember(self, entry: Available) -> None:
        """A model this node loaded: it stays loadable by its id once unloaded."""
        if self.served is None:
            self.served = {}
        self.served[entry.name] = entry

    def scan(self) -> list[Available]:
        """Blocking: every source, read now."""
        found: dict[str, Available] = dict(self.served or {})
        for source in self.sources:
            try:
                entries = source()
            except Exception:  # one unreadable source must not hide the others
                log.exception("model source %s failed", getattr(source, "__name__", source))
                continue
            for entry in entries:
                found.setdefault(entry.name, entry)
        return list(found.values())

    async def refresh(self, force: bool = False) -> list[Available]:
        """Every model on disk, from a scan at most `SCAN_TTL_S` old (`force`: a new one)."""
        stale = time.monotonic() - self._scanned_at > SCAN_TTL_S
        if force or stale or self._scanned is None:
            self._scanned = await asyncio.to_thread(self.scan)
            self._scanned_at = time.monotonic()
        return self.entries()

    def entries(self) -> list[Available]:
        """The last scan (never blocks), with what was served since."""
        found = dict((self.served or {}).items())
        for entry in self._scanned or []:
            found.setdefault(entry.name, entry)
        return list(found.values())

    async def find(self, name: str) -> Available | None:
        """The entry named `name`, rescanning once if the last scan did not have it."""
        for entry in self.entries():
            if entry.name == name:
                return entry
        for entry in await self.refresh(force=True):
            if entry.name == name:
                return entry
        return None
