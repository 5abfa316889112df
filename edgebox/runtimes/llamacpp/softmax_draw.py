"""A sampled draw in numpy: truncation (top-k, top-p, min-p), temperature and a seeded draw, as
llama.cpp's samplers make it, and a draw the request's grammar refused settled from the best
tokens where that is exact (`SoftmaxDraw`)."""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable

import llama_cpp
import numpy as np

from edgebox.runtimes.base import SamplingError, SamplingParams

# A draw over the whole vocabulary sums its weights in blocks of this many (`SoftmaxDraw`).
DRAW_BLOCK = 256
# A draw the grammar refuses: how many best tokens are checked alone before the grammar masks
# the whole vocabulary (greedy: `Sampler._best_allowed`; sampled: `SoftmaxDraw.draw_allowed`,
# which then tries this many draws from outside them).
SHORTLIST = 32
REDRAWS = 8
# Top-p first sorts this many best tokens; where they fall short of the mass, the tokens this
# many nats below the best, up to this many of them (flat rows of Gemma 3's 262k vocabulary
# hold a nucleus of tens to a few thousand tokens); else it sums the mass in bins of logit depth
# (this many a nat, this many bins; deeper ones share the last).
NUCLEUS_FIRST = 64
NUCLEUS_DEPTHS = (8.0, 12.0, 16.0)
NUCLEUS_SORTED = 8192
# The k best tokens are looked for first among those this many nats below the best (`_best`).
BEST_DEPTHS = (8.0, 16.0)
NUCLEUS_BINS_PER_NAT = 16
NUCLEUS_BINS = 640


@functools.lru_cache(maxsize=8)
def token_ids(n_vocab: int) -> np.ndarray:
    return np.arange(n_vocab, dtype=np.int32)


def _best(values: np.ndarray, peak: float, k: int) -> np.ndarray:
    """The indices of the `k` highest values (fewer than there are), in increasing order (the
    callers break ties by position: top-p after top-k, a refused draw's shortlist); of equal
    values at the edge, the lowest indices (as greedy picks the lowest). Looked for among
    those within a few nats of the peak where enough are (on real logits, dozens to hundreds
    of 49k), which a partial sort then orders a fraction of the cost of sorting them all.

    Where fewer than `k` tokens have a weight (a row the grammar masked: a handful finite, the
    rest -inf), only those: llama.cpp's top-k keeps k with the rest at -inf, which are never
    drawn and add no mass, and a partial sort of tens of thousands of equal -inf values costs
    ~6 ms for 49k tokens."""
    near = None
    for depth in BEST_DEPTHS:
        within = np.flatnonzero(values >= peak - depth)
        if len(within) >= k:
            near = within
            break
    if near is None:
        near = np.flatnonzero(values > -np.inf)
        if len(near) <= k:
            return near
    nearby = values[near]
    chosen = np.argpartition(nearby, len(near) - k)[len(near) - k :]
    edge = nearby[chosen].min()
    if np.count_nonzero(nearby >= edge) == k:  # no tie across the edge
        return near[np.sort(chosen)]
    above = chosen[nearby[chosen] > edge]
    ties = np.flatnonzero(nearby == edge)  # in increasing order
    return near[np.sort(np.concatenate((above, ties[: k - len(above)])))]


def _reaching(
    indices: np.ndarray, values: np.ndarray, mass: np.ndarray, goal: float
) -> np.ndarray | None:
    """The fewest of `indices`, best first (ties: lowest index), whose mass reaches `goal`;
    None where all of them fall short."""
    order = indices[np.lexsort((indices, -values[indices]))]
    running = np.cumsum(mass[order], dtype=np.float64)
    cut = int(np.searchsorted(running, goal, side="left"))
    return order[: cut + 1] if cut < len(order) else None


class SoftmaxDraw:
    """Truncation (top-k, then top-p, then min-p, each on the raw logits), the temperature
    and a seeded draw, in numpy: what llama.cpp's samplers do in that order, at a fraction of
    their cost where it counts (`benchmarks/bench_sampling.py`, real SmolLM2 rows of 49k
    tokens): a draw at a temperature alone 0.38 ms through llama.cpp's chain, 0.08 ms here;
    top-p alone 0.84 ms (it sorts the vocabulary), 0.18 ms here (the best 64 sorted, else the
    mass in bins of logit depth) — against a ~10 ms decode step at two threads. Exact up to
    ties, which go to the lowest id.

    The whole vocabulary is drawn by block sums (`DRAW_BLOCK`): a block by their running sums,
    then a token inside it. A token of weight 0 (a grammar's -inf) is never drawn; a row with
    no finite best logit is an error."""

    def __init__(self, params: SamplingParams) -> None:
        self.scale = 1.0 / params.temperature
        self.top_k, self.top_p, self.min_p = params.top_k, params.top_p, params.min_p
        seed = None if params.seed is None else params.seed & 0xFFFFFFFF
        if seed == llama_cpp.LLAMA_DEFAULT_SEED:  # -1: llama.cpp's "a fresh seed"
            seed = None
        self.generator = np.random.default_rng(seed)
        self._weights = np.zeros(0, np.float32)

    def draw(self, logits: np.ndarray) -> int:
        """The index drawn from `logits` (a row, or a strided view of one)."""
        peak = float(logits.max())
        if not math.isfinite(peak):
            raise SamplingError(
                "the sampler selected no token: the logits are not finite", "logits"
            )
        kept = self._truncated(logits, peak)
        if kept is None:
            return self._draw_all(logits, peak)
        weights = np.exp((logits[kept] - peak) * self.scale, dtype=np.float32)
        return int(kept[self._pick(weights)])

    def _truncated(self, logits: np.ndarray, peak: float) -> np.ndarray | None:
        """The indices top-k, top-p and min-p keep (None: every token)."""
        n = len(logits)
        kept = None
        if 0 < self.top_k < n:
            kept = _best(logits, peak, self.top_k)
        if self.top_p < 1.0:
            kept = self._nucleus(logits, peak, kept)
        if self.min_p > 0.0:
            floor = peak + math.log(self.min_p)  # p >= min_p * p(best), on the raw logits
            kept = np.flatnonzero(logits >= floor) if kept is None else kept[logits[kept] >= floor]
        return kept

    def _nucleus(self, logits: np.ndarray, peak: float, kept: np.ndarray | None) -> np.ndarray:
        """The fewest best of `kept` (or of every token) whose softmax mass reaches top_p:
        among the best `NUCLEUS_FIRST` sorted, else by the mass in bins of logit depth (the
        bins above the one where the mass is reached whole, that one's best sorted)."""
        values = logits if kept is None else logits[kept]
        mass = np.exp(values - peak, dtype=np.float32)
        goal = self.top_p * float(mass.sum(dtype=np.float64))
        if len(values) > NUCLEUS_FIRST:
            best = _best(values, peak, NUCLEUS_FIRST)
            chosen = _reaching(best, values, mass, goal)
            if chosen is None:
                chosen = self._near(values, peak, mass, goal)
            if chosen is None:
                chosen = self._binned(values, peak, mass, goal)
        else:
            chosen = _reaching(np.arange(len(values)), values, mass, goal)
            chosen = np.arange(len(values)) if chosen is None else chosen
        return chosen if kept is None else kept[chosen]

    @staticmethod
    def _near(values: np.ndarray, peak: float, mass: np.ndarray, goal: float) -> np.ndarray | None:
        """The nucleus among the tokens a few nats below the best (`NUCLEUS_DEPTHS`), where
        their mass reaches the goal (every token outside is worse than all of them) and they
        are few enough to sort (`NUCLEUS_SORTED`); None otherwise."""
        for depth in NUCLEUS_DEPTHS:
            near = np.flatnonzero(values >= peak - depth)
            if len(near) > NUCLEUS_SORTED:
                return None
            chosen = _reaching(near, values, mass, goal)
            if chosen is not None:
                return chosen
        return None

    @staticmethod
    def _binned(values: np.ndarray, peak: float, mass: np.ndarray, goal: float) -> np.ndarray:
        depth = np.minimum((peak - values) * NUCLEUS_BINS_PER_NAT, NUCLEUS_BINS)
        bins = depth.astype(np.intp)  # -inf logits: the last bin
        running = np.cumsum(np.bincount(bins, weights=mass, minlength=NUCLEUS_BINS + 1))
        b = min(int(np.searchsorted(running, goal, side="left")), NUCLEUS_BINS)
        edge = np.flatnonzero(bins == b)
        rest = _reaching(edge, values, mass, goal - (running[b - 1] if b else 0.0))
        return np.concatenate((np.flatnonzero(bins < b), edge if rest is None else rest))

    def _draw_all(self, logits: np.ndarray, peak: float) -> int:
        blocks = self._weighed(logits, peak)
        b = self._pick(blocks.sum(axis=1))
        return b * DRAW_BLOCK + self._pick(blocks[b])

    def _weighed(self, logits: np.ndarray, peak: float) -> np.ndarray:
        """Every token's weight, exp((logit - peak) / T), in blocks of `DRAW_BLOCK` (a buffer
        kept for the next draw; zeros past the end round it up to whole blocks)."""
        n = len(logits)
        size = -(-n // DRAW_BLOCK) * DRAW_BLOCK
        if len(self._weights) != size:
            self._weights = np.zeros(size, np.float32)
        weights = self._weights
        weights[n:] = 0.0  # a shorter row than the last of the same rounded size leaves weights
        np.subtract(logits, peak, out=weights[:n])
        if self.scale != 1.0:  # temperature 1 (OpenAI's default): one pass less
            np.multiply(weights[:n], self.scale, out=weights[:n])
        np.exp(weights[:n], out=weights[:n])
        return weights.reshape(-1, DRAW_BLOCK)

    def draw_allowed(self, logits: np.ndarray, allows: Callable[[int], bool]) -> int | None:
        """A draw as `draw` makes it over only the tokens `allows` lets through, where the
        best few settle it (`SHORTLIST`, plus top-k's k up to three times that; each checked
        alone: microseconds, against 5 to 11 ms for a grammar's mask of SmolLM2's
        vocabulary); None where only a mask would.

        Truncated, the draw is over the truncation of the allowed tokens (as masking first,
        then truncating): settled where the shortlist holds top-k allowed tokens, or min-p's
        bar is above every token outside it, or top-p's nucleus ends among its allowed tokens
        whatever the allowed outside it weigh (`_allowed_nucleus`). Untruncated, by
        rejection: the allowed of the shortlist and every token outside it are proposed by
        weight, an outside one checked and, if refused, taken out (`REDRAWS` times at most) —
        exactly the masked odds."""
        n = len(logits)
        peak = float(logits.max())
        if not math.isfinite(peak):
            return None
        # room for top-k's allowed beside the refused (at least the draw refused): a shortlist
        # of exactly k never holds k allowed, and each miss is a mask (~6 ms for 262k tokens
        # where most are allowed, inside a string)
        size = SHORTLIST + min(max(self.top_k, 0), 3 * SHORTLIST)
        top = _best(logits, peak, size) if n > size else np.arange(n)
        allowed = top[[allows(int(t)) for t in top]]
        if not len(allowed):
            return None
        values = logits[allowed]
        if self.top_k > 0 or self.top_p < 1.0 or self.min_p > 0.0:
            # every token outside `top` is at most this (-inf: `top` holds all that have weight)
            floor = float(logits[top].min()) if n > size == len(top) else -math.inf
            bar = float(values.max()) + math.log(self.min_p) if self.min_p > 0.0 else -math.inf
            settled = 0 < self.top_k <= len(allowed) or (self.top_p >= 1.0 and bar > floor)
            if settled:
                return int(allowed[self.draw(values)])
            kept = self._allowed_nucleus(logits, peak, top, allowed, floor)
            if kept is None:
                return None
            best = float(logits[kept].max())
            weights = np.exp((logits[kept] - best) * self.scale, dtype=np.float32)
            return int(kept[self._pick(weights)])
        return self._rejection(logits, peak, top, allowed, allows)

    def _allowed_nucleus(
        self, logits: np.ndarray, peak: float, top: np.ndarray, allowed: np.ndarray, floor: float
    ) -> np.ndarray | None:
        """The tokens top-p (then min-p) keeps of the masked vocabulary, settled from the
        shortlist's allowed tokens where that is exact; None otherwise (or without top-p).
        The allowed tokens outside the shortlist (each at most `floor`, so after all of its
        allowed in the nucleus's order) weigh anywhere from nothing to all the mass outside it
        (less, with top-k's cut); where the nucleus ends at the same allowed token of the
        shortlist at both ends, above every token outside, it ends there whatever the mask. A
        mask of a string's state (most tokens allowed) costs ~10 ms for SmolLM2's vocabulary,
        ~60 ms for Gemma 3's; this, one pass over the row."""
        if self.top_p >= 1.0:
            return None
        mass = np.exp(logits - peak, dtype=np.float32)
        inside = float(mass[allowed].sum(dtype=np.float64))
        outside = max(0.0, float(mass.sum(dtype=np.float64) - mass[top].sum(dtype=np.float64)))
        fewest = _reaching(allowed, logits, mass, self.top_p * inside)
        kept = _reaching(allowed, logits, mass, self.top_p * (inside + outside))
        if fewest is None or kept is None or len(fewest) != len(kept):
            return None
        if not float(logits[kept[-1]]) > floor:  # a token outside may tie with the last
            return None
        if self.min_p > 0.0:
            kept = kept[logits[kept] >= float(logits[kept[0]]) + math.log(self.min_p)]
        return kept

    def _rejection(
        self,
        logits: np.ndarray,
        peak: float,
        top: np.ndarray,
        allowed: np.ndarray,
        allows: Callable[[int], bool],
    ) -> int | None:
        blocks = self._weighed(logits, peak)
        weights = blocks.reshape(-1)
        inside = weights[allowed].astype(np.float64)
        weights[top] = 0.0  # the shortlist's refused are out; its allowed are `inside`
        sums = blocks.sum(axis=1, dtype=np.float64)
        for _ in range(REDRAWS):
            total, outside = float(inside.sum()), float(sums.sum())
            if total + outside <= 0.0:  # every weight underflowed
                return None
            if self.generator.random() * (total + outside) < total:
                return int(allowed[self._pick(inside)])
            b = self._pick(sums)
            i = self._pick(blocks[b])
            if allows(b * DRAW_BLOCK + i):
                return b * DRAW_BLOCK + i
            blocks[b, i] = 0.0
            sums[b] = float(blocks[b].sum(dtype=np.float64))
        return None

    def _pick(self, weights: np.ndarray) -> int:
        """An index drawn with odds in proportion to `weights` (at least one positive);
        never one of weight 0, rounding at the end included."""
        running = np.cumsum(weights, dtype=np.float64)
        target = self.generator.random() * running[-1]
        i = int(np.searchsorted(running, target, side="right"))
        if i == len(weights) or weights[i] == 0.0:
            i = int(np.flatnonzero(weights)[-1])
        return i

    def clone(self) -> SoftmaxDraw:
        twin = copy.copy(self)
        twin.generator = copy.deepcopy(self.generator)
        twin._weights = np.zeros(0, np.float32)
        return twin
