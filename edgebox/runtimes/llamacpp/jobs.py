"""The engine's bookkeeping types: a request being served (`Job`), a sequence slot (`Slot`),
and one slot's share of a decode step (`Part`)."""

from __future__ import annotations

import ctypes
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from edgebox.runtimes.base import EventSink, GenerationRequest
from edgebox.runtimes.prefix_blocks import BlockChain
from edgebox.runtimes.text import StopMatcher, TokenTextDecoder


@dataclass(eq=False)
class Job:
    request: GenerationRequest
    sink: EventSink
    sampler: ctypes.c_void_p
    matcher: StopMatcher
    timeout: float | None
    submitted: float = field(default_factory=time.monotonic)
    admitted: float | None = None
    pending: list[int] = field(default_factory=list)  # prompt tokens still to prefill
    cached_tokens: int = 0
    generated: int = 0
    next_token: int | None = None  # to decode next: the prompt's last token, then each sampled one
    cancelled: bool = False
    decoder: TokenTextDecoder = field(default_factory=TokenTextDecoder)
    # A trial of an uploaded KV snapshot: it must import, and its one decoded token must give
    # finite logits; it counts in no statistics.
    probe: bool = False

    @property
    def deadline(self) -> float | None:
        return None if self.timeout is None else self.submitted + self.timeout

    def cancel(self) -> None:
        self.cancelled = True

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
    job: Job | None = None
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


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def timeout_message(job: Job, doing: str) -> str:
    return f"the request timed out after {job.timeout:g} s ({doing})"
