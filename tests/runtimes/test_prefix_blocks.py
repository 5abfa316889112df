"""The block-hash chain node and router share: pure, no model needed."""

from __future__ import annotations

import hashlib
import struct

from edgebox.runtimes.prefix_blocks import BLOCK_TOKENS, BlockChain, chain, matched_blocks


def test_each_hash_covers_its_block_and_the_hash_before_it() -> None:
    tokens = list(range(1000, 1000 + 2 * BLOCK_TOKENS + 5))  # two full blocks and a tail
    first = hashlib.blake2b(struct.pack("<32i", *tokens[:32]), digest_size=8).digest()
    second = hashlib.blake2b(first + struct.pack("<32i", *tokens[32:64]), digest_size=8)
    assert chain(tokens) == [first.hex(), second.hexdigest()]  # the partial tail is not hashed


def test_a_different_early_token_changes_every_later_hash() -> None:
    tokens = list(range(96))
    changed = [7, *tokens[1:]]
    assert all(a != b for a, b in zip(chain(tokens), chain(changed), strict=True))
    assert chain(tokens[:64]) == chain(tokens)[:2]  # a shared prefix shares its hashes
    assert chain(tokens[:31]) == []


def test_growing_and_cutting_a_chain_matches_hashing_from_scratch() -> None:
    tokens: list[int] = []
    grown = BlockChain()
    for t in range(200):
        tokens.append(t * 7 % 50_000)
        grown.extended(tokens)
        assert grown.hashes == chain(tokens)
    grown.truncate(70)
    del tokens[70:]
    assert grown.hashes == chain(tokens)
    for t in range(40):  # regrowing after the cut continues from the kept tip
        tokens.append(t)
        grown.extended(tokens)
    assert grown.hashes == chain(tokens) and len(grown.hashes) == 110 // BLOCK_TOKENS
    reset = BlockChain()
    reset.reset(tokens)
    assert reset.hashes == grown.hashes


def test_a_match_is_the_leading_run_of_blocks_any_set_holds() -> None:
    request = chain(list(range(160)))  # five blocks
    node = set(request[:2])
    recent = {request[2]: 1.0}
    assert matched_blocks(request, node) == 2
    assert matched_blocks(request, node, recent) == 3  # recent placements extend the run
    assert matched_blocks(request, set(request[1:])) == 0  # a later block alone is no prefix
    assert matched_blocks(request) == 0


def test_a_chain_grown_by_chunks_matches_hashing_from_scratch() -> None:
    """The engine appends prefill chunks of any size, not one token at a time."""
    tokens: list[int] = []
    grown = BlockChain()
    for size in (5, 40, 1, 100, 31, 33):
        tokens.extend(range(len(tokens), len(tokens) + size))
        grown.extended(tokens)
        assert grown.hashes == chain(tokens)
    assert len(grown.hashes) == 210 // BLOCK_TOKENS
