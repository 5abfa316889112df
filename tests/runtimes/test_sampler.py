"""The llama.cpp sampling of one sequence (`sampling.Sampler`): the chain draws, the grammar
checks the draw and masks the vocabulary only when it refuses it. Checked on SmolLM2's real
vocabulary and a real JSON grammar against what masking first gives."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
import pytest

from edgebox.runtimes.base import SamplingError, SamplingParams
from edgebox.runtimes.llamacpp.grammar_mask import CANDIDATE, apply
from edgebox.runtimes.llamacpp.model import LlamaCppModel
from edgebox.runtimes.llamacpp.sampling import Sampler, build_sampler
from edgebox.runtimes.llamacpp.softmax_draw import (
    NUCLEUS_FIRST,
    NUCLEUS_SORTED,
    SHORTLIST,
    SoftmaxDraw,
)

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


@pytest.fixture(scope="module")
def model(smollm2_path: Path) -> Iterator[LlamaCppModel]:
    m = LlamaCppModel(smollm2_path, vocab_only=True)
    yield m
    m.close()


def _allowed_mask(model: LlamaCppModel, sampler: Sampler) -> np.ndarray:
    """Which tokens the grammar allows now, each asked alone (the reference: no chain)."""
    return np.array([sampler.allows(t) for t in range(model.n_vocab)])


def _rows(model: LlamaCppModel, n: int) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(7)
    for _ in range(n):
        yield (rng.standard_normal(model.n_vocab) * 3).astype(np.float32)


def test_greedy_with_a_grammar_draws_the_best_token_it_allows(model: LlamaCppModel) -> None:
    """Whether the row's best token is allowed (the grammar checks only it), a few better ones
    are banned (the next best are checked one by one), or none of the best is allowed (the
    vocabulary is masked and the draw made again), the token is the highest logit the grammar
    allows: what masking first gives. Walked over a whole reply, the grammar's state moving."""
    reference = build_sampler(model, SamplingParams(temperature=0, json_schema=SCHEMA))
    try:
        assert reference.argmax and reference.grammar is not None
        steps = model.tokenize('{"n": 42}', add_special=False, parse_special=False)
        for want, row in zip(steps, _rows(model, len(steps)), strict=True):
            allowed = _allowed_mask(model, reference)
            best = int(np.where(allowed, row, -np.inf).argmax())
            banned = np.flatnonzero(~allowed)[:4]
            top = row.max()
            kept, shortlisted = row.copy(), row.copy()
            kept[best] = top + 1  # the best token is allowed
            shortlisted[best] = top + 1
            shortlisted[banned] = top + 2  # four banned ones above it
            variants = {"kept": kept, "shortlisted": shortlisted, "masked": row}
            assert not allowed[int(row.argmax())]  # random rows: the best is banned
            for name, variant in variants.items():
                sampler = reference.clone()
                try:
                    expect = int(np.where(allowed, variant, -np.inf).argmax())
                    if name == "shortlisted":  # found among the next best, no mask
                        assert sampler._best_allowed(variant) == expect
                    assert sampler.draw(variant) == expect, (name, model.token_text(want))
                finally:
                    sampler.free()
            assert reference.accept_forced([want])  # go on along the reply
    finally:
        reference.free()


def test_a_sampled_draw_with_a_grammar_is_always_one_it_allows_and_seeded(
    model: LlamaCppModel,
) -> None:
    """At temperature, a draw the grammar refuses is made again over the masked vocabulary:
    every token drawn is allowed, and the same seed draws the same tokens."""
    params = SamplingParams(temperature=1.5, seed=3, json_schema=SCHEMA)
    draws = []
    for _ in range(2):
        sampler = build_sampler(model, params)
        tokens = []
        try:
            for row in _rows(model, 12):
                allowed = _allowed_mask(model, sampler)
                token = sampler.draw(row)
                assert allowed[token], model.token_text(token)
                tokens.append(token)
                if model.is_eog(token):
                    break
        finally:
            sampler.free()
        draws.append(tokens)
    assert draws[0] == draws[1] and len(draws[0]) > 3


def test_a_grammar_never_accepts_a_token_it_bans(model: LlamaCppModel) -> None:
    """Forcing text checks each token first and stops at the first the grammar refuses
    (accepting it would abort the process); a row whose every logit is -inf or NaN is an
    error, never a banned token accepted."""
    sampler = build_sampler(model, SamplingParams(temperature=0, json_schema=SCHEMA))
    try:
        hello = model.tokenize("Hello", add_special=False, parse_special=False)
        assert not sampler.accept_forced(hello)
    finally:
        sampler.free()
    for fill in (-math.inf, math.nan):
        sampler = build_sampler(model, SamplingParams(temperature=0.5, json_schema=SCHEMA))
        try:
            with pytest.raises(Exception, match=r"banned|selected no token"):
                sampler.draw(np.full(model.n_vocab, fill, np.float32))
        finally:
            sampler.free()


def test_a_truncated_draw_has_the_softmax_odds_of_the_tokens_it_keeps(
    model: LlamaCppModel,
) -> None:
    """Top-k at a temperature through the sampler's kept candidate buffer (top-k reorders it;
    every draw starts from the vocabulary in order again): the frequencies of 6,000 seeded
    draws match softmax(logits / T) over the k best within four standard errors, and a clone
    draws what the original draws next."""
    rng = np.random.default_rng(11)
    row = rng.standard_normal(model.n_vocab).astype(np.float32)
    likely = rng.choice(model.n_vocab, 6, replace=False)
    row[likely] = np.array([9.0, 8.5, 8.0, 7.0, 6.5, 5.0], np.float32)
    temperature, k = 0.8, 50
    kept = np.argsort(-row, kind="stable")[:k]
    odds = np.exp((row[kept].astype(np.float64) - row.max()) / temperature)
    expected = dict(zip(kept.tolist(), odds / odds.sum(), strict=True))
    sampler = build_sampler(model, SamplingParams(temperature=temperature, top_k=k, seed=2))
    try:
        n = 6000
        drawn = np.array([sampler.draw(row) for _ in range(n)])
        assert set(drawn.tolist()) <= set(expected)
        for token in likely:
            p = expected[int(token)]
            freq = float(np.mean(drawn == token))
            assert abs(freq - p) <= 4 * math.sqrt(p * (1 - p) / n) + 1e-9, (token, freq, p)
        twin = sampler.clone()
        try:
            assert [twin.draw(row) for _ in range(20)] == [sampler.draw(row) for _ in range(20)]
        finally:
            twin.free()
    finally:
        sampler.free()


def test_greedy_ties_and_non_finite_logits_under_a_grammar(model: LlamaCppModel) -> None:
    """Ties among the best tokens the grammar allows go to the lowest id, as masking first
    does (llama.cpp's greedy keeps the first highest), whether the row's argmax, the shortlist
    or the mask finds them; a row with NaN or infinite logits draws a token the grammar allows
    or fails the request, never a banned one (which would abort the process)."""
    params = SamplingParams(temperature=0, json_schema=SCHEMA)
    reference = build_sampler(model, params)
    try:
        allowed = np.flatnonzero(_allowed_mask(model, reference))
        banned = np.flatnonzero(~_allowed_mask(model, reference))
    finally:
        reference.free()
    low, high = int(allowed[0]), int(allowed[-1])
    row = next(_rows(model, 1))
    top = float(row.max())
    cases = {}
    for name, shortlist in (("argmax", 0), ("shortlist", 4), ("mask", 40)):
        tied = row.copy()
        tied[[low, high]] = top + 1
        tied[banned[:shortlist]] = top + 2  # better than both, banned
        cases[name] = tied
    for name, tied in cases.items():
        sampler = build_sampler(model, params)
        try:
            assert sampler.draw(tied) == low, name
        finally:
            sampler.free()
    for bad in (math.nan, math.inf, -math.inf):
        for where in (banned[:40], allowed[:3], np.arange(model.n_vocab)):
            odd = row.copy()
            odd[where] = bad
            for temperature in (0.0, 0.8):
                sampler = build_sampler(model, SamplingParams(temperature, json_schema=SCHEMA))
                try:
                    token = sampler.draw(odd)
                except SamplingError:
                    continue
                finally:
                    sampler.free()
                assert token in set(allowed.tolist()), (bad, temperature)


def test_a_sampled_draw_under_a_grammar_has_the_masked_odds_unless_truncated_first(
    model: LlamaCppModel,
) -> None:
    """Rejection sampling without truncation draws from the masked distribution exactly
    (p(t) / p(allowed)); with top-k the first draw is truncated before the grammar sees it (as
    llama.cpp's server samples), which favours the allowed tokens among the unmasked best: the
    odds the docs state, measured over seeded draws from the grammar's first state."""
    reference = build_sampler(model, SamplingParams(temperature=0, json_schema=SCHEMA))
    try:
        mask = _allowed_mask(model, reference)
    finally:
        reference.free()
    a, b = np.flatnonzero(mask)[:2]
    c = int(np.flatnonzero(~mask)[0])
    row = np.full(model.n_vocab, -30.0, np.float32)
    row[[a, c, b]] = [0.0, 0.0, -0.5]
    masked = 1 / (1 + math.exp(-0.5))  # A's odds among the allowed
    n = 800
    for top_k, expected in ((0, masked), (2, 0.5 + 0.5 * masked)):
        hits = 0
        for seed in range(n):
            params = SamplingParams(temperature=1.0, top_k=top_k, seed=seed, json_schema=SCHEMA)
            sampler = build_sampler(model, params)
            try:
                token = sampler.draw(row)
            finally:
                sampler.free()
            assert token in (a, b)
            hits += token == a
        se = math.sqrt(expected * (1 - expected) / n)
        assert abs(hits / n - expected) <= 4 * se, (top_k, hits / n, expected)


def _llama_cpp_kept(row: np.ndarray, top_k: int, top_p: float, min_p: float) -> set[int]:
    """The tokens llama.cpp's own top-k, top-p and min-p samplers keep of `row`, in that
    order (the reference `SoftmaxDraw` must match)."""
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    try:
        if top_k > 0:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_k(top_k))
        if top_p < 1.0:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_p(top_p, 1))
        if min_p > 0.0:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_min_p(min_p, 1))
        candidates = np.empty(len(row), CANDIDATE)
        candidates["id"] = np.arange(len(row))
        candidates["logit"] = row
        array = apply(chain, candidates)
        return {int(array.data[i].id) for i in range(array.size)}
    finally:
        llama_cpp.llama_sampler_free(chain)


def _softmax_mass(row: np.ndarray, kept: set[int], top_k: int) -> Callable[[int], float]:
    """The softmax mass (over the top-k, or every token) of the kept tokens better than a
    given one: where top-p's running sum stood before it."""
    base = np.sort(row)[::-1][:top_k] if top_k else row
    total = np.exp(base.astype(np.float64) - row.max()).sum()

    def before(token: int) -> float:
        better = [t for t in kept if row[t] > row[token]]
        return float(np.exp(row[better].astype(np.float64) - row.max()).sum() / total)

    return before


def test_truncation_keeps_the_tokens_llama_cpps_samplers_keep(model: LlamaCppModel) -> None:
    """Top-k, top-p and min-p, alone and together, over peaked and flat rows of the real
    vocabulary's size: `SoftmaxDraw` keeps exactly the tokens llama.cpp's samplers keep —
    top-p through its first sorted few, the tokens a few nats below the best, and its bins
    alike."""
    rng = np.random.default_rng(5)
    rows = {"flat": rng.standard_normal(model.n_vocab).astype(np.float32) * 0.5}
    peaked = (rng.standard_normal(model.n_vocab) * 2).astype(np.float32)
    peaked[rng.choice(model.n_vocab, 5, replace=False)] += np.array([12, 11, 10, 9, 8])
    rows["peaked"] = peaked
    # a nucleus of hundreds to thousands of tokens, a few nats deep (as Gemma 3's rows hold)
    rows["spread"] = (rng.standard_normal(model.n_vocab) * 3.5).astype(np.float32)
    binned = near = 0
    for name, row in rows.items():
        for top_k, top_p, min_p in itertools.product(
            (0, 1, 40, 3000), (1.0, 0.5, 0.9, 0.999), (0.0, 0.05, 0.3)
        ):
            if (top_k, top_p, min_p) == (0, 1.0, 0.0):
                continue
            draw = SoftmaxDraw(
                SamplingParams(temperature=0.7, top_k=top_k, top_p=top_p, min_p=min_p)
            )
            kept = draw._truncated(row, float(row.max()))
            assert kept is not None
            ours = set(kept.tolist())
            assert len(ours) == len(kept)  # no token twice
            theirs = _llama_cpp_kept(row, top_k, top_p, min_p)
            case = (name, top_k, top_p, min_p, sorted(ours ^ theirs))
            # llama.cpp sums float32 probabilities (~1e-5 off over 49k of them), edgebox in
            # float64: they may part only at top-p's edge, where the sum reaches top_p
            mass_before = _softmax_mass(row, ours | theirs, top_k)
            for edge in ours ^ theirs:
                assert abs(mass_before(edge) - top_p) < 1e-4, case
            if top_k == 0 and top_p < 1.0 and min_p == 0.0 and len(ours) > NUCLEUS_FIRST:
                binned += len(ours) > NUCLEUS_SORTED
                near += len(ours) <= NUCLEUS_SORTED
    # the bins and the tokens a few nats below the best were exercised, not only the first few
    assert binned >= 2 and near >= 2, (binned, near)


def test_truncating_a_masked_row_keeps_what_llama_cpp_keeps_of_weight(model: LlamaCppModel) -> None:
    """A row the grammar masked (a few tokens finite, the rest -inf) under top-k larger than the
    finite few: llama.cpp keeps k tokens, the rest at -inf (never drawn, no mass); edgebox keeps
    exactly the finite ones it keeps, with top-p and min-p on top, and draws only those."""
    rng = np.random.default_rng(11)
    for finite in (1, 3, 39, 40, 41, 500):
        row = np.full(model.n_vocab, -np.inf, np.float32)
        ids = rng.choice(model.n_vocab, finite, replace=False)
        row[ids] = rng.standard_normal(finite).astype(np.float32) * 2
        for top_k, top_p, min_p in itertools.product((40, 3000), (1.0, 0.9), (0.0, 0.05)):
            draw = SoftmaxDraw(
                SamplingParams(temperature=0.7, top_k=top_k, top_p=top_p, min_p=min_p, seed=2)
            )
            kept = draw._truncated(row, float(row.max()))
            assert kept is not None
            theirs = {t for t in _llama_cpp_kept(row, top_k, top_p, min_p) if row[t] > -np.inf}
            case = (finite, top_k, top_p, min_p)
            assert set(kept.tolist()) == theirs and len(kept) == len(theirs), case
            assert all(row[draw.draw(row)] > -np.inf for _ in range(20)), case


@pytest.mark.parametrize(
    ("top_p", "min_p"), [(1.0, 0.0), (0.9, 0.0), (1.0, 0.02)], ids=["whole", "top_p", "min_p"]
)
def test_a_draw_has_the_softmax_odds_of_what_it_keeps(
    model: LlamaCppModel, top_p: float, min_p: float
) -> None:
    """Seeded draws over a row with its likely tokens far apart (different blocks of the whole
    vocabulary's draw) land on each kept token as often as softmax(logits / T) over the kept
    says, within four standard errors; nothing outside is drawn; the same seed draws the
    same tokens."""
    rng = np.random.default_rng(13)
    row = (rng.standard_normal(model.n_vocab) - 4).astype(np.float32)
    likely = np.array([3, 700, 20_000, 41_000, model.n_vocab - 1])
    row[likely] = np.array([6.0, 5.5, 5.0, 4.0, 3.0], np.float32)
    params = SamplingParams(temperature=0.9, top_p=top_p, min_p=min_p, seed=4)
    draw = SoftmaxDraw(params)
    kept = draw._truncated(row, float(row.max()))
    kept = np.arange(model.n_vocab) if kept is None else kept
    odds = np.exp((row[kept].astype(np.float64) - row.max()) / params.temperature)
    expected = dict(zip(kept.tolist(), odds / odds.sum(), strict=True))
    n = 6000
    drawn = np.array([draw.draw(row) for _ in range(n)])
    assert set(drawn.tolist()) <= set(expected)
    for token in likely:
        p = expected.get(int(token), 0.0)
        freq = float(np.mean(drawn == token))
        assert abs(freq - p) <= 4 * math.sqrt(p * (1 - p) / n) + 1e-9, (token, freq, p)
    again = SoftmaxDraw(params)
    assert [again.draw(row) for _ in range(50)] == drawn[:50].tolist()


def test_draws_over_rows_of_different_lengths_stay_inside_each_row() -> None:
    """One draw object, rows of the grammar's allowed tokens one after another (a few hundred,
    then one, then a few): each draw lands inside its own row, whatever the last row left."""
    draw = SoftmaxDraw(SamplingParams(temperature=1.0, seed=0))
    rng = np.random.default_rng(3)
    for n in (200, 1, 37, 256, 3, 255, 2) * 20:
        row = rng.standard_normal(n).astype(np.float32)
        assert 0 <= draw.draw(row) < n, n


def test_a_draw_never_lands_on_a_token_of_no_weight(model: LlamaCppModel) -> None:
    """Masked tokens (-inf) in every block but a few allowed ones, at the start and end of
    blocks and of the vocabulary: thousands of draws, every one allowed; a row with no finite
    logit is an error."""
    allowed = [0, 255, 256, 30_000, model.n_vocab - 1]
    row = np.full(model.n_vocab, -np.inf, np.float32)
    row[allowed] = np.array([0.0, -20.0, 1.0, 0.5, -60.0], np.float32)
    for params in (
        SamplingParams(temperature=1.0, seed=1),
        SamplingParams(temperature=2.0, seed=2, top_p=0.999),
        SamplingParams(temperature=0.05, seed=3, top_k=3),
    ):
        draw = SoftmaxDraw(params)
        assert set(draw.draw(row) for _ in range(3000)) <= set(allowed)
    with pytest.raises(SamplingError, match="selected no token"):
        SoftmaxDraw(SamplingParams(temperature=1.0)).draw(np.full(8, -np.inf, np.float32))


def test_seed_minus_one_is_a_fresh_seed_as_in_llama_cpp(model: LlamaCppModel) -> None:
    """llama.cpp's default seed (-1, 0xFFFFFFFF: what llama-server clients send for "random")
    draws differently every request; any other seed draws the same tokens every time."""
    row = (np.random.default_rng(2).standard_normal(model.n_vocab) * 0.5).astype(np.float32)

    def drawn(seed: int | None) -> list[int]:
        draw = SoftmaxDraw(SamplingParams(temperature=1.0, seed=seed))
        return [draw.draw(row) for _ in range(20)]

    for random_seed in (-1, 0xFFFFFFFF, None):
        assert drawn(random_seed) != drawn(random_seed), random_seed
    for seed in (0, 7, 0xFFFFFFFE, -2):
        assert drawn(seed) == drawn(seed), seed


def test_ties_at_top_ks_edge_keep_the_lowest_ids(model: LlamaCppModel) -> None:
    """Logits with many equal values (rounded to a quarter nat, all equal, a few equal best
    ones): where top-k's edge falls among equal logits, the lowest ids are kept, as greedy and
    top-p break ties (llama.cpp's top-k leaves them to its sort: its partial sort keeps others
    up to k = 128), so top_k 1 keeps the token greedy picks."""
    rng = np.random.default_rng(9)
    rounded = np.round(rng.standard_normal(model.n_vocab) * 8).astype(np.float32) / 4
    few = np.full(model.n_vocab, -1.0, np.float32)
    few[[3, 500, 30_000, model.n_vocab - 1]] = 2.0
    rows = {"rounded": rounded, "equal": np.zeros(model.n_vocab, np.float32), "few": few}
    for name, row in rows.items():
        ranked = np.lexsort((np.arange(model.n_vocab), -row))  # best first; ties: lowest id
        for top_k in (1, 2, 3, 40, 100, 1000):
            draw = SoftmaxDraw(SamplingParams(temperature=0.7, top_k=top_k))
            kept = draw._truncated(row, float(row.max()))
            assert kept is not None
            assert sorted(kept.tolist()) == sorted(ranked[:top_k].tolist()), (name, top_k)
        assert SoftmaxDraw(SamplingParams(top_k=1, seed=1)).draw(row) == int(row.argmax())


@pytest.mark.parametrize(
    "extra",
    [{}, {"top_k": 1}, {"top_p": 1e-9}, {"min_p": 1.0}, {"temperature": 1e-5}],
    ids=["whole", "top_k_1", "top_p_tiny", "min_p_1", "coldest"],
)
def test_ignore_eos_never_draws_an_end_token_when_sampling(
    model: LlamaCppModel, extra: dict[str, float]
) -> None:
    """An end-of-generation token far the likeliest, banned by ignore_eos (the bias chain's
    -inf): sampled draws, however truncated, land on the best allowed tokens, never on it."""
    row = np.zeros(model.n_vocab, np.float32)
    row[list(model.eog_tokens)] = 50.0
    row[[11, 12]] = 3.0
    params = SamplingParams(**{"temperature": 1.0, "seed": 1, "ignore_eos": True, **extra})
    sampler = build_sampler(model, params)
    try:
        drawn = {sampler.draw(row) for _ in range(200)}
    finally:
        sampler.free()
    assert not drawn & model.eog_set
    assert drawn <= {11, 12} or not extra, drawn


STRING = {"type": "object", "properties": {"s": {"type": "string"}}, "required": ["s"]}


def _inside_a_string(model: LlamaCppModel, params: SamplingParams) -> tuple[Sampler, np.ndarray]:
    """A sampler whose grammar is inside a JSON string (most tokens allowed, some not), and
    which tokens it allows there."""
    sampler = build_sampler(model, params)
    opened = model.tokenize('{"s": "ab', add_special=False, parse_special=False)
    assert sampler.accept_forced(opened)
    return sampler, _allowed_mask(model, sampler)


def test_a_refused_draw_is_drawn_again_with_the_masked_odds_without_a_mask(
    model: LlamaCppModel,
) -> None:
    """Untruncated, a refused draw is settled by rejection (the shortlist's allowed tokens
    and every token outside it proposed by weight, outside ones checked): the odds of two
    allowed tokens in the shortlist and of the rest are the masked odds within four standard
    errors, a banned token is never returned, and most draws need no mask (None)."""
    params = SamplingParams(temperature=1.0, seed=9, json_schema=STRING)
    sampler, allowed = _inside_a_string(model, params)
    try:
        assert sampler.softmax is not None
        rng = np.random.default_rng(3)
        row = (rng.standard_normal(model.n_vocab) * 0.5 - 4).astype(np.float32)
        banned = np.flatnonzero(~allowed)[:20]
        a1, a2 = np.flatnonzero(allowed)[[10, 20_000]]
        row[banned], row[a1], row[a2] = 4.0, 3.5, 3.0
        weights = np.where(allowed, np.exp(row.astype(np.float64) - row.max()), 0.0)
        odds = weights / weights.sum()
        n, drawn = 3000, []
        for _ in range(n):
            token = sampler.softmax.draw_allowed(row, sampler.allows)
            if token is not None:
                drawn.append(token)
        assert len(drawn) > 0.9 * n  # settled without a mask
        hits = np.array(drawn)
        assert allowed[hits].all()
        for token in (a1, a2):
            p, freq = odds[token], float(np.mean(hits == token))
            assert abs(freq - p) <= 4 * math.sqrt(p * (1 - p) / len(hits)), (token, freq, p)
    finally:
        sampler.free()


def test_ties_after_top_k_go_to_the_lowest_id_in_top_p_and_a_refused_draw() -> None:
    """Two tokens tied for the best the draw may take: top_k 40 then a top-p that keeps one
    token, and top_k 1 with the row's best refused (settled from the shortlist, without a
    mask), keep the lower id, as greedy, the masked redraw and `_best` itself do, whatever
    order the shortlist's partial sort left the tokens in."""
    for trial in range(60):
        rng = np.random.default_rng(trial)
        row = rng.standard_normal(5000).astype(np.float32)
        low, high = sorted(rng.choice(len(row), 2, replace=False).tolist())
        row[[low, high]] = 8.0
        nucleus = SoftmaxDraw(SamplingParams(temperature=0.7, top_k=40, top_p=0.3, seed=1))
        kept = nucleus._truncated(row, 8.0)
        assert kept is not None and kept.tolist() == [low], (trial, low, high)
        refused = int(rng.choice(np.setdiff1d(np.arange(len(row)), [low, high])))
        row[refused] = 10.0
        one = SoftmaxDraw(SamplingParams(temperature=0.7, top_k=1, seed=1))
        assert one.draw_allowed(row, lambda t, r=refused: t != r) == low, (trial, low, high)


def test_a_seeded_draw_does_not_depend_on_the_order_argpartition_leaves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """numpy's partial sort leaves its partition in an order of its own, which differs between
    CPUs (its AVX2/AVX-512 sorts against the baseline one): a seeded draw under top-k, top-p
    and min-p, and a refused draw settled from the shortlist, are the same tokens whatever
    that order is (here reversed and shuffled)."""
    from edgebox.runtimes.llamacpp import softmax_draw

    rng = np.random.default_rng(0)
    rows = [(rng.standard_normal(49_152) * 2).astype(np.float32) for _ in range(4)]
    params = [
        SamplingParams(temperature=1.0, top_k=40, seed=7),
        SamplingParams(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, seed=7),
        SamplingParams(temperature=0.8, top_p=0.9, seed=7),
    ]

    def draws() -> list[int | None]:
        out: list[int | None] = []
        for p in params:
            draw = SoftmaxDraw(p)
            for row in rows:
                refused = int(row.argmax())
                out += [draw.draw(row) for _ in range(5)]
                out.append(draw.draw_allowed(row, lambda t, r=refused: t != r))
        return out

    expected = draws()
    real = np.argpartition
    shuffle = np.random.default_rng(1)
    for reorder in (lambda part: part[::-1], shuffle.permutation):

        def other_cpu(a: np.ndarray, kth: int, reorder: Any = reorder) -> np.ndarray:
            part = real(a, kth)
            return np.concatenate((reorder(part[:kth]), reorder(part[kth:])))

        monkeypatch.setattr(softmax_draw.np, "argpartition", other_cpu)
        assert draws() == expected
        monkeypatch.setattr(softmax_draw.np, "argpartition", real)


def test_a_refused_draw_under_top_k_is_settled_without_a_mask_when_k_allowed_follow(
    model: LlamaCppModel,
) -> None:
    """top_k 40 (llama-server's default), the best tokens refused: the shortlist has room for
    40 allowed beside them, so the draw is settled from it (a mask inside a string costs ~10 ms
    for SmolLM2's vocabulary, ~60 ms for Gemma 3's), and only ever lands on the 40 best
    allowed."""
    params = SamplingParams(temperature=0.8, top_k=40, seed=3, json_schema=STRING)
    sampler, allowed = _inside_a_string(model, params)
    try:
        assert sampler.softmax is not None
        row = np.full(model.n_vocab, -10.0, np.float32)
        row[np.flatnonzero(~allowed)[:3]] = 6.0
        best = np.flatnonzero(allowed)[:45]
        row[best] = np.linspace(5.0, 1.0, len(best), dtype=np.float32)
        drawn = {sampler.softmax.draw_allowed(row, sampler.allows) for _ in range(300)}
        assert None not in drawn and drawn <= set(best[:40].tolist()) and len(drawn) > 10
    finally:
        sampler.free()


def test_top_p_of_a_refused_draw_is_settled_among_the_allowed_as_masking_first_keeps(
    model: LlamaCppModel,
) -> None:
    """Top-p (with min-p, with a top-k larger than the allowed in the shortlist) after a refused
    draw inside a string, most tokens allowed: where the shortlist's allowed settle the
    nucleus, it keeps exactly what llama.cpp's samplers keep of the masked row (up to float32
    rounding at top-p's edge); where they cannot (the allowed outside could move the edge),
    None, and the vocabulary is masked. Peaked rows settle; flat ones do not."""
    rng = np.random.default_rng(21)
    settled = unsettled = 0
    for (offset, spread), top_p, min_p, top_k in itertools.product(
        ((-8.0, 1.0), (-8.0, 2.0), (0.0, 2.0)), (0.5, 0.9, 0.95, 0.99), (0.0, 0.05), (0, 200)
    ):
        params = SamplingParams(
            temperature=0.8, top_p=top_p, min_p=min_p, top_k=top_k, seed=1, json_schema=STRING
        )
        sampler, allowed = _inside_a_string(model, params)
        try:
            assert sampler.softmax is not None
            row = (rng.standard_normal(model.n_vocab) * spread + offset).astype(np.float32)
            banned = rng.choice(np.flatnonzero(~allowed), 2, replace=False)
            liked = rng.choice(np.flatnonzero(allowed), 6, replace=False)
            row[banned] = np.array([14.0, 13.0], np.float32)  # the draw's best: refused
            row[liked] = np.array([12.0, 11.5, 11.5, 10.0, 9.0, 8.0], np.float32)  # a tie
            peak = float(row.max())
            top = np.argsort(-row, kind="stable")[: SHORTLIST + min(top_k, 3 * SHORTLIST)]
            floor = float(row[top].min())
            ok = top[allowed[top]]
            kept = sampler.softmax._allowed_nucleus(row, peak, top, ok, floor)
            if kept is None:
                unsettled += 1
                continue
            settled += 1
            masked = np.where(allowed, row, -np.inf).astype(np.float32)
            theirs = {
                t for t in _llama_cpp_kept(masked, top_k, top_p, min_p) if masked[t] > -np.inf
            }
            ours = set(kept.tolist())
            assert len(ours) == len(kept)
            mass_before = _softmax_mass(masked, ours | theirs, top_k)
            for edge in ours ^ theirs:
                assert abs(mass_before(edge) - top_p) < 1e-4, (offset, spread, top_p, min_p, top_k)
        finally:
            sampler.free()
    assert settled >= 24 and unsettled >= 4, (settled, unsettled)


def test_a_refused_truncated_draw_is_drawn_from_the_truncation_of_the_allowed(
    model: LlamaCppModel,
) -> None:
    """With top-k, a refused draw is drawn from the k best allowed tokens (masking first,
    then truncating) when the shortlist holds them: their softmax odds, nothing else; where
    it does not (the k best allowed reach past it), or min-p's bar falls inside it, None."""
    params = SamplingParams(temperature=0.8, top_k=5, seed=2, json_schema=STRING)
    sampler, allowed = _inside_a_string(model, params)
    try:
        assert sampler.softmax is not None
        row = np.full(model.n_vocab, -10.0, np.float32)
        banned = np.flatnonzero(~allowed)[:10]
        kept = np.flatnonzero(allowed)[[3, 99, 5000, 30_000, 40_000]]
        row[banned] = 6.0
        row[kept] = np.array([5.0, 4.5, 4.0, 3.0, 2.0], np.float32)
        row[np.flatnonzero(allowed)[7]] = 1.0  # the sixth best allowed: cut by top-k
        odds = np.exp((row[kept].astype(np.float64) - 5.0) / 0.8)
        odds /= odds.sum()
        n = 3000
        hits = np.array([sampler.softmax.draw_allowed(row, sampler.allows) for _ in range(n)])
        assert set(hits.tolist()) <= set(kept.tolist())
        for token, p in zip(kept, odds, strict=True):
            freq = float(np.mean(hits == token))
            assert abs(freq - p) <= 4 * math.sqrt(p * (1 - p) / n) + 1e-9, (token, freq, p)
        # banned tokens and 3 allowed fill the shortlist (room for top-k's 5 beside SHORTLIST
        # refused): the 5 best allowed reach past it
        crowded = row.copy()
        crowded[np.flatnonzero(~allowed)[: SHORTLIST + 5 - 3]] = 6.0
        crowded[kept[3:]] = -10.0
        assert sampler.softmax.draw_allowed(crowded, sampler.allows) is None
    finally:
        sampler.free()
    row += np.random.default_rng(1).standard_normal(model.n_vocab).astype(np.float32) * 0.1
    for min_p, settled in ((0.5, True), (1e-9, False)):  # bar 4.3: above the shortlist's floor
        params = SamplingParams(temperature=0.8, min_p=min_p, json_schema=STRING)
        sampler, allowed = _inside_a_string(model, params)
        try:
            assert sampler.softmax is not None
            token = sampler.softmax.draw_allowed(row, sampler.allows)
            assert (token is not None) == settled and (token is None or allowed[token])
        finally:
            sampler.free()


def test_top_p_among_the_near_tokens_keeps_llama_cpps_nucleus_with_ties_and_bans(
    model: LlamaCppModel,
) -> None:
    """Logits in steps of half a nat (hundreds of ties, some exactly at the depths the near
    tokens are cut at, `NUCLEUS_DEPTHS`) and a third of the vocabulary banned (-inf, as a
    grammar's mask leaves it): the nucleus holds the best logits as llama.cpp's does (which of
    equal logits at the edge is kept is its sort's to choose), as many of them up to where
    llama.cpp's float32 sums part from the exact one (under 1e-4 of the mass)."""
    rng = np.random.default_rng(11)
    row = np.round(rng.standard_normal(model.n_vocab) * 7.0) / 2
    row[rng.choice(model.n_vocab, model.n_vocab // 3, replace=False)] = -np.inf
    row = row.astype(np.float32)
    peak = float(row.max())
    near = 0
    for top_k, top_p in itertools.product((0, 3000), (0.3, 0.6, 0.9, 0.99)):
        draw = SoftmaxDraw(SamplingParams(temperature=0.8, top_k=top_k, top_p=top_p))
        kept = draw._truncated(row, peak)
        assert kept is not None and np.isfinite(row[kept]).all()
        ours = np.sort(row[kept])[::-1]
        theirs = np.sort(row[list(_llama_cpp_kept(row, top_k, top_p, 0.0))])[::-1]
        shorter = min(len(ours), len(theirs))
        assert np.array_equal(ours[:shorter], theirs[:shorter]), (top_k, top_p)
        base = np.sort(row)[::-1][:top_k] if top_k else row
        total = np.exp(base.astype(np.float64) - peak).sum()
        apart = np.concatenate((ours[shorter:], theirs[shorter:])).astype(np.float64)
        assert np.exp(apart - peak).sum() / total < 1e-4, (top_k, top_p, len(ours), len(theirs))
        near += top_k == 0 and NUCLEUS_FIRST < len(kept) <= NUCLEUS_SORTED
    assert near >= 2
