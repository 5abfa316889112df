"""How much memory a model will take once loaded, read before loading it.

    need = weights (the file's size) + KV cache (bytes per token x context tokens x slots)

The KV figure comes from the GGUF header: 2 (K and V) x layers x KV heads x head size x
2 bytes (f16), per token, as llama.cpp allocates it. A file whose header does not say (ONNX,
MLX directories, an unreadable GGUF) counts its weights only.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

KV_BYTES_PER_ELEMENT = 2  # f16 K and V, llama.cpp's default
MAX_HEADER_KEYS = 4096  # a header with more keys is not one we read
MAX_KEY_BYTES = 1 << 16
MAX_ARRAY_ITEMS = 1 << 22  # a vocabulary of 4 M tokens is past any real model

# GGUF metadata value types: fixed-size scalars by struct format, 8 = string, 9 = array.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q"}
_SCALARS[12] = "d"


@dataclass(frozen=True)
class Footprint:
    """What a model file will cost in memory: its weights, and its KV cache per token."""

    weights: int  # bytes on disk (all files of a directory model)
    kv_bytes_per_token: int = 0  # 0: not known from the file
    context_length: int | None = None  # the trained context, where the header says

    def need(self, n_ctx: int, slots: int = 1) -> int:
        """Bytes once loaded with `slots` sequences of up to `n_ctx` tokens each (the context
        is capped at the trained one, as the runtime caps it)."""
        ctx = min(n_ctx, self.context_length) if self.context_length else n_ctx
        return self.weights + self.kv_bytes_per_token * max(0, ctx) * max(1, slots)


class _Stop(Exception):
    """Enough of the header is read."""


def _value(f: BinaryIO, kind: int, skip: bool) -> object:
    if kind in _SCALARS:
        fmt = "<" + _SCALARS[kind]
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
    if kind == 8:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > MAX_KEY_BYTES * 16:
            raise ValueError("GGUF string too long")
        data = f.read(n)
        return None if skip else data.decode("utf-8", errors="replace")
    if kind == 9:
        item, count = struct.unpack("<IQ", f.read(12))
        if count > MAX_ARRAY_ITEMS:
            raise ValueError("GGUF array too long")
        if item in _SCALARS:  # skip fixed-size arrays in one seek
            f.seek(count * struct.calcsize("<" + _SCALARS[item]), 1)
            return None
        return [_value(f, item, True) for _ in range(count)] and None
    raise ValueError(f"unknown GGUF value type {kind}")


def _header(path: Path) -> dict[str, object]:
    """The GGUF header's scalar values, up to the tokenizer (what follows is the vocabulary)."""
    values: dict[str, object] = {}
    with path.open("rb") as f:
        magic, _version, _tensors, n_kv = struct.unpack("<4sIQQ", f.read(24))
        if magic != b"GGUF" or n_kv > MAX_HEADER_KEYS:
            return {}
        for _ in range(n_kv):
            (n,) = struct.unpack("<Q", f.read(8))
            if n > MAX_KEY_BYTES:
                break
            key = f.read(n).decode("utf-8", errors="replace")
            if key.startswith("tokenizer."):
                break
            (kind,) = struct.unpack("<I", f.read(4))
            values[key] = _value(f, kind, skip=False)
    return values


def _int(values: dict[str, object], key: str) -> int | None:
    value = values.get(key)
    if isinstance(value, list):  # per-layer KV heads: the largest bounds the cache
        return None
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def gguf_footprint(path: Path) -> Footprint:
    """The footprint of a GGUF file; weights only where its header cannot be read."""
    size = path.stat().st_size
    try:
        values = _header(path)
    except (OSError, ValueError, struct.error):
        return Footprint(size)
    arch = values.get("general.architecture")
    if not isinstance(arch, str):
        return Footprint(size)
    layers = _int(values, f"{arch}.block_count")
    embd = _int(values, f"{arch}.embedding_length")
    heads = _int(values, f"{arch}.attention.head_count")
    kv_heads = _int(values, f"{arch}.attention.head_count_kv") or heads
    key_len = _int(values, f"{arch}.attention.key_length")
    value_len = _int(values, f"{arch}.attention.value_length")
    context = _int(values, f"{arch}.context_length")
    if not (layers and kv_heads and (key_len or (embd and heads))):
        return Footprint(size, 0, context)
    head_k = key_len or (embd or 0) // (heads or 1)
    head_v = value_len or head_k
    per_token = layers * kv_heads * (head_k + head_v) * KV_BYTES_PER_ELEMENT
    return Footprint(size, per_token, context)


def model_footprint(path: Path) -> Footprint:
    """A GGUF's footprint from its header, else the size of the file (or directory)."""
    if path.is_dir():
        return Footprint(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()))
    if path.suffix.lower() == ".gguf":
        return gguf_footprint(path)
    return Footprint(path.stat().st_size)


_CACHE: dict[tuple[str, int, int], Footprint] = {}
MAX_CACHED = 256


def cached_footprint(path: Path) -> Footprint | None:
    """`model_footprint` of a file, read once per (path, size, mtime); None: unreadable."""
    try:
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in _CACHE:
            if len(_CACHE) >= MAX_CACHED:
                _CACHE.pop(next(iter(_CACHE)))
            _CACHE[key] = model_footprint(path)
        return _CACHE[key]
    except OSError:
        return None


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_size(text: str) -> int:
    """Bytes from "512MiB", "2GB", "1.5g" or "123456"; ValueError naming the form otherwise."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size; write e.g. 4GiB, 600MB or 123456")
    number, unit = float(match.group(1)), (match.group(2) or "").lower()
    binary = "i" in unit
    letter = unit.rstrip("b").rstrip("i")
    if letter not in _UNITS:
        raise ValueError(f"{text!r} is not a size; write e.g. 4GiB, 600MB or 123456")
    scale = 1024 ** "kmgt".index(letter) * 1024 if binary and letter else _UNITS[letter]
    return int(number * scale)


def format_size(n: int | float) -> str:
    """Bytes as a short human figure: "241 MB", "1.2 GB"."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if abs(n) >= scale:
            value = n / scale
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{int(n)} B"
