"""Tokenize prompts that share a head with an earlier one without re-tokenizing the head.

llama.cpp cuts the text at special tokens first and tokenizes each stretch of plain text on
its own (BPE and SentencePiece vocabularies; SentencePiece's leading space follows any special
token, at the start of a call too). So the tokens of text that ends just after a special token
are a prefix of the tokens of any longer text, and the rest can be tokenized alone. This
cache keeps the tokens (and block hashes) of such heads — a shared system prompt, earlier
turns — so a router tokenizes only what is new. Boundaries are control tokens that strip no
whitespace after them; a self-check against whole-text tokenization at load switches the
cache off for a vocabulary where that does not hold.
"""

from __future__ import annotations

import re
from array import array
from collections import OrderedDict
from collections.abc import Callable, Sequence

import llama_cpp

from edgebox.runtimes.llamacpp.model import LlamaCppModel
from edgebox.runtimes.prefix_blocks import BLOCK_TOKENS, chain

ENTRIES = 64  # heads kept (LRU); tokens as int32 arrays, 16 KB per 4,000 tokens
# Shorter prompts are tokenized whole: each llama_tokenize call costs some 25 µs of setup.
MIN_CACHED_CHARS = 2048
_MIN_HEAD_CHARS = BLOCK_TOKENS * 4

Tokenize = Callable[[str], list[int]]  # whole text, BOS as the node adds it


def boundary_pattern(model: LlamaCppModel) -> re.Pattern[str] | None:
    """Control tokens after which llama.cpp's text partition always splits."""
    vocab_type = llama_cpp.llama_vocab_type(model.vocab)
    spm_or_bpe = (llama_cpp.LLAMA_VOCAB_TYPE_BPE, llama_cpp.LLAMA_VOCAB_TYPE_SPM)
    if vocab_type not in spm_or_bpe or llama_cpp.llama_vocab_get_add_eos(model.vocab):
        return None
    texts = []
    for token in range(model.n_vocab):
        attr = llama_cpp.llama_vocab_get_attr(model.vocab, token)
        if attr & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL and not attr & (
            llama_cpp.LLAMA_TOKEN_ATTR_RSTRIP | llama_cpp.LLAMA_TOKEN_ATTR_LSTRIP
        ):
            text = model.token_text(token)
            if len(text) >= 3 and not text.isspace():
                texts.append(text)
    if not texts:
        return None
    return re.compile("|".join(re.escape(t) for t in sorted(texts, key=len, reverse=True)))


class PromptCache:
    def __init__(self, model: LlamaCppModel, tokenize: Tokenize) -> None:
        self.model = model
        self._tokenize = tokenize
        self._pattern = boundary_pattern(model)
        self._heads: OrderedDict[str, tuple[array[int], list[str]]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self._pattern is not None

    def disable(self) -> None:
        self._pattern = None
        self._heads.clear()

    def clear(self) -> None:
        self._heads.clear()

    def encode(self, text: str) -> tuple[Sequence[int], list[str]]:
        """The text's tokens (as the node's tokenizer gives them) and their block hashes."""
        if self._pattern is None or len(text) < MIN_CACHED_CHARS:
            whole = self._tokenize(text)
            return whole, chain(whole)
        ends = [m.end() for m in self._pattern.finditer(text) if m.end() < len(text)]
        tokens: array[int] = array("i")
        start, blocks = 0, []
        for end in reversed(ends[-8:]):
            head = self._heads.get(text[:end])
            if head is not None:
                self._heads.move_to_end(text[:end])
                start, tokens, blocks = end, array("i", head[0]), head[1]
                break
        # New heads: where the last message starts (the system prompt and earlier turns, for
        # another question) and where it ends (for the next turn of this conversation).
        cuts = [e for e in ends[-3:-1] if e > start and e >= _MIN_HEAD_CHARS]
        for cut in [*cuts, len(text)]:
            piece = text[start:cut]
            if start == 0:
                tokens.extend(self._tokenize(piece))
            else:  # after a special token: plain text on its own, no BOS
                tokens.extend(self.model.tokenize(piece, add_special=False))
            blocks = chain(tokens, known=blocks)
            if cut < len(text):
                self._heads[text[:cut]] = (array("i", tokens), blocks)
            start = cut
        while len(self._heads) > ENTRIES:
            self._heads.popitem(last=False)
        return tokens, blocks
