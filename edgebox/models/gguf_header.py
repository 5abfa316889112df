"""What a GGUF file says about itself: architecture, context length, quantisation, name.

A small reader of the GGUF header only, bounded in everything it reads (key count, string
lengths, array nesting, bytes read in all), so a hostile or truncated file costs at most
`MAX_HEADER_BYTES` of reading and ends in `None` fields, never an exception for the caller."""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

MAX_HEADER_BYTES = 64 << 20  # tokenizer vocabularies live here: a 256k vocab is ~5 MB
MAX_KEYS = 100_000
MAX_STRING = 1 << 20
MAX_DEPTH = 8  # arrays of arrays: real files nest one level, a hostile one thousands
_SCALARS = dict(enumerate("BbHhIif?")) | {10: "Q", 11: "q", 12: "d"}  # type → struct format
_LENGTH = struct.Struct("<Q")  # a string's byte count
# llama.cpp's `general.file_type` (enum llama_ftype) → the name quantisers print
FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
}
_QUANT_IN_NAME = re.compile(r"(?i)[._-]((?:I?Q\d_[A-Z0-9_]+?|Q\d_\d|F16|F32|BF16))(?:[.-]|$)")
_WANTED = ("general.architecture", "general.file_type", "general.name")


class _Bounded:
    """A reader that refuses to go past `limit` bytes in all."""

    def __init__(self, f: BinaryIO, limit: int) -> None:
        self.f, self.left = f, limit

    def read(self, n: int) -> bytes:
        if n > self.left:
            raise ValueError("GGUF header larger than the reader's bound")
        data = self.f.read(n)
        if len(data) != n:
            raise ValueError("truncated GGUF header")
        self.left -= n
        return data

    def unpack(self, fmt: str) -> tuple[object, ...]:
        return struct.unpack("<" + fmt, self.read(struct.calcsize("<" + fmt)))

    def string(self) -> str:
        (n,) = self.unpack("Q")
        if not isinstance(n, int) or n > MAX_STRING:
            raise ValueError("GGUF string longer than the reader's bound")
        return self.read(n).decode("utf-8", errors="replace")

    def skip_strings(self, count: int) -> None:
        """Past `count` strings without decoding them: a 256k-token vocabulary is read in
        ~25 ms this way and ~150 ms string by string (time a pulled model's manifest waits)."""
        read, unpack, left = self.f.read, _LENGTH.unpack, self.left
        for _ in range(count):
            head = read(8)
            if len(head) != 8:
                raise ValueError("truncated GGUF header")
            (n,) = unpack(head)
            left -= 8 + n
            if n > MAX_STRING or left < 0:
                raise ValueError("GGUF header larger than the reader's bound")
            if len(read(n)) != n:
                raise ValueError("truncated GGUF header")
        self.left = left


@dataclass(frozen=True)
class GgufInfo:
    architecture: str | None = None
    context_length: int | None = None
    quantisation: str | None = None
    name: str | None = None


def _value(r: _Bounded, kind: int, depth: int = 0) -> object:
    if depth > MAX_DEPTH:
        raise ValueError("GGUF arrays nested deeper than the reader's bound")
    if kind in _SCALARS:
        return r.unpack(_SCALARS[kind])[0]
    if kind == 8:
        return r.string()
    if kind == 9:
        item, count = r.unpack("IQ")
        assert isinstance(item, int) and isinstance(count, int)
        if item in _SCALARS:  # skipped in one read: vocab scores, token types
            r.read(struct.calcsize("<" + _SCALARS[item]) * count)
        elif item == 8:  # tokens, merges
            r.skip_strings(count)
        else:
            for _ in range(count):
                _value(r, item, depth + 1)
        return None
    raise ValueError(f"unknown GGUF value type {kind}")


def _keys(path: Path) -> dict[str, object]:
    values: dict[str, object] = {}
    with path.open("rb") as f:
        r = _Bounded(f, MAX_HEADER_BYTES)
        magic, _version, _tensors, n_kv = r.unpack("4sIQQ")
        if magic != b"GGUF" or not isinstance(n_kv, int) or n_kv > MAX_KEYS:
            return values
        for _ in range(n_kv):
            key = r.string()
            (kind,) = r.unpack("I")
            assert isinstance(kind, int)
            values[key] = _value(r, kind)
            arch = values.get("general.architecture")
            if arch and all(k in values for k in _WANTED) and f"{arch}.context_length" in values:
                break
    return values


def quantisation_from_name(filename: str) -> str | None:
    """ "Q4_K_M" from "model.Q4_K_M.gguf"; None when the name says nothing."""
    match = _QUANT_IN_NAME.search(filename)
    return match[1].upper() if match else None


def read_gguf_info(path: Path) -> GgufInfo:
    """The header's facts; fields it cannot read stay None (a bad file is not an error here)."""
    try:
        values = _keys(path)
    except (OSError, ValueError, struct.error, AssertionError):
        values = {}
    arch = values.get("general.architecture")
    arch = arch if isinstance(arch, str) else None
    ctx = values.get(f"{arch}.context_length") if arch else None
    ftype = values.get("general.file_type")
    quant = FILE_TYPES.get(ftype) if isinstance(ftype, int) else None
    name = values.get("general.name")
    return GgufInfo(
        architecture=arch,
        context_length=ctx if isinstance(ctx, int) else None,
        quantisation=quant or quantisation_from_name(path.name),
        name=name if isinstance(name, str) else None,
    )
