"""Turn what the user typed after `--model` into a local model file and a served alias."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from edgebox.models.bundled import BUNDLED, Progress

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_EMBEDDING_MODEL = "all-minilm-l6-v2"

# org/repo:file.gguf, org/repo/file.gguf or hf://org/repo/file.gguf
_HF_SPEC = re.compile(r"^(?:hf://)?(?P<repo>[\w.-]+/[\w.-]+)(?::|/)(?P<file>[\w./-]+\.gguf)$")


class ModelNotAvailable(Exception):
    """The model cannot be had here; the message says what to do instead."""


@dataclass(frozen=True)
class ResolvedModel:
    path: Path
    alias: str
    source: str  # "bundled", "file" or "huggingface"
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
        tokenizer = _onnx_tokenizer(local.absolute()) if local.suffix.lower() == ".onnx" else None
        return ResolvedModel(local.resolve(), alias or default_alias(local), "file", tokenizer)
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
        raise ModelNotAvailable(f"model file not found: {local}")
    names = ", ".join(BUNDLED)
    raise ModelNotAvailable(
        f"unknown model {spec!r}: pass a bundled name ({names}), a path to a .gguf or .onnx "
        "file, or a Hugging Face repo and file as ORG/REPO:FILE.gguf"
    )


def _onnx_tokenizer(model: Path) -> Path:
    """The tokenizer.json beside an ONNX model (or one folder up, as Hugging Face exports
    put the model in onnx/)."""
    for folder in (model.parent, model.parent.parent):
        candidate = folder / "tokenizer.json"
        if candidate.is_file():
            return candidate
    raise ModelNotAvailable(
        f"no tokenizer.json beside {model}: put the model's Hugging Face tokenizer.json "
        "in the same folder"
    )


def _from_hub(repo: str, filename: str) -> Path:
    """Fetch into (or find in) the Hugging Face cache; huggingface_hub draws the progress bar."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        return Path(hf_hub_download(repo_id=repo, filename=filename))
    except LocalEntryNotFoundError as exc:
        raise ModelNotAvailable(
            f"{repo}:{filename} is not in the local Hugging Face cache and the hub cannot be "
            f"reached; download it where there is a network (`hf download {repo} {filename}`) "
            "or pass a local .gguf path"
        ) from exc
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
    except (HfHubHTTPError, OSError) as exc:  # network errors not mapped above
        raise ModelNotAvailable(f"could not fetch {repo}:{filename}: {exc}") from exc
