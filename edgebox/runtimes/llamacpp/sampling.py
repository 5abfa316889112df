"""Per-request sampler chains and token log-probabilities."""

from __future__ import annotations

import ctypes
import json

import llama_cpp
import numpy as np
from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from edgebox.runtimes.base import GrammarError, SamplingParams, TokenLogprob
from edgebox.runtimes.llamacpp.model import LlamaCppModel

PENALTY_LAST_N = 64


def build_sampler(model: LlamaCppModel, params: SamplingParams) -> ctypes.c_void_p:
    """A llama.cpp sampler chain for one sequence; the caller frees it with `free_sampler`.

    Order follows llama.cpp's own: grammar mask, penalties, truncation (top-k,
    top-p, min-p), temperature, then a seeded draw; temperature 0 is greedy.
    """
    gbnf = grammar_for(params)
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    if gbnf:
        grammar = llama_cpp.llama_sampler_init_grammar(model.vocab, gbnf.encode("utf-8"), b"root")
        if not grammar:
            llama_cpp.llama_sampler_free(chain)
            raise GrammarError("the grammar could not be parsed by llama.cpp")
        llama_cpp.llama_sampler_chain_add(chain, grammar)
    if (
        params.repeat_penalty != 1.0
        or params.frequency_penalty != 0.0
        or params.presence_penalty != 0.0
    ):
        llama_cpp.llama_sampler_chain_add(
            chain,
            llama_cpp.llama_sampler_init_penalties(
                PENALTY_LAST_N,
                params.repeat_penalty,
                params.frequency_penalty,
                params.presence_penalty,
            ),
        )
    if params.temperature <= 0.0:
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


def grammar_for(params: SamplingParams) -> str | None:
    """GBNF for the request's structured-output constraint, if any."""
    if params.grammar:
        return params.grammar
    if params.json_schema is not None:
        try:
            return json_schema_to_gbnf(json.dumps(params.json_schema))
        except Exception as exc:  # the converter raises bare errors on schemas it cannot map
            raise GrammarError(f"the JSON schema cannot be turned into a grammar: {exc}") from exc
    if params.json_mode:
        return JSON_GBNF
    return None


def free_sampler(chain: ctypes.c_void_p | None) -> None:
    if chain:
        llama_cpp.llama_sampler_free(chain)


def token_logprobs(
    model: LlamaCppModel, logits_ptr: object, token: int, top_n: int
) -> tuple[TokenLogprob, tuple[TokenLogprob, ...]]:
    """Log-probability of `token` under the model's raw distribution, plus the top `top_n`."""
    logits = np.ctypeslib.as_array(logits_ptr, shape=(model.n_vocab,)).astype(np.float64)
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
