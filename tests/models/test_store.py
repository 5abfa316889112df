"""The content-addressed store: register without copying, look up by name or alias, GC."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgebox.models import resolve_model
from edgebox.models.gguf_header import read_gguf_info
from edgebox.models.store import ModelStore, StoreError, check_digest, digest_file

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def smollm2() -> Path:
    return resolve_model("smollm2-135m").path


def test_gguf_header_gives_architecture_context_and_quantisation(smollm2: Path) -> None:
    info = read_gguf_info(smollm2)
    assert (info.architecture, info.context_length, info.quantisation) == ("llama", 8192, "Q4_1")


def test_a_truncated_or_foreign_file_gives_no_facts_and_no_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 40)
    assert read_gguf_info(bad).architecture is None
    bad.write_bytes(b"not a gguf")
    assert read_gguf_info(bad).context_length is None


def test_bundled_model_is_registered_without_a_copy(tmp_path: Path, smollm2: Path) -> None:
    store = ModelStore(tmp_path / "store")
    m = store.add_local(smollm2, "smollm2-135m", source="bundled", aliases=["smol"])
    opened = store.path_of(m)
    assert opened.name == smollm2.name  # runtimes choose by suffix
    assert opened.read_bytes()[:4] == b"GGUF"
    blob = store.blob_path(m.files[0].sha256)
    assert os.path.samefile(blob, smollm2) or m.files[0].location == str(smollm2.resolve())
    assert m.architecture == "llama" and m.context_length == 8192 and m.quantisation == "Q4_1"
    digest, chunks = digest_file(smollm2)
    assert m.files[0].sha256 == digest and m.files[0].chunks == chunks
    assert len(chunks) == -(-smollm2.stat().st_size // m.files[0].chunk_size)
    assert store.get("smol") == m and store.get("smollm2-135m") == m
    assert store.has_blob(digest) and store.digests() == [digest]


def test_remove_collects_blobs_no_manifest_uses(tmp_path: Path, smollm2: Path) -> None:
    store = ModelStore(tmp_path / "store")
    a = store.add_local(smollm2, "a")
    store.add_local(smollm2, "b")
    digest = a.files[0].sha256
    store.remove("a")
    assert store.has_blob(digest)  # b still refers to it
    store.remove("b")
    assert not store.has_blob(digest) and not store.blob_path(digest).exists()
    assert smollm2.is_file()  # the registered original is never deleted
    with pytest.raises(StoreError, match="no model named b"):
        store.remove("b")


def test_split_files_get_a_view_named_as_their_parts(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    for i in (1, 2):
        (folder / f"x-0000{i}-of-00002.gguf").write_bytes(bytes([i]) * 1000)
    store = ModelStore(tmp_path / "store")
    m = store.add_local(folder, "split", link=False)
    first = store.path_of(m)
    assert first.name == "x-00001-of-00002.gguf"
    assert (first.parent / "x-00002-of-00002.gguf").read_bytes() == b"\x02" * 1000


def test_digests_and_names_are_checked_before_touching_disk(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    for bad in ("../../etc/passwd", "A" * 64, "abc"):
        with pytest.raises(ValueError):
            check_digest(bad)
        with pytest.raises(ValueError):
            store.blob_path(bad)
    with pytest.raises(StoreError, match="not a model name"):
        store.add_local(tmp_path, "../evil")
