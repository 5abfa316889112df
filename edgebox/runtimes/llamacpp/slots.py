"""The engine's bookkeeping types: a request being decoded (`SlotJob`), a sequence slot
(`Slot`), and one slot's share of a decode step (`Part`)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edgebox.runtimes.jobs import GenerationJob
from edgebox.runtimes.prefix_blocks import BlockChain
from edgebox.runtimes.text import StopMatcher, TokenTextDecoder

if TYPE_CHECKING:
    from edgebox.runtimes.llamacpp.jump_forward import CallHeads
    from edgebox.runtimes.llamacpp.sampling import Sampler


@dataclass(eq=False, kw_only=True)
class SlotJob(GenerationJob):
    """A generation request as the batching engine serves it: its sampler, its stop-string
    matcher, the prompt tokens still to prefill and the token to decode next."""

    sampler: Sampler
    matcher: StopMatcher
    greedy: bool = False  # the highest logit wins: picked without the sampler chain
    pending: list[int] = field(default_factory=list)  # prompt tokens still to prefill
    cached_tokens: int = 0
    generated: int = 0
    # The last sampled token and any forced text after it (a jump), to decode next.
    next_tokens: list[int] = field(default_factory=list)
    # An imported prompt's first token comes from its exporter's logits, with no decode.
    given_logits: np.ndarray | None = None
    # Text the request's grammar leaves no choice about at the start of the reply (a forced
    # call's header): prefilled with the prompt, written out before the first sampled token.
    forced: list[int] = field(default_factory=list)
    heads: CallHeads | None = None  # follows the reply while a call's head may still come
    # An end-of-generation token to ask the grammar about: once it allows it, nothing else
    # may follow (`tool_grammar.ends_when_complete`) and the reply ends there.
    end_token: int | None = None
    # Control tokens the reply shows as their text: a tool format's tags (`shown_tags`).
    shown: frozenset[int] = frozenset()
    decoder: TokenTextDecoder = field(default_factory=TokenTextDecoder)
    # A trial of an uploaded KV snapshot: it must import, and its one decoded token must give
    # finite logits; it counts in no statistics.
    probe: bool = False

    def readmit(self, held: Sequence[int]) -> None:
        """Feed the `held` tokens (whose KV cells were lost) again before what was pending and
        the sampled tokens not yet decoded; sampling resumes after the last of them."""
        self.pending, self.next_tokens = [*held, *self.pending, *self.next_tokens], []
        self.given_logits = None  # the last of them gives the logits again


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
    # The logits after the first n cached tokens (a prompt), kept from when its first token
    # was sampled (or from an imported snapshot): the same prompt again samples from them
    # instead of decoding its last token once more, and so starts exactly as it did.
    prompt_logits: tuple[int, np.ndarray] | None = None

    def logits_after(self, prompt: Sequence[int]) -> np.ndarray | None:
        """The kept logits, when they follow exactly `prompt`."""
        if self.prompt_logits is None:
            return None
        n, row = self.prompt_logits
        return row if n == len(prompt) and self.cached[:n] == list(prompt) else None

    def remember_logits(self, row: np.ndarray) -> None:
        """Keep `row` as the logits after everything the slot holds (a prompt just ended)."""
        self.prompt_logits = (len(self.cached), row)

    def keep(self, prompt: Sequence[int], n: int) -> None:
        """Hold the first `n` tokens of `prompt` (the cells after them are gone)."""
        self.cached = list(prompt[:n])
        self.blocks.truncate(n)  # an imported slot has none: not shared
        if self.prompt_logits is not None and self.prompt_logits[0] > n:
            self.prompt_logits = None

    def clear(self) -> None:
        self.cached = []
        self.blocks.truncate(0)  # before `imported` goes: /health never sees imported hashes
        self.imported = False
        self.prompt_logits = None


@dataclass(eq=False)
class Part:
    """One slot's tokens in a decode step: a prompt chunk, or the last sampled token."""

    slot: Slot
    start: int  # position of the first token
    tokens: list[int]
    logits: bool  # the logits after the part's last token are wanted: sampled from, or exported
    export: bool = False  # the prompt is then complete: export the sequence's KV


# A slot sharing less than this share of a prompt is no match for it (llama-server's
# --slot-prompt-similarity default): a new conversation whose prompt shares only the chat
# template's first tokens with another's must not take that conversation's slot.
MIN_SHARED = 0.1


def choose_slot(free: Sequence[Slot], prompt: Sequence[int], busy: Collection[int] = ()) -> Slot:
    """The free slot sharing the longest prefix with `prompt`; where none shares a tenth of it,
    one next to the `busy` slots' sequence ids (`runs_with`), else the least recently used (an
    empty one first), so other conversations' caches survive. Among equal prefixes, too, the
    one that keeps the busy sequences together."""
    shared = {s.seq_id: common_prefix_len(s.cached, prompt) for s in free}
    best = max(free, key=lambda s: (shared[s.seq_id], -runs_with(busy, s.seq_id), -s.last_used))
    if shared[best.seq_id] < MIN_SHARED * len(prompt):
        return unshared_slot(free, busy)
    return best


def unshared_slot(free: Sequence[Slot], busy: Collection[int]) -> Slot:
    """The free slot for a sequence whose prefix no slot holds: next to the busy ones where one
    is, then an empty one, then the least recently used."""
    return min(free, key=lambda s: (runs_with(busy, s.seq_id), bool(s.cached), s.last_used))


def runs_with(busy: Collection[int], seq_id: int) -> int:
    """How many runs of consecutive sequence ids the busy ones and `seq_id` make. llama.cpp
    decodes the sequences of a split KV cache (`kv_unified` off) together only where their ids
    run consecutively: each run is a ubatch of its own, the whole model's compute again. Four
    streams on slots 0, 2, 4, 6 took 1.5 times as long a step as on 0-3 (2-core EPYC,
    benchmarks/bench_slot_runs.py)."""
    return runs({*busy, seq_id})


def runs(ids: Collection[int]) -> int:
    """How many runs of consecutive numbers `ids` make."""
    return sum(1 for i in ids if i - 1 not in ids)


def gap_move(slots: Sequence[Slot], max_cells: int) -> tuple[Slot, Slot] | None:
    """A busy slot and a free one whose contents, exchanged, bring the busy sequences closer
    to one run of consecutive ids (`runs`; fewer runs, else fewer free ids between them, so a
    gap of several slots closes in as many moves): when a request in the middle of a run ends
    and no new one takes its slot, the others would otherwise decode in two ubatches until
    they end. Only a run's end moves, next to another busy slot. Among such exchanges, the
    one moving the fewest cells (the free slot's cache moves too: nothing is evicted). None
    when the busy slots are one run, or no exchange helps. A request whose first token comes
    from kept logits (`SlotJob.given_logits`) stays put until that token is drawn, a probe of
    an uploaded snapshot stays in its slot, and neither slot may hold more than `max_cells`
    (what a saved state carries whole)."""
    busy = [s for s in slots if s.job is not None]
    ids = {s.seq_id for s in busy}
    now = (runs(ids), holes(ids))
    if now[0] <= 1:
        return None
    best: tuple[int, int, int, Slot, Slot] | None = None
    for src in busy:
        assert src.job is not None
        i = src.seq_id
        if i - 1 in ids and i + 1 in ids:  # inside a run
            continue
        if src.job.given_logits is not None or src.job.probe or len(src.cached) > max_cells:
            continue
        rest = ids - {i}
        for dst in slots:
            j = dst.seq_id
            if dst.job is not None or len(dst.cached) > max_cells:
                continue
            if j - 1 not in rest and j + 1 not in rest:
                continue
            after = {*rest, j}
            key = (runs(after), holes(after), len(src.cached) + len(dst.cached))
            if key[:2] < now and (best is None or key < best[:3]):
                best = (*key, src, dst)
    return None if best is None else (best[3], best[4])


# A move's cost is weighed against the steps it saves (`worth_moving`): at most this many (a
# reply's length is unknown until it ends), each a quarter of a decode step (a step in two
# ubatches took 25.6 ms against 18.5 in one at four streams, `bench_ended_streams.py`).
MOVE_HORIZON = 64
SPLIT_SHARE = 0.25


def worth_moving(src: Slot, dst: Slot, s_per_cell: float, step_s: float, n_ctx: int) -> bool:
    """Whether exchanging `src` (busy) and `dst` costs less than the split steps it saves:
    `s_per_cell` a move's seconds per cell (both slots'), `step_s` a decode step's seconds;
    a request with few tokens left (its `max_tokens`, or the context) ends the split soon
    enough by itself."""
    job = src.job
    assert job is not None
    left = n_ctx - len(src.cached)
    if job.request.max_tokens is not None:
        left = min(left, job.request.max_tokens - job.generated)
    cost = s_per_cell * (len(src.cached) + len(dst.cached))
    return cost <= SPLIT_SHARE * step_s * min(left, MOVE_HORIZON)


def holes(ids: Collection[int]) -> int:
    """How many numbers between the least and the greatest of `ids` are not among them."""
    return max(ids) - min(ids) + 1 - len(ids) if ids else 0


def evictee(slot: Slot, free: Sequence[Slot]) -> Slot | None:
    """The free slot whose cache should go instead of `slot`'s, which a request sharing none
    of it takes to sit next to the busy ones (`unshared_slot`): the one it would have taken
    otherwise (an empty one, else the least recently used), where that is another slot
    holding less (`slot` empty, or itself the least recently used: None)."""
    other = min(free, key=lambda s: (bool(s.cached), s.last_used))
    if other is slot or not slot.cached or (other.cached and other.last_used >= slot.last_used):
        return None
    return other


def swap_contents(a: Slot, b: Slot) -> None:
    """Exchange everything two slots hold but their sequence ids (their cells were exchanged:
    `kv_state.swap_sequences`)."""
    for name in ("cached", "job", "last_used", "imported", "blocks", "prompt_logits"):
        value = getattr(a, name)
        setattr(a, name, getattr(b, name))
        setattr(b, name, value)


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _seq_id(part: Part) -> int:
    return part.slot.seq_id


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
        """Lay `parts` out in the batch; each part's last row (the only one that may want
        logits: a prompt's earlier tokens need none)."""
        token, pos, logits, seq = self.token, self.pos, self.logits, self.seq
        n = 0
        rows: list[tuple[Part, int]] = []
        # in sequence-id order: llama.cpp puts sequences in one ubatch only where their ids
        # come in increasing consecutive order (`runs_with`)
        for part in sorted(parts, key=_seq_id):
            seq_id, want, start = part.slot.seq_id, part.logits, part.start
            for i, t in enumerate(part.tokens):
                token[n] = t
                pos[n] = start + i
                seq[n][0] = seq_id
                logits[n] = False
                n += 1
            logits[n - 1] = want
            rows.append((part, n - 1))
        self.batch.n_tokens = n
        return rows
