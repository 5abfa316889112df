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
from edgebox.runtimes.llamacpp.model import LlamaCppModel
from edgebox.runtimes.llamacpp.schema_gbnf import schema_json_gbnf
from edgebox.runtimes.llamacpp.tool_grammar import tool_call_gbnf, trigger_patterns
from edgebox.runtimes.tool_format import ToolConstraint

PENALTY_LAST_N = 64
COMPILED_GRAMMARS = 32  # per model, most recently used
# Below this a temperature is greedy (vLLM's rule): llama.cpp divides the logits by it, and
# 1e-40 overflows them to infinity, the probabilities to NaN; its draw then picks a token a
# grammar bans, and the grammar throws through the C API (the process aborts).
MIN_TEMPERATURE = 1e-5


def build_sampler(model: LlamaCppModel, params: SamplingParams) -> ctypes.c_void_p:
    """A llama.cpp sampler chain for one sequence; the caller frees it with `free_sampler`.

    Order follows llama.cpp's own: grammar mask, penalties, truncation (top-k,
    top-p, min-p), temperature, then a seeded draw; temperature 0 (or below
    MIN_TEMPERATURE) is greedy.
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
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    if grammar:
        llama_cpp.llama_sampler_chain_add(chain, grammar)
    bias = _bias_sampler(model, params)
    if bias:
        llama_cpp.llama_sampler_chain_add(chain, bias)
    if (
        params.repeat_penalty != 1.0
        or params.frequency_penalty != 0.0
        or params.presence_penalty != 0.0
    ):
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
    if params.temperature < MIN_TEMPERATURE:
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        return chain
    if params.top_k > 0:
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_k(params.top_k))
    if params.top_p < 1.0:
        llama_cpp.llama_sampler_chain_add(
            chain, llama_cpp.llama_sampler_init_top_p(params.top_p, 1)
        )
    if params.min_p > 0.0:
        llama_cpp.llama_sampler_chain_add(
            chain, llama_cpp.llama_sampler_init_min_p(params.min_p, 1)
        )
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_temp(params.temperature))
    seed = llama_cpp.LLAMA_DEFAULT_SEED if params.seed is None else params.seed & 0xFFFFFFFF
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(seed))
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


_CANDIDATE = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])  # llama_token_data


def _apply(chain: ctypes.c_void_p, candidates: np.ndarray) -> Any:
    """The chain applied to `candidates` (a _CANDIDATE array, kept alive by the caller): the
    llama_token_data_array it left, over the same memory."""
    data = candidates.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data))
    array = llama_cpp.llama_token_data_array(data, len(candidates), -1, False)
    llama_cpp.llama_sampler_apply(chain, ctypes.byref(array))
    return array


def chain_token(chain: ctypes.c_void_p, row: np.ndarray) -> int:
    """What `llama_sampler_sample` picks, for a logits row that is not in the context (a
    snapshot's): the chain applied to every token as a candidate, then told its choice."""
    candidates = np.zeros(len(row), _CANDIDATE)
    candidates["id"] = np.arange(len(row), dtype=np.int32)
    candidates["logit"] = row
    array = _apply(chain, candidates)
    if not 0 <= array.selected < array.size:
        raise SamplingError("the sampler chain selected no token", "logits")
    chosen = array.data[array.selected]
    # -inf is a grammar's ban and NaN an overflow: accepting such a token makes the grammar
    # throw through llama.cpp's C API, which aborts the process.
    if not chosen.logit > -math.inf:
        raise SamplingError("the sampler chain drew a token its grammar banned", "logits")
    llama_cpp.llama_sampler_accept(chain, chosen.id)
    return int(chosen.id)


def accept_forced(chain: ctypes.c_void_p, tokens: list[int]) -> bool:
    """Advance the chain over `tokens` as if it had drawn them, each first checked against it
    alone (a grammar bans with -inf; accepting a banned token aborts the process). False at
    the first refused one: the chain is then part-way and must not be used."""
    for token in tokens:
        one = np.array([(token, 0.0, 0.0)], _CANDIDATE)
        array = _apply(chain, one)
        if array.size != 1 or not array.data[0].logit > -math.inf:
            return False
        llama_cpp.llama_sampler_accept(chain, token)
    return True


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
        free_sampler(_compiled(model).clone(gbnf, triggers_for(params)))


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


def free_sampler(chain: ctypes.c_void_p | None) -> None:
    if chain:
        llama_cpp.llama_sampler_free(chain)


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
