"""Tokenize prompts that share text with earlier ones without re-tokenizing that text.

llama.cpp cuts the text at special tokens first and tokenizes each stretch of plain text on
its own (BPE and SentencePiece vocabularies; SentencePiece's leading space follows any special
token, at the start of a call too). So a prompt's tokens are the tokens of its pieces (text up
to and including a special token) in order, and the tokens of text ending just after a
special token are a prefix of the tokens of any longer text. This cache keeps the tokens of
recent pieces ("user\n", a system prompt: each llama_tokenize call also costs ~25 µs of
set-up) and the tokens and block hashes of long prompts' heads (the system prompt and earlier
turns), so a router tokenizes and hashes only what is new. Boundaries are control tokens that
strip no whitespace; a self-check against whole-text tokenization at load switches the cache
off for a vocabulary where this does not hold.
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
PIECES = 512  # texts between special tokens kept (LRU): a system prompt, "user\n", ...
MIN_CACHED_CHARS = 2048  # shorter prompts keep no heads (their pieces are still cached)
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
        self._pieces: OrderedDict[tuple[bool, str], array[int]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self._pattern is not None

    def disable(self) -> None:
        self._pattern = None
        self.clear()

    def clear(self) -> None:
        self._heads.clear()
        self._pieces.clear()

    def encode(self, text: str) -> tuple[Sequence[int], list[str]]:
        """The text's tokens (as the node's tokenizer gives them) and their block hashes."""
        if self._pattern is None:
            whole = self._tokenize(text)
            return whole, chain(whole)
        ends = [m.end() for m in self._pattern.finditer(text) if m.end() < len(text)]
        tokens: array[int] = array("i")
        start, blocks = 0, []
        for end in reversed(ends[-8:]) if len(text) >= MIN_CACHED_CHARS else ():
            head = self._heads.get(text[:end])
            if head is not None:
                self._heads.move_to_end(text[:end])
                start, tokens, blocks = end, array("i", head[0]), head[1]
                break
        # New heads: where the last message starts (the system prompt and earlier turns, for
        # another question) and where it ends (for the next turn of this conversation).
        heads = set(ends[-3:-1]) if len(text) >= MIN_CACHED_CHARS else set()
        for cut in [*(e for e in ends if e > start), len(text)]:
            tokens.extend(self._piece(text[start:cut], first=start == 0))
            if cut in heads and cut >= _MIN_HEAD_CHARS:
                blocks = chain(tokens, known=blocks)
                self._heads[text[:cut]] = (array("i", tokens), blocks)
            start = cut
        while len(self._heads) > ENTRIES:
            self._heads.popitem(last=False)
        return tokens, chain(tokens, known=blocks)

    def _piece(self, piece: str, *, first: bool) -> array[int]:
        """Tokens of text from the start or a special token up to the next one (cached)."""
        key = (first, piece)
        tokens = self._pieces.get(key)
        if tokens is not None:
            self._pieces.move_to_end(key)
            return tokens
        # After a special token, plain text is tokenized on its own and gets no BOS.
        ids = self._tokenize(piece) if first else self.model.tokenize(piece, add_special=False)
        tokens = self._pieces[key] = array("i", ids)
        while len(self._pieces) > PIECES:
            self._pieces.popitem(last=False)
        return tokens
