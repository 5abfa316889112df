"""Per-request sampler chains and token log-probabilities."""

from __future__ import annotations

import ctypes
import functools
import json
import math
import threading
import weakref
from collections import OrderedDict
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp.llama_grammar import JSON_GBNF

from edgebox.runtimes.base import GrammarError, SamplingError, SamplingParams, TokenLogprob
from edgebox.runtimes.grammar_limits import gbnf_problem, schema_problem
from edgebox.runtimes.llamacpp.grammar_mask import (
    CANDIDATE,
    TokenTree,
    apply,
    references_tokens,
    token_tree,
)
from edgebox.runtimes.llamacpp.model import LlamaCppModel
from edgebox.runtimes.llamacpp.schema_gbnf import schema_json_gbnf
from edgebox.runtimes.llamacpp.softmax_draw import SHORTLIST, SoftmaxDraw, token_ids
from edgebox.runtimes.llamacpp.tool_grammar import tool_call_gbnf, trigger_patterns
from edgebox.runtimes.tool_format import ToolConstraint

PENALTY_LAST_N = 64
COMPILED_GRAMMARS = 32  # per model, most recently used
# Below this a temperature is greedy (vLLM's rule): llama.cpp divides the logits by it, and
# 1e-40 overflows them to infinity, the probabilities to NaN; its draw then picks a token a
# grammar bans, and the grammar throws through the C API (the process aborts).
MIN_TEMPERATURE = 1e-5


def build_sampler(model: LlamaCppModel, params: SamplingParams) -> Sampler:
    """The sampling of one sequence; the caller frees it (`Sampler.free`).

    In llama.cpp's own order: logit biases and penalties (a llama.cpp chain, only where the
    request has any), truncation (top-k, top-p, min-p), temperature, then a seeded draw
    (`SoftmaxDraw`); temperature 0 (or below MIN_TEMPERATURE) is greedy, the highest logit.
    A grammar stays apart (see `Sampler`).
    """
    gbnf = grammar_for(params)
    if gbnf and params.ignore_eos:
        # a finished grammar allows only the end of generation, which ignore_eos bans: no
        # token is left, and llama.cpp's grammar throws past its C API (the process aborts)
        raise SamplingError(
            "ignore_eos cannot be combined with a grammar, response_format or tools",
            "ignore_eos",
        )
    grammar = _compiled(model).clone(gbnf, triggers_for(params)) if gbnf else None
    tree = token_tree(model) if gbnf and not references_tokens(gbnf) else None
    greedy = params.temperature < MIN_TEMPERATURE
    return Sampler(
        _adjusting_chain(model, params),
        grammar,
        None if greedy else SoftmaxDraw(params),
        tree,
    )


def _adjusting_chain(model: LlamaCppModel, params: SamplingParams) -> ctypes.c_void_p | None:
    """A llama.cpp chain of the request's logit biases and penalties; None without any."""
    bias = _bias_sampler(model, params)
    penalties = (
        params.repeat_penalty != 1.0
        or params.frequency_penalty != 0.0
        or params.presence_penalty != 0.0
    )
    if not bias and not penalties:
        return None
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    if bias:
        llama_cpp.llama_sampler_chain_add(chain, bias)
    if penalties:
        llama_cpp.llama_sampler_chain_add(
            chain,
            llama_cpp.llama_sampler_init_penalties(
                model.n_vocab,  # this llama.cpp's first argument (it was dropped, then restored)
                PENALTY_LAST_N,
                params.repeat_penalty,
                params.frequency_penalty,
                params.presence_penalty,
            ),
        )
    return chain


def plain_greedy(params: SamplingParams) -> bool:
    """Whether the request's token is simply the highest logit (ignore_eos aside), so
    `greedy_token` can pick it without the sampler chain."""
    return (
        params.temperature < MIN_TEMPERATURE
        and params.tools is None  # what grammar_for reads, without building a grammar
        and not params.grammar
        and params.json_schema is None
        and not params.json_mode
        and not params.logit_bias
        and params.repeat_penalty == 1.0
        and params.frequency_penalty == 0.0
        and params.presence_penalty == 0.0
    )


@functools.lru_cache(maxsize=8)
def _row(n_vocab: int) -> type[ctypes.Array[ctypes.c_float]]:
    """The ctypes type of one logits row (a view over it costs a third of `as_array`'s)."""
    return ctypes.c_float * n_vocab


def logits_row(model: LlamaCppModel, ctx: object, index: int) -> np.ndarray:
    """Logits row `index` of the last decode as a float32 array over the context's own buffer
    (no copy: valid until the next decode)."""
    logits = llama_cpp.llama_get_logits_ith(ctx, index)
    view = _row(model.n_vocab).from_address(ctypes.addressof(logits.contents))
    return np.frombuffer(memoryview(view), np.float32)


def greedy_token(model: LlamaCppModel, row: np.ndarray, ban_eog: bool) -> int:
    """llama.cpp's greedy choice (the first highest logit) read straight off a logits row.

    The sampler chain first copies the whole vocabulary into a candidate array: ~140 µs a token
    for SmolLM2's 49k entries on a Xeon core, against ~4 µs for this argmax. With `ban_eog`
    (ignore_eos) end-of-generation tokens never win; the row itself is left as it was."""
    token = int(row.argmax())
    if ban_eog and token in model.eog_set:
        row = row.copy()
        row[list(model.eog_tokens)] = -np.inf
        token = int(row.argmax())
    return token


class Sampler:
    """One sequence's sampling: the request's logit biases and penalties (a llama.cpp chain,
    if any), the draw (`SoftmaxDraw`, or greedy the highest logit) and, apart from them, the
    request's grammar, if any.

    A grammar masks the whole vocabulary when it is applied: 4-5 ms a token for SmolLM2's 49k
    entries and a tool-call grammar, a third of a decode step at two threads. So the draw
    comes first and the grammar checks only the token drawn (microseconds); only when it
    refuses that token is the vocabulary masked and the draw made again (rejection sampling,
    as llama.cpp's own server samples). Greedy, the result is the same token either way (the
    highest logit the grammar allows); a seeded draw draws the same way every time. A mask
    checks the tokens along the tree of their prefixes (`grammar_mask.TokenTree`, built for the
    model by `prepare_grammar`): where JSON wants a quote or a brace, a few hundred checks.

    Never accepted: a token the grammar bans (llama.cpp's grammar then throws through its C
    API, which aborts the process)."""

    def __init__(
        self,
        chain: Any | None,
        grammar: Any | None,
        softmax: SoftmaxDraw | None,
        tree: TokenTree | None = None,
    ) -> None:
        self.chain = chain  # the biases and penalties
        self.grammar = grammar
        self.softmax = softmax  # None: greedy
        self.tree = tree  # masks the grammar along token prefixes; None: token by token
        self._candidates: np.ndarray | None = None

    @property
    def argmax(self) -> bool:
        """Greedy with nothing before the draw: the token is a row's highest logit."""
        return self.softmax is None and self.chain is None

    def _every_token(self, row: np.ndarray) -> np.ndarray:
        """Every token as a candidate with its logit from `row`, in a buffer kept for the
        next draw (a fresh 49k-entry array costs seven times the two field writes)."""
        if self._candidates is None or len(self._candidates) != len(row):
            self._candidates = np.empty(len(row), CANDIDATE)
        candidates = self._candidates
        candidates["id"] = token_ids(len(row))
        candidates["logit"] = row
        return candidates

    def draw(self, row: np.ndarray) -> int:
        """The token drawn from a logits row, and the sampling told of it."""
        token = self._draw_from(row, masked=False)
        if self.grammar is not None and not self.allows(token):
            if self.argmax:
                best = self._best_allowed(row)
            elif self.softmax is not None and self.chain is None:
                best = self.softmax.draw_allowed(row, self.allows)
            else:
                best = None
            token = self._draw_from(row, masked=True) if best is None else best
        self.accept(token)
        return token

    def _draw_from(self, row: np.ndarray, masked: bool) -> int:
        """The token drawn from `row` after the biases and penalties, and with `masked` the
        grammar's bans (-inf)."""
        if self.chain is None and not masked:
            logits, ids = row, None
        elif self.chain is None:
            # only the allowed tokens, in id order (ties still go to the lowest id): a draw
            # over those instead of the whole vocabulary with the rest at -inf
            ids = np.flatnonzero(self._allowed(row))
            if not len(ids):
                raise SamplingError(
                    "the sampler selected no token: the grammar allows none", "logits"
                )
            logits = row[ids]
        else:
            banned = ~self._allowed(row) if masked else None
            candidates = self._every_token(row)
            if banned is not None:
                candidates["logit"][banned] = -math.inf
            apply(self.chain, candidates)  # in place, in order
            logits, ids = candidates["logit"], candidates["id"]
        index = int(logits.argmax()) if self.softmax is None else self.softmax.draw(logits)
        # -inf is a grammar's ban (or ignore_eos's) and NaN an overflow (see above)
        if not logits[index] > -math.inf:
            raise SamplingError("the sampler drew a token its grammar banned", "logits")
        return index if ids is None else int(ids[index])

    def _allowed(self, row: np.ndarray) -> np.ndarray:
        """The grammar's mask of the vocabulary (True: allowed), along the token tree where
        there is one."""
        if self.tree is not None:
            return self.tree.allowed(self.grammar)
        candidates = self._every_token(row)
        apply(self.grammar, candidates)
        return np.asarray(candidates["logit"] > -math.inf)

    def _best_allowed(self, row: np.ndarray) -> int | None:
        """Greedy, the row's best token refused: the highest logit the grammar allows among
        the next best (each checked alone), when it is sure to beat every token outside them;
        None to mask the vocabulary instead (which costs 5 to 11 ms for SmolLM2 and a JSON
        grammar, against a few microseconds a check)."""
        top = np.argpartition(row, -SHORTLIST)[-SHORTLIST:]
        floor = row[top].min()  # every token outside the shortlist is at most this
        for token in top[np.lexsort((top, -row[top]))]:  # best first; ties: lowest id first
            value = row[token]
            if not (math.isfinite(value) and value > floor):
                return None
            if self.allows(int(token)):
                return int(token)
        return None

    def allows(self, token: int) -> bool:
        """Whether the grammar (if any) lets `token` through now."""
        if self.grammar is None:
            return True
        one = np.array([(token, 0.0, 0.0)], CANDIDATE)
        array = apply(self.grammar, one)
        return bool(array.size == 1 and array.data[0].logit > -math.inf)

    def accept(self, token: int) -> None:
        """Tell the grammar and the chain that `token` was drawn (never one `allows` refuses)."""
        if self.grammar is not None:
            llama_cpp.llama_sampler_accept(self.grammar, token)
        if self.chain is not None:
            llama_cpp.llama_sampler_accept(self.chain, token)

    def accept_forced(self, tokens: list[int]) -> bool:
        """Advance over `tokens` as if they had been drawn, each checked first. False at the
        first refused one: the sampling is then part-way and must not be used."""
        for token in tokens:
            if not self.allows(token):
                return False
            self.accept(token)
        return True

    def clone(self) -> Sampler:
        """A copy in the same state (grammar stacks, penalty history, the draw's generator),
        with a candidate buffer of its own."""
        chain = None if self.chain is None else llama_cpp.llama_sampler_clone(self.chain)
        grammar = None if self.grammar is None else llama_cpp.llama_sampler_clone(self.grammar)
        softmax = None if self.softmax is None else self.softmax.clone()
        return Sampler(chain, grammar, softmax, self.tree)

    def free(self) -> None:
        for sampler in (self.chain, self.grammar):
            if sampler:
                llama_cpp.llama_sampler_free(sampler)
        self.chain = self.grammar = None


def _bias_sampler(model: LlamaCppModel, params: SamplingParams) -> ctypes.c_void_p | None:
    """The request's logit biases, with every end-of-generation token banned for ignore_eos
    (llama.cpp copies the list)."""
    biases = dict(params.logit_bias)
    if params.ignore_eos:
        biases.update((token, -math.inf) for token in model.eog_tokens)
    if not biases:
        return None
    if any(not 0 <= token < model.n_vocab for token in biases):
        raise SamplingError("logit_bias names a token outside the vocabulary", "logit_bias")
    entries = (llama_cpp.llama_logit_bias * len(biases))(
        *(llama_cpp.llama_logit_bias(token, bias) for token, bias in biases.items())
    )
    return llama_cpp.llama_sampler_init_logit_bias(model.n_vocab, len(biases), entries)


def prepare_grammar(model: LlamaCppModel, params: SamplingParams) -> None:
    """Check and compile the request's grammar ahead of `build_sampler`, off the event loop;
    raises GrammarError (naming the limit) for one that is too large or does not parse."""
    gbnf = grammar_for(params)
    if gbnf:
        llama_cpp.llama_sampler_free(_compiled(model).clone(gbnf, triggers_for(params)))
        if not references_tokens(gbnf):
            token_tree(model, build=True)  # once per model, for the masks (`grammar_mask`)


def grammar_for(params: SamplingParams) -> str | None:
    """GBNF for the request's structured-output constraint, if any."""
    if params.tools is not None:
        return _tools_gbnf(params.tools)
    if params.grammar:
        return params.grammar
    if params.json_schema is not None:
        return _schema_gbnf(json.dumps(params.json_schema, separators=(",", ":")))
    if params.json_mode:
        return JSON_GBNF
    return None


def triggers_for(params: SamplingParams) -> tuple[str, ...]:
    """Patterns that engage a lazy grammar (tool_choice auto); empty: the grammar is eager."""
    if params.tools is not None and params.tools.lazy:
        return tuple(trigger_patterns(params.tools))
    return ()


@functools.lru_cache(maxsize=64)
def _tools_gbnf(constraint: ToolConstraint) -> str:
    return tool_call_gbnf(constraint)


@functools.lru_cache(maxsize=64)
def _schema_gbnf(schema_json: str) -> str:
    problem = schema_problem(json.loads(schema_json), schema_json)
    if problem:
        raise GrammarError(problem)
    try:
        return schema_json_gbnf(schema_json)
    except Exception as exc:  # the converter raises bare errors on schemas it cannot map
        raise GrammarError(f"the JSON schema cannot be turned into a grammar: {exc}") from exc


class _CompiledGrammars:
    """One model's compiled grammar samplers by GBNF text; callers get clones, so a grammar is
    parsed once (by `prepare_grammar`, off the event loop) however often it is used."""

    def __init__(self, model: LlamaCppModel) -> None:
        self._vocab = model.vocab
        self._lock = threading.Lock()
        self._samplers: OrderedDict[tuple[str, tuple[str, ...]], ctypes.c_void_p] = OrderedDict()

    def clone(self, gbnf: str, triggers: tuple[str, ...] = ()) -> ctypes.c_void_p:
        key = (gbnf, triggers)
        with self._lock:
            compiled = self._samplers.get(key)
            if compiled is not None:
                self._samplers.move_to_end(key)
                return llama_cpp.llama_sampler_clone(compiled)
        compiled = self._compile(gbnf, triggers)  # outside the lock: large grammars take a while
        with self._lock:
            if key in self._samplers:
                llama_cpp.llama_sampler_free(compiled)
                compiled = self._samplers[key]
            self._samplers[key] = compiled
            while len(self._samplers) > COMPILED_GRAMMARS:
                llama_cpp.llama_sampler_free(self._samplers.popitem(last=False)[1])
            return llama_cpp.llama_sampler_clone(compiled)

    def _compile(self, gbnf: str, triggers: tuple[str, ...]) -> ctypes.c_void_p:
        # Native parsing recurses per nested group: bound the grammar before it gets there.
        problem = gbnf_problem(gbnf)
        if problem:
            raise GrammarError(problem)
        if triggers:
            patterns = (ctypes.c_char_p * len(triggers))(*(t.encode("utf-8") for t in triggers))
            grammar = llama_cpp.llama_sampler_init_grammar_lazy_patterns(
                self._vocab, gbnf.encode("utf-8"), b"root", patterns, len(triggers), None, 0
            )
        else:
            grammar = llama_cpp.llama_sampler_init_grammar(
                self._vocab, gbnf.encode("utf-8"), b"root"
            )
        if not grammar:
            raise GrammarError("the grammar could not be parsed by llama.cpp")
        return grammar

    def __del__(self) -> None:
        for compiled in self._samplers.values():
            llama_cpp.llama_sampler_free(compiled)


_by_model: weakref.WeakKeyDictionary[LlamaCppModel, _CompiledGrammars] = weakref.WeakKeyDictionary()
_by_model_lock = threading.Lock()


def _compiled(model: LlamaCppModel) -> _CompiledGrammars:
    with _by_model_lock:
        cache = _by_model.get(model)
        if cache is None:
            cache = _by_model[model] = _CompiledGrammars(model)
        return cache


def token_logprobs(
    model: LlamaCppModel, row: np.ndarray, token: int, top_n: int
) -> tuple[TokenLogprob, tuple[TokenLogprob, ...]]:
    """Log-probability of `token` under the model's raw distribution, plus the top `top_n`."""
    logits = row.astype(np.float64)
    peak = logits.max()
    logsumexp = peak + np.log(np.exp(logits - peak).sum())

    def entry(tok: int) -> TokenLogprob:
        raw = model.piece(int(tok))
        return TokenLogprob(
            token=raw.decode("utf-8", errors="replace"),
            logprob=float(logits[tok] - logsumexp),
            bytes=raw,
        )

    top: tuple[TokenLogprob, ...] = ()
    if top_n > 0:
        idx = np.argpartition(-logits, top_n)[:top_n]
        idx = idx[np.argsort(-logits[idx])]
        top = tuple(entry(int(t)) for t in idx)
    return entry(token), top
