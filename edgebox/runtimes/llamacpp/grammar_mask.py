"""A grammar's mask of the vocabulary, checked along a tree of token prefixes (`TokenTree`).

llama.cpp's grammar checks a candidate token by walking its text a character at a time, and
refuses it at the first character no rule allows. So a token the grammar allows has every
prefix allowed too: when `" h"` is refused, so are `" he"`, `" hello"` and every token that
begins with `" h"`. The tree links each token to the longest other token its text begins
with; a mask checks the roots, then only the children of allowed tokens, level by level.

Where a grammar leaves few tokens (JSON structure: a quote, a brace, a key), that is a few
hundred checks instead of the whole vocabulary (measured on JSON-schema states: SmolLM2's 49k
tokens 4.5 -> 0.5 ms, Gemma 3's 262k 26 -> 3 ms; the masks are the same). Where it allows
most (inside a string), splitting the check would cost more than it saves, so a mask that
finds most of the roots and the tokens one level below them allowed (`WIDE_SHARE`) checks
the rest in one call.

Only for grammars of characters: a `<token>` rule in a GBNF grammar matches a token by id,
not by its text (`references_tokens`), and then the whole vocabulary is checked. And only for
texts of valid UTF-8 (a character may be cut at the end): llama.cpp refuses an overlong
sequence's start (`\xe0\x80`) but may allow it whole, and a text that begins with a
continuation byte goes on a character the previous tokens began, which can make it such a
sequence. Those tokens are checked alone (`TokenTree.apart`: 74 of SmolLM2's, 77 of Gemma 3's).
"""

from __future__ import annotations

import codecs
import ctypes
import math
import threading
import weakref
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import llama_cpp
import numpy as np

from edgebox.runtimes.grammar_limits import GBNF_LITERALS
from edgebox.runtimes.llamacpp.model import LlamaCppModel

# When more than this share of the roots and the tokens one level below them pass, every
# deeper token under those that passed is checked in one call.
WIDE_SHARE = 0.5

CANDIDATE = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])  # llama_token_data


def apply(sampler: Any, candidates: np.ndarray) -> Any:
    """A llama.cpp sampler applied to `candidates` (a CANDIDATE array, kept alive by the
    caller): the llama_token_data_array it left, over the same memory."""
    data = candidates.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data))
    array = llama_cpp.llama_token_data_array(data, len(candidates), -1, False)
    llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
    return array


def passes(grammar: Any, ids: np.ndarray) -> np.ndarray:
    """Which of the tokens `ids` the grammar lets through now."""
    candidates = np.zeros(len(ids), CANDIDATE)
    candidates["id"] = ids
    apply(grammar, candidates)
    return np.asarray(candidates["logit"] > -math.inf)


def references_tokens(gbnf: str) -> bool:
    """Whether a GBNF grammar has token rules (`<name>`, `<[id]>`, `!<...>`), which match a
    token by id: the prefix tree does not hold for such a grammar."""
    return "<" in GBNF_LITERALS.sub(" ", gbnf)


def linkable(text: bytes) -> bool:
    """Whether the grammar reads `text` a character at a time as the tree assumes: it starts
    with a character (not NUL, not a continuation byte) and is valid UTF-8 up to a character
    cut at its end. (llama.cpp refuses the start of an overlong sequence such as `\xc1` or
    `\xe0\x80` but may allow the whole, or a text that completes one begun before it.)"""
    if not text or text[0] == 0 or 0x80 <= text[0] < 0xC0:
        return False
    try:
        text.decode("utf-8")  # most texts: whole characters (a fifth of the incremental cost)
        return True
    except UnicodeDecodeError:
        pass
    try:
        codecs.getincrementaldecoder("utf-8")().decode(text, final=False)
    except UnicodeDecodeError:
        return False
    return True


@dataclass(frozen=True)
class TokenTree:
    """The vocabulary's tokens linked to the longest other token each one's text begins with
    (the text llama.cpp's grammar reads: special tokens as their own text)."""

    n_vocab: int
    parent: np.ndarray  # by token id; -1 for a root (and for the tokens apart)
    branch: np.ndarray  # by token id: its ancestor one level below the roots (itself there)
    deep: np.ndarray  # the token ids two levels or more below the roots
    levels: tuple[np.ndarray, ...]  # token ids by depth; levels[0] the roots
    apart: np.ndarray  # always checked alone: end of generation, empty, not UTF-8 (`linkable`)

    @classmethod
    def build(cls, pieces: Sequence[bytes], eog: Collection[int]) -> TokenTree:
        n = len(pieces)
        parent = np.full(n, -1, np.int64)
        branch = np.full(n, -1, np.int64)
        depth = np.full(n, -1, np.int64)
        eog = set(eog)
        linked = [i for i in range(n) if i not in eog and linkable(pieces[i])]
        linked.sort(key=pieces.__getitem__)  # a text's prefixes sort before it
        line: list[tuple[bytes, int]] = []  # the current token and its ancestors
        for i in linked:
            text = pieces[i]
            while line and not text.startswith(line[-1][0]):
                line.pop()
            if line:
                above = line[-1][1]
                parent[i], depth[i] = above, depth[above] + 1
                branch[i] = i if depth[i] == 1 else branch[above]
            else:
                depth[i] = 0
            line.append((text, i))
        in_tree = depth >= 0
        levels = tuple(
            np.flatnonzero(depth == d).astype(np.int32) for d in range(int(depth.max()) + 1)
        )
        return cls(
            n_vocab=n,
            parent=parent,
            branch=branch,
            deep=np.flatnonzero(depth >= 2).astype(np.int32),
            levels=levels,
            apart=np.flatnonzero(~in_tree).astype(np.int32),
        )

    def allowed(self, grammar: Any) -> np.ndarray:
        """The grammar's mask over the vocabulary (True: allowed), as checking every token."""
        ok = np.zeros(self.n_vocab, bool)
        if len(self.apart):
            ok[self.apart] = passes(grammar, self.apart)
        checked = passed = 0
        for depth, ids in enumerate(self.levels):
            if depth:
                ids = ids[ok[self.parent[ids]]]
                if not len(ids):
                    break
            verdicts = passes(grammar, ids)
            ok[ids] = verdicts
            checked, passed = checked + len(ids), passed + int(np.count_nonzero(verdicts))
            if depth == 1 and passed > WIDE_SHARE * checked:
                deep = self.deep[ok[self.branch[self.deep]]]
                ok[deep] = passes(grammar, deep)  # most will pass: one call for them all
                break
        return ok


_trees: weakref.WeakKeyDictionary[LlamaCppModel, TokenTree] = weakref.WeakKeyDictionary()
_building: weakref.WeakKeyDictionary[LlamaCppModel, threading.Lock] = weakref.WeakKeyDictionary()
_building_lock = threading.Lock()


def token_tree(model: LlamaCppModel, build: bool = False) -> TokenTree | None:
    """The model's token tree; built here with `build` (once per model: ~0.2 s for a 49k
    vocabulary, ~1 s for 262k; a model's first requests wait for one build, other models'
    do not), else None until something has built it."""
    tree = _trees.get(model)
    if tree is not None or not build:
        return tree
    with _building_lock:
        lock = _building.setdefault(model, threading.Lock())
    with lock:
        tree = _trees.get(model)
        if tree is None:
            with model.in_use():  # BackendError, not a freed vocabulary, once it is unloaded
                pieces = [model.token_bytes(t, special=True) for t in range(model.n_vocab)]
            tree = _trees[model] = TokenTree.build(pieces, model.eog_tokens)
        return tree
