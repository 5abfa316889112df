"""The engine's bookkeeping types: a request being decoded (`SlotJob`), a sequence slot
(`Slot`), and one slot's share of a decode step (`Part`)."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edgebox.runtimes.jobs import GenerationJob
from edgebox.runtimes.prefix_blocks import BlockChain
from edgebox.runtimes.text import StopMatcher, TokenTextDecoder


@dataclass(eq=False, kw_only=True)
class SlotJob(GenerationJob):
    """A generation request as the batching engine serves it: its sampler, its stop-string
    matcher, the prompt tokens still to prefill and the token to decode next."""

    sampler: ctypes.c_void_p
    matcher: StopMatcher
    greedy: bool = False  # the highest logit wins: picked without the sampler chain
    pending: list[int] = field(default_factory=list)  # prompt tokens still to prefill
    cached_tokens: int = 0
    generated: int = 0
    next_token: int | None = None  # to decode next: the prompt's last token, then each sampled one
    decoder: TokenTextDecoder = field(default_factory=TokenTextDecoder)
    # A trial of an uploaded KV snapshot: it must import, and its one decoded token must give
    # finite logits; it counts in no statistics.
    probe: bool = False

    def readmit(self, held: Sequence[int]) -> None:
        """Feed the `held` tokens (whose KV cells were lost) again before what was pending; the
        last token still goes through a decode of its own, as on first admission."""
        tokens = [*held, *self.pending, *([] if self.next_token is None else [self.next_token])]
        if self.request.export_kv:
            self.pending, self.next_token = tokens, None
        else:
            self.pending, self.next_token = tokens[:-1], tokens[-1]


@dataclass(eq=False)
class Slot:
    seq_id: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV cells this seq holds
    job: SlotJob | None = None
    last_used: float = 0.0
    # Holds cells loaded from a client's snapshot: labelled by that client's token list,
    # so they are never offered to another request's prefix match.
    imported: bool = False
    blocks: BlockChain = field(default_factory=BlockChain)  # chained hashes of `cached`

    def clear(self) -> None:
        self.cached = []
        self.imported = False
        self.blocks.truncate(0)


@dataclass(eq=False)
class Part:
    """One slot's tokens in a decode step: a prompt chunk, or one token to sample after."""

    slot: Slot
    start: int  # position of the first token
    tokens: list[int]
    logits: bool  # the (single) token is sampled after the decode
    export: bool = False  # the prompt is then complete: export the sequence's KV


# A slot sharing less than this share of a prompt is no match for it (llama-server's
# --slot-prompt-similarity default): a new conversation whose prompt shares only the chat
# template's first tokens with another's must not take that conversation's slot.
MIN_SHARED = 0.1


def choose_slot(free: Sequence[Slot], prompt: Sequence[int]) -> Slot:
    """The free slot sharing the longest prefix with `prompt`; where none shares a tenth of it,
    the least recently used (an empty one first), so other conversations' caches survive."""
    best = max(free, key=lambda s: (common_prefix_len(s.cached, prompt), -s.last_used))
    if common_prefix_len(best.cached, prompt) < MIN_SHARED * len(prompt):
        return min(free, key=lambda s: (bool(s.cached), s.last_used))
    return best


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class BatchArrays:
    """The llama_batch's arrays, looked up once: every attribute or row access on the ctypes
    struct builds a new pointer object, which the step loop would otherwise do per token.
    Every row carries one sequence id, so `n_seq_id` is set once here."""

    def __init__(self, batch: Any, n_batch: int) -> None:
        self.batch = batch
        self.token = batch.token
        self.pos = batch.pos
        self.logits = batch.logits
        self.seq = [batch.seq_id[i] for i in range(n_batch)]
        n_seq_id = batch.n_seq_id
        for i in range(n_batch):
            n_seq_id[i] = 1

    def fill(self, parts: Sequence[Part]) -> list[tuple[Part, int]]:
        """Lay `parts` out in the batch; each part's last row (where its logits are)."""
        token, pos, logits, seq = self.token, self.pos, self.logits, self.seq
        n = 0
        rows: list[tuple[Part, int]] = []
        for part in parts:
            seq_id, want, start = part.slot.seq_id, part.logits, part.start
            for i, t in enumerate(part.tokens):
                token[n] = t
                pos[n] = start + i
                seq[n][0] = seq_id
                logits[n] = want
                n += 1
            rows.append((part, n - 1))
        self.batch.n_tokens = n
        return rows
