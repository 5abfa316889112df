"""Reading llama.cpp's per-sequence state blob (`llama_state_seq_get_data`) in Python, bounded,
so an uploaded snapshot is checked completely before any of it reaches native code.

The blob is `u32 magic, i32 seq_id` (llama_context::state_seq_get_data), then one section
per KV cache (two for interleaved sliding-window models), each as
`llama_kv_cache::state_write` writes it (llama-kv-cache.cpp), little-endian:

    u32 n_stream
    per stream: u32 cell_count; when non-zero:
        per cell:  i32 pos, u32 n_seq_id, [12-byte cell ext: i32 x, i32 y, i32 tok], i32 seq_id x n
        u32 v_trans, u32 n_layer
        per layer: i32 k_type, u64 k_row_bytes, cell_count x k_row_bytes
        v_trans 0: per layer i32 v_type, u64 v_row_bytes, cell_count x v_row_bytes
        v_trans 1: per layer i32 v_type, u32 v_elem_bytes, u32 n_embd_v,
                   n_embd_v x cell_count x v_elem_bytes

llama.cpp itself checks types, row sizes and layer counts, but not cell positions: a cell at
position 0x7fffffff is loaded, cannot be removed again (`seq_rm` stops below INT32_MAX) and
makes every later batch on that sequence fail. Positions are what this module exists for.

What the shapes must be is not computed from model metadata (head dims vary per layer and
per architecture) but read from a one-cell blob the engine exports itself: `reference_layout`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

_EXT_BYTES = 12  # llama_kv_cell_ext: x, y, tok
LLAMA_TOKEN_NULL = -1


class KVFormatError(ValueError):
    """The blob is not a well-formed sequence state for this engine; the message says why."""


@dataclass(frozen=True)
class LayerShape:
    k_type: int
    k_row: int
    v_type: int
    v_row: int  # v_trans 0: bytes per cell; v_trans 1: bytes per element x n_embd_v
    v_embd: int = 0  # v_trans 1 only


@dataclass(frozen=True)
class CacheLayout:
    n_stream: int
    has_ext: bool
    v_trans: int
    layers: tuple[LayerShape, ...]


@dataclass(frozen=True)
class StateLayout:
    """What every saved state of one engine looks like: the format magic and its caches."""

    magic: int
    caches: tuple[CacheLayout, ...]


@dataclass(frozen=True)
class CacheCells:
    """One cache section of a parsed blob: the stream it came from and its cells' positions."""

    stream: int
    positions: np.ndarray  # int32, in blob order


class _Reader:
    def __init__(self, data: bytes | memoryview, offset: int = 0) -> None:
        self.data = memoryview(data)
        self.at = offset
        self.n_layer = 0  # of the stream being read

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.at + n > len(self.data):
            raise KVFormatError(f"the state ends inside {what} (offset {self.at}, {n} bytes)")
        out = self.data[self.at : self.at + n]
        self.at += n
        return out

    def u32(self, what: str) -> int:
        return int(struct.unpack("<I", self.take(4, what))[0])

    def i32(self, what: str) -> int:
        return int(struct.unpack("<i", self.take(4, what))[0])

    def u64(self, what: str) -> int:
        return int(struct.unpack("<Q", self.take(8, what))[0])


def _cell_dtype(has_ext: bool) -> np.dtype:
    fields = [("pos", "<i4"), ("n_seq", "<u4")]
    if has_ext:
        fields += [("x", "<i4"), ("y", "<i4"), ("tok", "<i4")]
    return np.dtype([*fields, ("seq", "<i4")])


def _read_layers(
    r: _Reader, n_cells: int, v_trans: int, expected: tuple[LayerShape, ...]
) -> list[LayerShape]:
    """Layer shapes of one stream, skipping over the K/V bytes (size-checked, never copied);
    each shape must equal `expected`'s as soon as it is read (no expectation: a reference)."""

    def check(il: int, shape: LayerShape) -> LayerShape:
        mine = expected[il] if expected else shape
        if shape != mine:
            raise KVFormatError(
                f"layer {il}: V type {shape.v_type}, row {shape.v_row} bytes "
                f"(width {shape.v_embd}); this engine has type {mine.v_type}, "
                f"row {mine.v_row} bytes (width {mine.v_embd})"
            )
        return shape

    ks: list[tuple[int, int]] = []
    for il in range(len(expected) or r.n_layer):
        k_type, k_row = r.i32(f"layer {il} K type"), r.u64(f"layer {il} K row size")
        if expected and (k_type, k_row) != (expected[il].k_type, expected[il].k_row):
            raise KVFormatError(
                f"layer {il}: K type {k_type}, row {k_row} bytes; this engine has type "
                f"{expected[il].k_type}, row {expected[il].k_row} bytes"
            )
        r.take(k_row * n_cells, f"layer {il} K data")
        ks.append((k_type, k_row))
    shapes: list[LayerShape] = []
    for il, k in enumerate(ks):
        v_type = r.i32(f"layer {il} V type")
        if v_trans:
            elem, embd = r.u32(f"layer {il} V element size"), r.u32(f"layer {il} V width")
            shapes.append(check(il, LayerShape(*k, v_type, elem, embd)))
            r.take(elem * embd * n_cells, f"layer {il} V data")
        else:
            v_row = r.u64(f"layer {il} V row size")
            shapes.append(check(il, LayerShape(*k, v_type, v_row)))
            r.take(v_row * n_cells, f"layer {il} V data")
    return shapes


def _read_cache(
    r: _Reader, layout: CacheLayout, limits: tuple[int, int], index: int
) -> tuple[CacheLayout, CacheCells]:
    """One cache section; `layout` gives n_stream and has_ext (the reference's), `limits`
    the most cells a sequence holds and the vocabulary size."""
    max_cells, n_vocab = limits
    n_stream = r.u32(f"cache {index} stream count")
    if n_stream != layout.n_stream:
        raise KVFormatError(
            f"cache {index} has {n_stream} streams; this engine has {layout.n_stream}"
        )
    found: tuple[CacheLayout, CacheCells] | None = None
    for stream in range(n_stream):
        n_cells = r.u32(f"cache {index} stream {stream} cell count")
        if n_cells == 0:
            continue
        if found is not None:
            raise KVFormatError(f"cache {index} holds cells in more than one stream")
        if n_cells > max_cells:
            raise KVFormatError(
                f"cache {index} holds {n_cells} cells; a sequence here holds at most {max_cells}"
            )
        dtype = _cell_dtype(layout.has_ext)
        cells = np.frombuffer(r.take(dtype.itemsize * n_cells, "the cell list"), dtype=dtype)
        if np.any(cells["n_seq"] != 1):
            raise KVFormatError(f"cache {index}: every cell must belong to exactly one sequence")
        v_trans, r.n_layer = r.u32("the V layout flag"), r.u32("the layer count")
        if layout.layers and (v_trans, r.n_layer) != (layout.v_trans, len(layout.layers)):
            raise KVFormatError(
                f"cache {index}: {r.n_layer} layers (V transposed: {v_trans}); "
                f"this engine has {len(layout.layers)} ({layout.v_trans})"
            )
        if r.n_layer > 4096:
            raise KVFormatError(f"cache {index} claims {r.n_layer} layers")
        shapes = _read_layers(r, n_cells, v_trans, layout.layers)
        seen = CacheLayout(n_stream, layout.has_ext, v_trans, tuple(shapes))
        found = (seen, CacheCells(stream, cells["pos"].copy()))
        _check_ids(cells, n_stream, n_vocab, index)
    if found is None:
        raise KVFormatError(f"cache {index} holds no cells")
    return found


def _check_ids(cells: np.ndarray, n_stream: int, n_vocab: int, index: int) -> None:
    """Sequence ids within the exporter's streams; a cell's token id (kept by models whose
    cells carry one, and looked up in an embedding table) within the vocabulary."""
    seq = cells["seq"]
    if int(seq.min()) < 0 or int(seq.max()) >= max(n_stream, 1):
        raise KVFormatError(f"cache {index}: a cell names a sequence id outside 0..{n_stream - 1}")
    if "tok" in (cells.dtype.names or ()):
        tok = cells["tok"]
        if int(tok.min()) < LLAMA_TOKEN_NULL or int(tok.max()) >= n_vocab:
            raise KVFormatError(f"cache {index}: a cell's token id is outside the vocabulary")


def parse_state(
    data: bytes | memoryview,
    expected: StateLayout,
    limits: tuple[int, int],
) -> tuple[StateLayout, list[CacheCells]]:
    """Every section of `data`, which must be consumed exactly: as many caches as `expected`
    has, each with its stream count and cell format; `limits` are the most cells a sequence
    holds and the vocabulary size."""
    r = _Reader(data)
    magic = r.u32("the state magic")
    if expected.magic and magic != expected.magic:
        raise KVFormatError(f"state magic {magic:#x} is not this llama.cpp's {expected.magic:#x}")
    seq_id = r.i32("the sequence id")
    if seq_id < 0 or seq_id >= max(expected.caches[0].n_stream, 1):
        raise KVFormatError(f"the state names sequence {seq_id}")
    seen, cells = [], []
    for index, layout in enumerate(expected.caches):
        found_layout, found = _read_cache(r, layout, limits, index)
        seen.append(found_layout)
        cells.append(found)
    if r.at != len(r.data):
        raise KVFormatError(f"{len(r.data) - r.at} bytes follow the last cache section")
    return StateLayout(magic, tuple(seen)), cells


def reference_layout(data: bytes, n_stream: int, n_vocab: int) -> StateLayout:
    """The layout of a blob this engine exported itself after decoding one token."""
    for has_ext in (False, True):
        for n_caches in (1, 2):
            guess = StateLayout(0, (CacheLayout(n_stream, has_ext, 0, ()),) * n_caches)
            try:
                layout, _ = parse_state(data, guess, (1, n_vocab))
            except KVFormatError:
                continue
            return layout
    raise KVFormatError("this engine's own one-cell state could not be read")


def check_positions(cells: CacheCells, n_tokens: int, index: int) -> None:
    """The first cache must hold exactly positions 0..n-1; a later (sliding-window) cache
    a contiguous run ending at n-1. Order within a stream is free (cells are reused)."""
    pos = np.sort(cells.positions)
    n = len(pos)
    start = 0 if index == 0 else n_tokens - n
    if n == 0 or start < 0 or (index == 0 and n != n_tokens):
        raise KVFormatError(f"cache {index} holds {n} cells for {n_tokens} tokens")
    expected = np.arange(start, n_tokens, dtype=np.int32)
    if not np.array_equal(pos, expected):
        bad = pos[pos != expected]
        raise KVFormatError(
            f"cache {index}: cell positions must be exactly {start}..{n_tokens - 1}; "
            f"found position {int(bad[0])}"
        )


def validate_state(
    data: bytes | memoryview,
    reference: StateLayout,
    n_tokens: int,
    limits: tuple[int, int],
) -> None:
    """Raise KVFormatError unless `data` is one sequence of exactly `n_tokens` cells at
    positions 0..n_tokens-1 whose every layer matches this engine's own layout; `limits` are
    the most cells a sequence may hold here and the vocabulary size."""
    if n_tokens > limits[0]:
        raise KVFormatError(f"{n_tokens} tokens; a sequence here holds at most {limits[0]}")
    _, cells = parse_state(data, reference, limits)  # shapes are compared as they are read
    for index, found in enumerate(cells):
        check_positions(found, n_tokens, index)
