"""Chained block hashes over token ids: what a node's prefix cache holds, in a form a router
can compare with a request (as Dynamo's KV router does).

The tokens are cut into blocks of `BLOCK_TOKENS`; block i's hash covers block i and, through
the previous hash, every token before it, so equal hashes mean equal prefixes and the longest
run of a request's hashes found on a node is the prefix that node has cached. Only full
blocks are hashed. Node and router both use this module; change it and both change.
"""

from __future__ import annotations

import hashlib
import sys
from array import array
from collections.abc import Container, Sequence

BLOCK_TOKENS = 32
_DIGEST = 8  # bytes: 64-bit hashes, collision-free enough for a few thousand cached blocks


def _block_bytes(tokens: Sequence[int]) -> bytes:
    packed = tokens if isinstance(tokens, array) and tokens.typecode == "i" else array("i", tokens)
    if sys.byteorder == "big":
        packed.byteswap()  # little-endian everywhere
    return packed.tobytes()


def next_hash(previous: bytes, block: Sequence[int]) -> bytes:
    """h_i = blake2b-64(h_{i-1} || block i as int32 little-endian); h_{-1} is empty."""
    return hashlib.blake2b(previous + _block_bytes(block), digest_size=_DIGEST).digest()


def chain(
    tokens: Sequence[int], block_tokens: int = BLOCK_TOKENS, known: Sequence[str] = ()
) -> list[str]:
    """Hex hashes of every full block of `tokens`, first block first; `known` are the hashes
    of its first blocks, already computed (only the blocks after them are hashed)."""
    out = list(known)
    h = bytes.fromhex(out[-1]) if out else b""
    for start in range(len(out) * block_tokens, len(tokens) - block_tokens + 1, block_tokens):
        h = next_hash(h, tokens[start : start + block_tokens])
        out.append(h.hex())
    return out


class BlockChain:
    """The hashes of a growing token list, kept up to date one token at a time.

    `extend` hashes each block as it fills; `truncate` drops the blocks past a cut, so
    a slot's hashes change only when its cached tokens do."""

    def __init__(self, block_tokens: int = BLOCK_TOKENS) -> None:
        self.block_tokens = block_tokens
        self.hashes: list[str] = []
        self._tip = b""

    def reset(self, tokens: Sequence[int]) -> None:
        self.hashes = chain(tokens, self.block_tokens)
        self._tip = bytes.fromhex(self.hashes[-1]) if self.hashes else b""

    def truncate(self, n_tokens: int) -> None:
        del self.hashes[n_tokens // self.block_tokens :]
        self._tip = bytes.fromhex(self.hashes[-1]) if self.hashes else b""

    def extended(self, tokens: Sequence[int]) -> None:
        """Call after appending to the token list `tokens` (one token or a whole chunk):
        hashes every block filled since the last call."""
        size = self.block_tokens
        while len(self.hashes) < len(tokens) // size:
            start = len(self.hashes) * size
            self._tip = next_hash(self._tip, tokens[start : start + size])
            self.hashes.append(self._tip.hex())


def matched_blocks(request: Sequence[str], *known: Container[str]) -> int:
    """How many of the request's leading blocks some container of a node's hashes holds.

    Hashes are chained, so the first block not held ends the match."""
    n = 0
    for h in request:
        if not any(h in k for k in known):
            break
        n += 1
    return n
