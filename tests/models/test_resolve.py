from pathlib import Path

import pytest

from edgebox.models import BUNDLED, ModelNotAvailable, resolve_model
from edgebox.models.bundled import cache_dir


def test_default_is_the_bundled_smollm2() -> None:
    model = resolve_model(None)
    assert model.alias == "smollm2-135m" and model.source == "bundled"
    assert model.path.read_bytes()[:4] == b"GGUF"


def test_gemma_is_assembled_into_the_cache_with_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEBOX_CACHE_DIR", str(tmp_path))
    seen: list[tuple[str, int]] = []
    advanced: list[int] = []

    def progress(label: str, total: int):  # type: ignore[no-untyped-def]
        seen.append((label, total))
        return advanced.append

    model = resolve_model("gemma3-270m", progress=progress)
    assert model.path.parent == cache_dir() / "models" and model.path.is_relative_to(tmp_path)
    assert seen and sum(advanced) == seen[0][1] == model.path.stat().st_size
    again = resolve_model("gemma3-270m", progress=progress)  # already there: no second assembly
    assert again.path == model.path and len(seen) == 1


def test_local_file_gets_an_alias_from_its_name(tmp_path: Path) -> None:
    path = tmp_path / "My-Model.Q4_K_M.gguf"
    path.write_bytes(b"GGUF")
    assert resolve_model(str(path)).alias == "my-model.q4_k_m"
    assert resolve_model(str(path), alias="mine").alias == "mine"


def test_unknown_names_say_what_is_accepted() -> None:
    with pytest.raises(ModelNotAvailable) as excinfo:
        resolve_model("no-such-model")
    assert all(name in str(excinfo.value) for name in BUNDLED)


def test_repo_without_file_asks_for_the_file() -> None:
    with pytest.raises(ModelNotAvailable, match="name the file too"):
        resolve_model("someorg/somerepo")


def test_hub_model_offline_and_uncached_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotAvailable, match="not in the local Hugging Face cache"):
        resolve_model("someorg/somerepo:model.Q4_K_M.gguf")


def test_minilm_names_the_bundled_embedding_model_and_its_tokenizer() -> None:
    for name in ("minilm", "all-minilm-l6-v2"):
        model = resolve_model(name)
        assert model.alias == "all-minilm-l6-v2" and model.format == "onnx"
        assert model.tokenizer is not None and model.tokenizer.name == "tokenizer.json"


def test_an_onnx_file_needs_its_tokenizer_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "onnx" / "model.onnx"
    path.parent.mkdir()
    path.write_bytes(b"onnx")
    with pytest.raises(ModelNotAvailable, match=r"no tokenizer\.json beside"):
        resolve_model(str(path))
    (tmp_path / "tokenizer.json").write_text("{}")  # Hugging Face exports keep it one level up
    model = resolve_model(str(path))
    assert model.tokenizer == tmp_path / "tokenizer.json" and model.alias == "model"
