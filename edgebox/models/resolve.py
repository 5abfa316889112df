"""Turn what the user typed after `--model` into a local model file and a served alias."""

from __future__ import annotations

import os
import re
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from edgebox.models.bundled import BUNDLED, Progress

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_EMBEDDING_MODEL = "all-minilm-l6-v2"
HUB_PROBE_S = 2.0  # how long an uncached Hugging Face spec waits to learn the hub is out of reach

# org/repo:file.gguf, org/repo/file.gguf or hf://org/repo/file.gguf
_HF_SPEC = re.compile(r"^(?:hf://)?(?P<repo>[\w.-]+/[\w.-]+)(?::|/)(?P<file>[\w./-]+\.gguf)$")


class ModelNotAvailable(Exception):
    """The model cannot be had here; the message says what to do instead."""


@dataclass(frozen=True)
class ResolvedModel:
    path: Path
    alias: str
    source: str  # "bundled", "file", "store" or "huggingface"
    tokenizer: Path | None = None  # tokenizer.json, for ONNX models

    @property
    def format(self) -> str:
        """The file format, from its suffix: "gguf", "onnx", ..."""
        return self.path.suffix.lower().lstrip(".")


def default_alias(path: Path) -> str:
    stem = path.name.removesuffix(".gguf").removesuffix(".onnx").lower()
    return re.sub(r"[^a-z0-9._-]+", "-", stem).strip("-") or "model"


def resolve_model(
    spec: str | None, *, alias: str | None = None, progress: Progress | None = None
) -> ResolvedModel:
    spec = spec or DEFAULT_MODEL
    bundled = BUNDLED.get(spec) or next((m for m in BUNDLED.values() if spec in m.names), None)
    if bundled is not None:
        try:
            path = bundled.locate(progress)
            tokenizer = bundled.locate_tokenizer() if bundled.locate_tokenizer else None
        except FileNotFoundError as exc:
            raise ModelNotAvailable(
                f"bundled model {bundled.alias} is not installed: run `{exc}`"
            ) from exc
        return ResolvedModel(path, alias or bundled.alias, "bundled", tokenizer)
    local = Path(spec).expanduser()
    if local.is_file():
        # beside the path as given: a symlinked model (the Hugging Face cache) has its
        # tokenizer next to the link, not next to the blob it points at
        onnx = local.suffix.lower() == ".onnx"
        tokenizer = _onnx_tokenizer(local.absolute(), spec) if onnx else None
        return ResolvedModel(local.resolve(), alias or default_alias(local), "file", tokenizer)
    stored = _from_store(spec, alias)
    if stored is not None:
        return stored
    match = _HF_SPEC.match(spec)
    if match:
        path = _from_hub(match["repo"], match["file"])
        return ResolvedModel(path, alias or default_alias(path), "huggingface")
    if spec.endswith((".gguf", ".onnx")) or "/" in spec or spec.startswith("."):
        if re.fullmatch(r"[\w.-]+/[\w.-]+", spec) and not local.exists():
            raise ModelNotAvailable(
                f"{spec} looks like a Hugging Face repo: name the file too, "
                f"e.g. --model {spec}:MODEL.Q4_K_M.gguf"
            )
        raise ModelNotAvailable(f"model file not found: {spec}")
    names = ", ".join(BUNDLED)
    raise ModelNotAvailable(
        f"unknown model {spec!r}: pass a bundled name ({names}), a path to a .gguf or .onnx "
        "file, or a Hugging Face repo and file as ORG/REPO:FILE.gguf"
    )


def _from_store(spec: str, alias: str | None) -> ResolvedModel | None:
    """A model in this node's store (`edgebox pull`), by its name or an alias (the spec it
    was pulled with); None when the store has no such model."""
    from edgebox.models.store import ModelStore, StoreError

    store = ModelStore()
    manifest = store.get(spec) if len(spec) <= 512 else None
    if manifest is None:
        return None
    try:
        path = store.path_of(manifest)
    except StoreError as exc:
        raise ModelNotAvailable(str(exc)) from None
    tokenizer = None
    if manifest.format == "onnx":
        tokenizer = _onnx_tokenizer(path, spec)
    return ResolvedModel(path, alias or manifest.name, "store", tokenizer)


def _onnx_tokenizer(model: Path, spec: str) -> Path:
    """The tokenizer.json beside an ONNX model (or one folder up, as Hugging Face exports
    put the model in onnx/)."""
    for folder in (model.parent, model.parent.parent):
        candidate = folder / "tokenizer.json"
        if candidate.is_file():
            return candidate
    raise ModelNotAvailable(
        f"no tokenizer.json beside {spec}: put the model's Hugging Face tokenizer.json "
        "in the same folder"
    )


def hub_reachable(timeout_s: float = HUB_PROBE_S) -> bool:
    """Whether the Hugging Face endpoint accepts a TCP connection within `timeout_s` (name
    lookup included, which a socket timeout does not bound: it runs in a daemon thread)."""
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = (
        endpoint.hostname or "",
        endpoint.port or (443 if endpoint.scheme == "https" else 80),
    )
    answer: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            answer.append(True)
        except OSError:
            answer.append(False)

    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(timeout_s)
    return bool(answer and answer[0])


def _offline(repo: str, filename: str, why: str) -> ModelNotAvailable:
    return ModelNotAvailable(
        f"{repo}:{filename} is not in the local Hugging Face cache and {why}; download it "
        f"where there is a network (`hf download {repo} {filename}`) or pass a local .gguf path"
    )


def _from_hub(repo: str, filename: str) -> Path:
    """Find in, or fetch into, the Hugging Face cache; huggingface_hub draws the progress bar.

    A cached file is used without asking the hub (no network wait); an uncached one with the
    hub out of reach fails within `HUB_PROBE_S` (huggingface_hub itself retries for ~20 s)."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        cached = try_to_load_from_cache(repo_id=repo, filename=filename)
        if isinstance(cached, str):
            return Path(cached)
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
            raise _offline(repo, filename, "HF_HUB_OFFLINE is set")
        if not hub_reachable():
            raise _offline(repo, filename, "the hub cannot be reached")
        return Path(hf_hub_download(repo_id=repo, filename=filename))
    except LocalEntryNotFoundError as exc:
        raise _offline(repo, filename, "the hub cannot be reached") from exc
    except GatedRepoError as exc:
        raise ModelNotAvailable(
            f"{repo} is gated: accept its licence on the hub and log in (`hf auth login`)"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise ModelNotAvailable(f"no Hugging Face repo named {repo} (or it is private)") from exc
    except EntryNotFoundError as exc:
        raise ModelNotAvailable(f"{repo} has no file named {filename}") from exc
    except HFValidationError as exc:
        raise ModelNotAvailable(f"{repo!r} is not a valid Hugging Face repo id") from exc
    except HfHubHTTPError as exc:  # HTTP errors not mapped above
        raise ModelNotAvailable(f"could not fetch {repo}:{filename}: {exc}") from exc
    except OSError as exc:  # the reason only: the message may hold cache paths
        why = exc.strerror or type(exc).__name__
        raise ModelNotAvailable(f"could not fetch {repo}:{filename}: {why}") from exc
