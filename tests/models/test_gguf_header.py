"""The GGUF header reader on the bundled models and on hostile headers: vocabularies (arrays of
strings) are skipped undecoded but still within the reader's bounds."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from edgebox.models import gguf_header
from edgebox.models.gguf_header import MAX_STRING, GgufInfo, read_gguf_info

STRING, ARRAY = 8, 9


def _string(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def _header(*kv: bytes) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, 0, len(kv)) + b"".join(kv)


def _kv_string(key: bytes, value: bytes) -> bytes:
    return _string(key) + struct.pack("<I", STRING) + _string(value)


def _kv_strings(key: bytes, count: int, items: bytes) -> bytes:
    return _string(key) + struct.pack("<IIQ", ARRAY, STRING, count) + items


def test_the_bundled_models_headers_give_their_facts(smollm2_path: Path, gemma_path: Path) -> None:
    # Gemma 3's 262,144-token vocabulary comes before `general.file_type`: it is skipped
    smol, gemma = read_gguf_info(smollm2_path), read_gguf_info(gemma_path)
    assert (smol.architecture, smol.context_length, smol.quantisation) == ("llama", 8192, "Q4_1")
    assert (gemma.architecture, gemma.context_length) == ("gemma3", 32768)
    assert gemma.quantisation == "Q4_K_M" and gemma.name == "Gemma 3 270m"


def test_keys_after_a_vocabulary_are_read(tmp_path: Path) -> None:
    tokens = b"".join(_string(f"tok{i}".encode()) for i in range(1000))
    path = tmp_path / "m.gguf"
    path.write_bytes(
        _header(
            _kv_string(b"general.architecture", b"llama"),
            _kv_strings(b"tokenizer.ggml.tokens", 1000, tokens),
            _kv_string(b"general.name", b"after the vocab"),
        )
    )
    assert read_gguf_info(path) == GgufInfo(architecture="llama", name="after the vocab")


def test_hostile_string_arrays_end_in_empty_facts_quickly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arch = _kv_string(b"general.architecture", b"llama")
    name = _kv_string(b"general.name", b"never reached")
    cases = {
        # 2^62 strings promised, a few given: truncated, not a 2^62-step loop
        "endless": _kv_strings(b"t", 1 << 62, _string(b"a") * 3),
        # one string longer than the reader takes
        "long": _kv_strings(b"t", 1, struct.pack("<Q", MAX_STRING + 1)),
        "cut_length": _kv_strings(b"t", 2, _string(b"a") + b"\x01\x00"),
    }
    for case, array in cases.items():
        path = tmp_path / f"{case}.gguf"
        path.write_bytes(_header(arch, array, name))
        assert read_gguf_info(path).name is None, case
        assert read_gguf_info(path).architecture is None, case  # nothing half-read is kept
    # strings, each within bounds, that together pass the header's bound
    monkeypatch.setattr(gguf_header, "MAX_HEADER_BYTES", 4096)
    path = tmp_path / "past_bound.gguf"
    path.write_bytes(_header(arch, _kv_strings(b"t", 100, _string(b"x" * 64) * 100), name))
    assert read_gguf_info(path) == GgufInfo()
