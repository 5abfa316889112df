"""llama.cpp sequence-state blobs parsed and checked in Python (pure; synthetic blobs in
the layout llama-kv-cache.cpp writes)."""

from __future__ import annotations

import struct

import pytest

from edgebox.runtimes.llamacpp.kv_format import (
    KVFormatError,
    reference_layout,
    validate_state,
)

MAGIC = 0xAF143CD8
N_STREAM = 2
LAYERS = 3
ROW = 8  # bytes per K and per V row
N_VOCAB = 100


def blob(
    positions: list[int],
    *,
    stream: int = 1,
    n_seq: int = 1,
    rows: tuple[int, int] = (ROW, ROW),
    layers: int = LAYERS,
    tail: bytes = b"",
) -> bytes:
    out = struct.pack("<Ii", MAGIC, stream) + struct.pack("<I", N_STREAM)
    for s in range(N_STREAM):
        if s != stream:
            out += struct.pack("<I", 0)
            continue
        out += struct.pack("<I", len(positions))
        for pos in positions:
            out += struct.pack("<iIi", pos, n_seq, stream)
        out += struct.pack("<II", 0, layers)
        for _ in range(layers):
            out += struct.pack("<iQ", 1, rows[0]) + b"\1" * rows[0] * len(positions)
        for _ in range(layers):
            out += struct.pack("<iQ", 1, rows[1]) + b"\2" * rows[1] * len(positions)
    return out + tail


REFERENCE = reference_layout(blob([0], stream=0), N_STREAM, N_VOCAB)
LIMITS = (63, N_VOCAB)


def test_reference_reads_the_engines_own_layout() -> None:
    assert REFERENCE.magic == MAGIC
    (cache,) = REFERENCE.caches
    assert cache.n_stream == N_STREAM and not cache.has_ext and len(cache.layers) == LAYERS


def test_a_well_formed_state_passes_in_any_cell_order() -> None:
    validate_state(blob([0, 1, 2, 3]), REFERENCE, 4, LIMITS)
    validate_state(blob([2, 3, 0, 1]), REFERENCE, 4, LIMITS)  # cells are reused out of order


BAD_STATES = [
    (blob([0, 1, 2, 0x7FFFFFFF]), 4, "found position 2147483647"),
    (blob([0, 1, 1, 3]), 4, "positions must be exactly 0..3"),
    (blob([0, 1, 2, 3]), 3, "4 cells for 3 tokens"),
    (blob([0, 1, 2]), 4, "3 cells for 4 tokens"),
    (blob([0, 1], n_seq=2), 2, "exactly one sequence"),
    (blob([0, 1], rows=(ROW + 2, ROW)), 2, "layer 0: K type 1, row 10 bytes"),
    (blob([0, 1], rows=(ROW, ROW - 2)), 2, "layer 0: V type 1, row 6 bytes"),
    (blob([0, 1], layers=LAYERS + 1), 2, "4 layers"),
    (blob([0, 1], tail=b"\0"), 2, "1 bytes follow"),
    (blob([0, 1])[:-3], 2, "ends inside layer 2 V data"),
    (blob([0, 1], stream=5), 2, "names sequence 5"),
    (blob(list(range(64))), 64, "at most 63"),
    (b"\0" * 7, 1, "state magic 0x0"),
    (struct.pack("<I", MAGIC) + b"\0" * 3, 1, "ends inside the sequence id"),
]


@pytest.mark.parametrize(
    ("state", "n_tokens", "words"), BAD_STATES, ids=[words for _, _, words in BAD_STATES]
)
def test_inconsistent_states_are_refused_naming_the_fault(
    state: bytes, n_tokens: int, words: str
) -> None:
    with pytest.raises(KVFormatError, match=words.replace("(", r"\(")):
        validate_state(state, REFERENCE, n_tokens, LIMITS)


def test_a_huge_claimed_size_is_refused_without_reading_it() -> None:
    state = bytearray(blob([0, 1]))
    at = 12 + 4 + 4 + 2 * 12 + 8 + 4  # the first K row size
    struct.pack_into("<Q", state, at, 1 << 60)
    with pytest.raises(KVFormatError, match="row 1152921504606846976 bytes"):
        validate_state(bytes(state), REFERENCE, 2, LIMITS)
